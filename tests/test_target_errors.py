"""Target lookup raises its own errors (ConfigErrors), and a real bug is not bad configuration.

resolve_target used to raise the built-in LookupError/TypeError, which the engine turned into
ConfigError: a TypeError from a bug inside it would then have been reported to the operator as
a configuration problem. Now only TargetNotFound / TargetTypeError mean "your target is wrong".
"""

from __future__ import annotations

import sys

import pytest

from handler import db
from handler.cleanup import run_cleanup
from handler.errors import ConfigError, TargetNotFound, TargetTypeError
from handler.settings import Flags
from tests.conftest import KeyRow, PgSchema

LIVE_FORCED = Flags(dry_run=False, force=True)
OLD_KEYS = [KeyRow("c0", "session", f"k{i}", age=90) for i in range(5)]


def test_a_missing_table_or_column_is_target_not_found(pg: PgSchema) -> None:
    pg.create_reference_table()
    with pg.connect() as conn:
        with pytest.raises(TargetNotFound, match="table no_such_table does not exist"):
            db.resolve_target(conn, None, "no_such_table", "updated_at", "key_type")
        with pytest.raises(TargetNotFound, match="column touched_at does not exist"):
            db.resolve_target(conn, None, "whatsapp_keys", "touched_at", "key_type")
        with pytest.raises(TargetNotFound, match="it is a system table"):
            db.resolve_target(conn, None, "pg_class", "updated_at", None)
    assert issubclass(TargetNotFound, ConfigError)
    assert not issubclass(TargetNotFound, LookupError)


def test_a_column_of_the_wrong_type_is_target_type_error(pg: PgSchema) -> None:
    pg.create_reference_table()
    with pg.connect() as conn, pytest.raises(TargetTypeError, match="is text, not a timestamp"):
        db.resolve_target(conn, None, "whatsapp_keys", "key_id", "key_type")
    assert issubclass(TargetTypeError, ConfigError)
    assert not issubclass(TargetTypeError, TypeError)


def test_a_type_error_bug_in_target_lookup_surfaces_as_a_bug(
    pg: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TypeError raised by the code (a bug), not by a bad target, must reach the caller as
    the TypeError it is: not as a ConfigError telling the operator to fix the settings. And
    nothing is deleted."""
    pg.create_reference_table()
    pg.insert_keys(OLD_KEYS)

    def buggy_table_columns(conn: object, oid: int) -> dict[str, str]:
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    # The module resolve_target lives in, whatever the package's layout.
    monkeypatch.setattr(
        sys.modules[db.resolve_target.__module__], "table_columns", buggy_table_columns
    )
    with pytest.raises(TypeError, match="unsupported operand") as info:
        run_cleanup(pg.settings(), LIVE_FORCED)
    assert not isinstance(info.value, ConfigError)
    assert pg.count() == len(OLD_KEYS)
