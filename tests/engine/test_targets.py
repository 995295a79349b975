"""The target table and its columns: custom names and schemas work; hostile names, system tables,
views and wrong column types are refused before any deletion.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from psycopg import sql

from handler import db
from handler.cleanup import run_cleanup
from handler.errors import ConfigError, TargetNotFound, TargetTypeError
from handler.settings import Flags
from tests.support.db import KeyRow, PgSchema, baileys_creds
from tests.support.tables import LIVE, OLD_DAYS, half_old_survivors


def test_custom_table_and_columns(pg: PgSchema) -> None:
    with pg.connect() as conn:
        conn.execute(
            "CREATE TABLE auth_keys (tenant uuid, type varchar(40), id text, data bytea, "
            "last_used timestamp without time zone, PRIMARY KEY (tenant, type, id))"
        )
        conn.execute(
            "INSERT INTO auth_keys SELECT gen_random_uuid(), t, 'k' || g, 'x', "
            "(now() AT TIME ZONE 'UTC') - g * interval '1 day' "
            "FROM generate_series(1, 40) g, unnest(array['session', 'lid-mapping']) t"
        )
    settings = pg.settings(
        CLEANUP_TABLE="auth_keys",
        CLEANUP_TIMESTAMP_COLUMN="last_used",
        CLEANUP_KEY_TYPE_COLUMN="type",
        CLEANUP_KEY_ID_COLUMN="id",
        CLEANUP_RETENTION_DAYS="20",
        CLEANUP_TIMESTAMP_TIMEZONE="UTC",
    )
    report = run_cleanup(settings, LIVE)
    assert report.by_type["session"].deleted == 21
    assert report.by_type["lid-mapping"].deleted == 0
    assert report.by_type["lid-mapping"].keys == 40
    assert pg.count("auth_keys") == 59


def test_key_type_column_without_a_key_id_column_is_refused(pg: PgSchema) -> None:
    """The key lifecycle cannot tell which pre-keys the server holds without the key id."""
    with pg.connect() as conn:
        conn.execute("CREATE TABLE k (tenant text, key_type text, updated_at timestamptz)")
    with pytest.raises(ConfigError, match=r"column key_id does not exist.*CLEANUP_KEY_ID_COLUMN"):
        run_cleanup(pg.settings(CLEANUP_TABLE="k"), LIVE)


def test_schema_qualified_table(pg: PgSchema) -> None:
    other = f"{pg.schema}_x"
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(other)))
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(other)))
        conn.execute(
            "CREATE TABLE whatsapp_keys (company_id text, key_type text, key_id text, "
            "value jsonb, updated_at timestamptz, PRIMARY KEY (company_id, key_type, key_id))"
        )
        conn.execute(
            "INSERT INTO whatsapp_keys VALUES "
            "('c', 'session', 'old', '{}', now() - interval '40 days'), "
            "('c', 'session', 'new', '{}', now())"
        )
    try:
        report = run_cleanup(pg.settings(CLEANUP_TABLE=f"{other}.whatsapp_keys"), LIVE)
        assert report.table == f"{other}.whatsapp_keys"
        assert report.deleted == 1
    finally:
        with pg.connect() as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(other)))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CLEANUP_TABLE": "no_such_table"}, "table no_such_table does not exist"),
        ({"CLEANUP_TIMESTAMP_COLUMN": "touched_at"}, "column touched_at does not exist"),
        ({"CLEANUP_TIMESTAMP_COLUMN": "key_id"}, "is text, not a timestamp"),
        ({"CLEANUP_KEY_TYPE_COLUMN": "kind"}, "column kind does not exist"),
    ],
)
def test_bad_target_is_a_clear_error_and_deletes_nothing(
    pg: PgSchema, table: list[KeyRow], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        run_cleanup(pg.settings(**env), Flags(dry_run=False, force=True))
    assert pg.count() == len(table)


def test_view_is_refused(pg: PgSchema, table: list[KeyRow]) -> None:
    with pg.connect() as conn:
        conn.execute("CREATE VIEW v AS SELECT * FROM whatsapp_keys")
    with pytest.raises(ConfigError, match="not an ordinary table"):
        run_cleanup(pg.settings(CLEANUP_TABLE="v"), Flags(dry_run=False, force=True))
    assert pg.count() == len(table)


def test_retention_below_minimum_is_refused(pg: PgSchema, table: list[KeyRow]) -> None:
    settings = pg.settings(CLEANUP_MIN_RETENTION_DAYS="7")
    with pytest.raises(ConfigError, match="retention_days: 3 is below CLEANUP_MIN_RETENTION_DAYS"):
        run_cleanup(settings, Flags(dry_run=False, retention_days=3))
    assert pg.count() == len(table)


def canary_rows(pg: PgSchema) -> object:
    """The canary table's row count, or None once it has been dropped."""
    with pg.connect() as conn:
        if conn.execute("SELECT to_regclass('canary')").fetchone() == (None,):
            return None
        return conn.execute("SELECT count(*) FROM canary").fetchone()


@pytest.fixture
def canary(pg: PgSchema, half_old_table: list[KeyRow]) -> Iterator[PgSchema]:
    with pg.connect() as conn:
        conn.execute("CREATE TABLE canary (x int)")
        conn.execute("INSERT INTO canary VALUES (1)")
    yield pg
    assert canary_rows(pg) == (1,)  # the tests assert it themselves too; this is a backstop


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CLEANUP_TABLE", 'whatsapp_keys"; DROP TABLE canary; --'),
        ("CLEANUP_TABLE", "whatsapp_keys; DROP TABLE canary"),
        ("CLEANUP_TABLE", "whatsapp keys"),
        ("CLEANUP_TABLE", "clés"),
        ("CLEANUP_TABLE", "a.b.c"),
        ("CLEANUP_TABLE", "pg_catalog.pg_class"),
        ("CLEANUP_TABLE", "information_schema.tables"),
        ("CLEANUP_TABLE", "PG_TOAST.x"),
        ("CLEANUP_TIMESTAMP_COLUMN", "updated_at < now() OR true --"),
        ("CLEANUP_TIMESTAMP_COLUMN", "updated_at'"),
        ("CLEANUP_KEY_TYPE_COLUMN", "key_type); DROP TABLE canary; --"),
        ("CLEANUP_HISTORY_TABLE", "runs; DROP TABLE canary"),
    ],
)
def test_hostile_names_are_rejected_before_any_sql(canary: PgSchema, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name) as info:
        canary.settings(**{name: value})
    assert value not in str(info.value)  # the value is never echoed


def test_hostile_key_types_are_parameters_not_sql(
    canary: PgSchema, half_old_table: list[KeyRow]
) -> None:
    hostile = "x'); DROP TABLE canary; --"
    retained = f"{hostile.replace(',', '')}2"
    # One young key of each hostile type: a type the table holds is no typo (a live run refuses
    # a configured type that matches no key and that Baileys never writes).
    own = [KeyRow("t0", hostile, "h1", 1), KeyRow("t0", retained, "h2", 1)]
    canary.insert_keys(own)
    settings = canary.settings(
        CLEANUP_PROTECTED_KEY_TYPES=hostile,
        CLEANUP_TYPE_RETENTION_DAYS=f"{retained}=40",
        CLEANUP_GUARD_MIN_KEYS="100000",
    )
    report = run_cleanup(settings, LIVE)
    assert report.status == "completed"
    assert canary_rows(canary) == (1,)
    # The hostile strings were compared as values: they matched only their own young keys, so
    # the run deleted exactly the keys past the default retention, as without them.
    assert canary.key_set() == half_old_survivors(half_old_table) | {k.ident for k in own}
    assert report.deleted == len(half_old_table) - len(half_old_survivors(half_old_table))


def test_system_catalog_table_is_refused_even_unqualified(canary: PgSchema) -> None:
    # pg_class lives in pg_catalog, which is always on the search path implicitly: it is
    # refused as the system table it is, not reported as missing.
    with pytest.raises(ConfigError, match=r"refusing pg_catalog\.pg_class: it is a system table"):
        run_cleanup(canary.settings(CLEANUP_TABLE="pg_class", CLEANUP_KEY_TYPE_COLUMN="none"), LIVE)


def test_table_without_the_timestamp_column_is_refused(canary: PgSchema) -> None:
    with pytest.raises(ConfigError, match="column updated_at does not exist"):
        run_cleanup(canary.settings(CLEANUP_TABLE="canary", CLEANUP_KEY_TYPE_COLUMN="none"), LIVE)


def test_non_timestamp_column_is_refused(canary: PgSchema) -> None:
    with pytest.raises(ConfigError, match="is integer, not a timestamp"):
        run_cleanup(
            canary.settings(
                CLEANUP_TABLE="canary", CLEANUP_TIMESTAMP_COLUMN="x", CLEANUP_KEY_TYPE_COLUMN="none"
            ),
            LIVE,
        )


# Each: a column the job looks for by default, of a type it does not expect. None was named in
# a setting, so none may fail a run: the run goes on without what needed it.
UNNAMED_COLUMN_TYPES = {
    "expires_at integer": "ALTER TABLE whatsapp_keys ALTER expires_at TYPE integer USING NULL",
    "expires_at text": "ALTER TABLE whatsapp_keys ALTER expires_at TYPE text",
    "company_id integer": (
        "ALTER TABLE whatsapp_keys ALTER company_id TYPE integer USING length(company_id)"
    ),
    "key_id bytea": "ALTER TABLE whatsapp_keys ALTER key_id TYPE bytea USING key_id::bytea",
    "auth company_id integer": (
        "ALTER TABLE whatsapp_auth ALTER company_id TYPE integer USING length(company_id)"
    ),
    "auth creds integer": "ALTER TABLE whatsapp_auth ALTER creds TYPE integer USING 1",
}


@pytest.mark.parametrize("change", list(UNNAMED_COLUMN_TYPES), ids=list(UNNAMED_COLUMN_TYPES))
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry", "live"])
def test_a_column_nobody_named_never_fails_a_run(pg: PgSchema, change: str, dry_run: bool) -> None:
    pg.create_reference_table()
    pg.add_auth({"c": baileys_creds(10)})
    pg.insert_keys(
        [
            KeyRow("c", "app-state-sync-key", "AAAA", OLD_DAYS),
            KeyRow("c", "sender-key-memory", "g1@g.us", OLD_DAYS),
            KeyRow("c", "session", "1:2", 1),
        ]
    )
    with pg.connect() as conn:
        conn.execute(UNNAMED_COLUMN_TYPES[change])
    report = run_cleanup(pg.settings(), Flags(dry_run=dry_run, verbose=True))
    assert report.status == "completed"
    assert report.eligible == 1
    assert report.deleted == (0 if dry_run else 1)


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


@pytest.mark.parametrize(
    ("setting", "column"),
    [
        ("CLEANUP_TENANT_COLUMN", "value"),
        ("CLEANUP_KEY_ID_COLUMN", "value"),
        ("CLEANUP_KEY_TYPE_COLUMN", "value"),
        ("CLEANUP_TENANT_COLUMN", "blob"),
    ],
)
@pytest.mark.parametrize("flags", [LIVE, Flags(dry_run=True)], ids=["live", "dry"])
def test_a_role_column_that_holds_key_values_is_refused(
    pg: PgSchema, setting: str, column: str, flags: Flags
) -> None:
    """The top tenants are reported and stored: a tenant column naming the value column (or
    any JSON column) would put key values there. Refused, naming the setting and
    never a value; nothing is deleted."""
    pg.create_reference_table()
    with pg.connect() as conn:
        conn.execute("ALTER TABLE whatsapp_keys ADD COLUMN blob jsonb")
    rows = [
        KeyRow("c1", "session", f"s{i}", age, {"k": f"keyvaluecanary-{i}"})
        for i, age in enumerate([60] * 5 + [1] * 20)
    ]
    pg.insert_keys(rows)
    with pytest.raises(TargetTypeError, match=rf"\.{column} \({setting}\) is ") as caught:
        run_cleanup(pg.settings(**{setting: column}), flags)
    assert "keyvaluecanary" not in str(caught.value)
    assert pg.key_set() == {r.ident for r in rows}
