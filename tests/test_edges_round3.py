"""Edges, round 3 (issue 17): settings that switched protection off without a word, ages and
rules on infinite timestamps, columns nobody named, time-zone abbreviations.

Each test here failed before its fix, against real PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import KeyRow, PgSchema, baileys_creds
from psycopg import sql

from handler import db
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


# --- 5. The TTL rule and the listing on infinite and NULL timestamps ----------------------------

VERBOSE_EVENT = Path(__file__).resolve().parent.parent / "events" / "verbose.json"
ODD_UPDATED_AT = {"inf": "infinity", "neginf": "-infinity", "bc": "0100-01-01 00:00+00 BC"}


@pytest.fixture
def expired_odd_rows(pg: PgSchema) -> PgSchema:
    """Expired keys (expires_at a day ago) whose updated_at is infinite, BC or NULL, beside one
    ordinary expired key and the protected type that keeps the table plausible."""
    pg.create_reference_table()
    names = [*ODD_UPDATED_AT, "null", "plain"]
    pg.insert_keys(
        [KeyRow("c", "app-state-sync-key", "AAAA", 1)]
        + [KeyRow("c", "session", name, 2) for name in names]
    )
    with pg.connect() as conn:
        conn.execute("ALTER TABLE whatsapp_keys DISABLE TRIGGER USER")
        conn.execute(
            "UPDATE whatsapp_keys SET expires_at = now() - interval '1 day' "
            "WHERE key_type = 'session'"
        )
        for name, value in ODD_UPDATED_AT.items():
            conn.execute(
                "UPDATE whatsapp_keys SET updated_at = %s::timestamptz WHERE key_id = %s",
                (value, name),
            )
        conn.execute("UPDATE whatsapp_keys SET updated_at = NULL WHERE key_id = 'null'")
        conn.execute("ALTER TABLE whatsapp_keys ENABLE TRIGGER USER")
    return pg


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry", "live"])
def test_ttl_never_takes_infinite_or_null_timestamps_and_verbose_runs_complete(
    expired_odd_rows: PgSchema, dry_run: bool
) -> None:
    flags = Flags.parse({**json.loads(VERBOSE_EVENT.read_text("utf-8")), "dry_run": dry_run})
    assert flags.verbose
    settings = expired_odd_rows.settings(CLEANUP_EXPIRES_COLUMN="expires_at")
    report = run_cleanup(settings, flags)
    assert report.status == "completed"
    assert report.eligible == report.expired == 1
    assert [entry.key["key_id"] for entry in report.keys] == ["plain"]
    survivors = {key_id for _, _, key_id in expired_odd_rows.key_set()}
    assert {*ODD_UPDATED_AT, "null", "AAAA"} <= survivors
    assert ("plain" in survivors) is dry_run


def test_the_age_of_a_listed_key_with_an_infinite_timestamp_is_unknown(pg: PgSchema) -> None:
    """The listing's age never subtracts an infinite timestamp, whatever rule listed the key."""
    pg.create_reference_table()
    pg.insert_keys([KeyRow("c", "session", "inf", 0)])
    with pg.connect() as conn:
        conn.execute("ALTER TABLE whatsapp_keys DISABLE TRIGGER USER")
        conn.execute("UPDATE whatsapp_keys SET updated_at = 'infinity'")
        target = db.resolve_target(conn, None, "whatsapp_keys", "updated_at", "key_type")
        query = sql.SQL("SELECT {} FROM whatsapp_keys").format(db.listing_columns(target))
        row = conn.execute(query, {"now": datetime.now(UTC)}).fetchone()
    assert row is not None
    assert row[2] is None


# --- 8. Columns nobody named -------------------------------------------------------------------

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
            KeyRow("c", "app-state-sync-key", "AAAA", OLD),
            KeyRow("c", "sender-key-memory", "g1@g.us", OLD),
            KeyRow("c", "session", "1:2", 1),
        ]
    )
    with pg.connect() as conn:
        conn.execute(UNNAMED_COLUMN_TYPES[change])
    report = run_cleanup(pg.settings(), Flags(dry_run=dry_run, verbose=True))
    assert report.status == "completed"
    assert report.eligible == 1
    assert report.deleted == (0 if dry_run else 1)


# --- 12. Time-zone abbreviations ----------------------------------------------------------------


def naive_keys(pg: PgSchema) -> None:
    """`updated_at timestamp`, written as Berlin wall time: one row past the cutoff."""
    with pg.connect() as conn:
        conn.execute(
            "CREATE TABLE naive_keys (id int PRIMARY KEY, key_type text, updated_at timestamp)"
        )
        conn.execute(
            "INSERT INTO naive_keys VALUES (1, 'app-state-sync-key', now() AT TIME ZONE "
            "'Europe/Berlin'), (2, 'session', (now() - interval '40 days') AT TIME ZONE "
            "'Europe/Berlin')"
        )


@pytest.mark.parametrize(
    ("zone", "instead"),
    [
        ("CET", "Europe/Berlin"),
        ("EET", "Europe/Athens"),
        ("WET", "Europe/Lisbon"),
        ("MET", "Europe/Berlin"),
    ],
)
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry", "live"])
def test_a_zone_postgresql_reads_as_a_fixed_abbreviation_is_refused_naming_an_iana_zone(
    pg: PgSchema, zone: str, instead: str, dry_run: bool
) -> None:
    naive_keys(pg)
    settings = pg.settings(
        CLEANUP_TABLE="naive_keys",
        CLEANUP_KEY_TYPE_COLUMN="none",
        CLEANUP_TIMESTAMP_TIMEZONE=zone,
    )
    with pytest.raises(ConfigError, match=rf"CLEANUP_TIMESTAMP_TIMEZONE={zone}:.*{instead}"):
        run_cleanup(settings, Flags(dry_run=dry_run, force=True))
    with pg.connect() as conn:
        assert conn.execute("SELECT count(*) FROM naive_keys").fetchone() == (2,)


@pytest.mark.parametrize("zone", ["UTC", "GMT", "EST", "Europe/Berlin"])
def test_zones_an_abbreviation_reads_the_same_all_year_pass(pg: PgSchema, zone: str) -> None:
    naive_keys(pg)
    settings = pg.settings(
        CLEANUP_TABLE="naive_keys",
        CLEANUP_KEY_TYPE_COLUMN="none",
        CLEANUP_TIMESTAMP_TIMEZONE=zone,
    )
    report = run_cleanup(settings, Flags(dry_run=False, force=True))
    assert report.status == "completed"
    assert report.deleted == 1
