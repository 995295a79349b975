"""Edges, round 3 (issue 17): settings that switched protection off without a word, ages and
rules on infinite timestamps, columns nobody named, time-zone abbreviations.

Each test here failed before its fix, against real PostgreSQL.
"""

from __future__ import annotations

import pytest
from conftest import KeyRow, PgSchema

from handler.cleanup import run_cleanup
from handler.settings import ConfigError, Flags

LIVE = Flags(dry_run=False)
DRY = Flags()
OLD = 60  # days: past the 30-day retention


def protected_and_aged(pg: PgSchema, *, protected_type: str = "app-state-sync-key") -> None:
    pg.create_reference_table()
    pg.insert_keys(
        [
            KeyRow("a", protected_type, "AAAA", OLD),
            KeyRow("a", "sender-key-memory", "g1@g.us", OLD),
            KeyRow("a", "session", "1:2", 1),
        ]
    )


# --- 3. CLEANUP_KEY_TYPE_COLUMN ----------------------------------------------------------------


def test_an_empty_key_type_column_setting_means_the_default_and_protection_holds(
    pg: PgSchema,
) -> None:
    # An env file or docker-compose `${VAR}` passes an unset variable as ''.
    protected_and_aged(pg)
    report = run_cleanup(pg.settings(CLEANUP_KEY_TYPE_COLUMN=""), LIVE)
    assert report.key_type_column == "key_type"
    assert "app-state-sync-key" in report.protected_types
    assert ("a", "app-state-sync-key", "AAAA") in pg.key_set()
    assert ("a", "sender-key-memory", "g1@g.us") not in pg.key_set()


def test_an_empty_expires_column_setting_means_the_default_off(pg: PgSchema) -> None:
    assert pg.settings(CLEANUP_EXPIRES_COLUMN="").expires_column is None
    assert pg.settings(CLEANUP_EXPIRES_COLUMN="none").expires_column is None


def test_none_says_the_table_has_no_key_type_column(pg: PgSchema) -> None:
    with pg.connect() as conn:
        conn.execute("CREATE TABLE k (id int PRIMARY KEY, updated_at timestamptz)")
        conn.execute("INSERT INTO k VALUES (1, now() - interval '60 days'), (2, now())")
    for spelling in ("none", "NONE"):
        assert pg.settings(CLEANUP_KEY_TYPE_COLUMN=spelling).key_type_column is None
    report = run_cleanup(pg.settings(CLEANUP_TABLE="k", CLEANUP_KEY_TYPE_COLUMN="none"), LIVE)
    assert report.key_type_column is None
    assert report.deleted == 1
    # Empty is the default `key_type`, which this table lacks: refused, naming `none`.
    with pytest.raises(ConfigError, match="CLEANUP_KEY_TYPE_COLUMN=none"):
        run_cleanup(pg.settings(CLEANUP_TABLE="k", CLEANUP_KEY_TYPE_COLUMN=""), LIVE)


def test_a_wrong_key_type_column_refuses_live_runs_and_is_noted_in_dry_runs(
    pg: PgSchema,
) -> None:
    protected_and_aged(pg)
    before = pg.key_set()
    dry = run_cleanup(pg.settings(CLEANUP_KEY_TYPE_COLUMN="key_id"), DRY)
    (note,) = [n for n in dry.notes if "CLEANUP_KEY_TYPE_COLUMN" in n]
    assert "holds none of the built-in protected types" in note
    assert "a live run refuses" in note
    # The wrong column's values are no key types: not listed as such, nor echoed.
    assert dry.by_type == {}
    assert "AAAA" not in note
    with pytest.raises(ConfigError, match="holds none of the built-in protected types"):
        run_cleanup(pg.settings(CLEANUP_KEY_TYPE_COLUMN="key_id"), LIVE)
    assert pg.key_set() == before


def test_key_types_spelt_otherwise_refuse_live_runs(pg: PgSchema) -> None:
    protected_and_aged(pg, protected_type="App-State-Sync-Key")  # beside `session`
    before = pg.key_set()
    with pytest.raises(ConfigError, match="spelt as Baileys spells the types"):
        run_cleanup(pg.settings(), LIVE)
    assert pg.key_set() == before
    # Forced, the operator has said so: the run goes on, with the note.
    forced = run_cleanup(pg.settings(), Flags(dry_run=False, force=True))
    assert any("holds none of the built-in protected types" in n for n in forced.notes)


def test_a_table_with_a_protected_type_has_no_such_note(pg: PgSchema) -> None:
    protected_and_aged(pg)
    report = run_cleanup(pg.settings(), DRY)
    assert not [n for n in report.notes if "protected types" in n]
