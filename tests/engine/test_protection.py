"""Protected key types: kept by the age and TTL rules, never stripped by a typo or an odd
key-type column.
"""

from __future__ import annotations

import pytest

from handler.cleanup import run_cleanup
from handler.observability import report_fields
from handler.report import render_text
from handler.settings import DEFAULT_PROTECTED_KEY_TYPES, ConfigError, Flags
from tests.support.db import KeyRow, PgSchema
from tests.support.tables import DRY, FORCE, LIVE, OLD_DAYS, expected_survivors, kinds


def test_protected_counts_old_keys_of_protected_types(pg: PgSchema, table: list[KeyRow]) -> None:
    report = run_cleanup(pg.settings(), Flags())
    old_protected = [r for r in table if r.key_type in DEFAULT_PROTECTED_KEY_TYPES and r.age >= 30]
    assert report.protected == len(old_protected)


def test_unprotecting_every_builtin_type_deletes_everything_older(
    pg: PgSchema, table: list[KeyRow]
) -> None:
    settings = pg.settings(
        CLEANUP_UNPROTECT_KEY_TYPES=",".join(DEFAULT_PROTECTED_KEY_TYPES),
        CLEANUP_GUARD_MIN_KEYS="100000",
    )
    run_cleanup(settings, LIVE)
    assert pg.key_set() == expected_survivors(table, 30, protected=())


def test_misspelt_protected_types_leave_the_builtin_protection_in_place(
    app_state: PgSchema,
) -> None:
    settings = app_state.settings(CLEANUP_PROTECTED_KEY_TYPES="app-state-sync-keys,lid-maping")
    # The dry run: only the three old sessions are eligible, the built-in types stay protected.
    report = run_cleanup(settings, DRY)
    assert report.eligible == 3
    assert report.protected == 6
    notes = "\n".join(report.notes)
    assert "'app-state-sync-keys' matches no key" in notes
    assert "did you mean 'app-state-sync-key'?" in notes
    assert "'lid-maping' matches no key" in notes
    assert "did you mean 'lid-mapping'?" in notes
    assert "a live run refuses it" in notes
    # Live, forced or not, the typos are refused before anything is deleted.
    before = app_state.key_set()
    with pytest.raises(ConfigError, match=r"'app-state-sync-keys'.*'lid-maping'"):
        run_cleanup(settings, FORCE)
    assert app_state.key_set() == before
    # The same notes in the human output and the log line.
    assert "lid-maping" in render_text(report)
    assert any("lid-maping" in note for note in report_fields(report)["notes"])


def test_the_explicit_opt_out_lifts_protection_from_the_types_it_names(
    app_state: PgSchema,
) -> None:
    settings = app_state.settings(CLEANUP_UNPROTECT_KEY_TYPES="lid-mapping")
    report = run_cleanup(settings, FORCE)
    assert kinds(app_state) == {"app-state-sync-key": 3, "session": 3}
    assert "lid-mapping" not in report.protected_types
    assert "app-state-sync-key" in report.protected_types


def protected_and_aged(pg: PgSchema, *, protected_type: str = "app-state-sync-key") -> None:
    pg.create_reference_table()
    pg.insert_keys(
        [
            KeyRow("a", protected_type, "AAAA", OLD_DAYS),
            KeyRow("a", "sender-key-memory", "g1@g.us", OLD_DAYS),
            KeyRow("a", "session", "1:2", 1),
        ]
    )


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
