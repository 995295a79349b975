"""NULL, infinite, BC and post-9999 timestamps: counted, never deleted by any rule, and no run
fails over them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from psycopg import sql

from handler import db
from handler.cleanup import run_cleanup
from handler.report import render_text
from handler.settings import Flags
from tests.support.db import KeyRow, PgSchema
from tests.support.tables import DRY, FORCE, LIVE


def test_null_timestamps_are_never_deleted(pg: PgSchema) -> None:
    pg.create_reference_table()
    pg.insert_keys([KeyRow("c", "session", "old", 99)])
    with pg.connect() as conn:
        conn.execute(
            "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at) "
            "VALUES ('c', 'session', 'no-ts', '{}', NULL)"
        )
    report = run_cleanup(pg.settings(), LIVE)
    assert pg.key_set() == {("c", "session", "no-ts")}
    assert report.no_timestamp == 1


ODD_TIMESTAMPS = ("infinity", "-infinity", "4713-01-01 00:00:00+00 BC", "20000-01-01 00:00+00")


@pytest.fixture
def odd_rows(pg: PgSchema) -> PgSchema:
    pg.create_reference_table()
    pg.insert_keys(
        [KeyRow("c", "session", "old", 40), KeyRow("c", "session", "new", 2)]
        + [KeyRow("c", "session", f"odd{i}", 0) for i in range(len(ODD_TIMESTAMPS))]
    )
    with pg.connect() as conn:
        for i, value in enumerate(ODD_TIMESTAMPS):
            conn.execute(
                "UPDATE whatsapp_keys SET updated_at = %s::timestamptz WHERE key_id = %s",
                (value, f"odd{i}"),
            )
            # The touch trigger set it to now(); put the odd value back underneath it.
            conn.execute("ALTER TABLE whatsapp_keys DISABLE TRIGGER USER")
            conn.execute(
                "UPDATE whatsapp_keys SET updated_at = %s::timestamptz WHERE key_id = %s",
                (value, f"odd{i}"),
            )
            conn.execute("ALTER TABLE whatsapp_keys ENABLE TRIGGER USER")
    return pg


@pytest.mark.parametrize("flags", [DRY, FORCE], ids=["dry", "live"])
def test_runs_complete_with_infinite_and_bc_timestamps_and_never_delete_them(
    odd_rows: PgSchema, flags: Flags
) -> None:
    report = run_cleanup(odd_rows.settings(), flags)
    assert report.status == "completed"
    assert report.out_of_range_timestamps == len(ODD_TIMESTAMPS)
    assert report.eligible == 1
    assert report.oldest is not None
    assert report.newest is not None
    assert 39 < (report.started_at - report.oldest).total_seconds() / 86400 < 41  # type: ignore[operator]
    assert 1 < (report.started_at - report.newest).total_seconds() / 86400 < 3  # type: ignore[operator]
    assert sum(report.age_distribution.values()) == 2
    survivors = {key_id for _, _, key_id in odd_rows.key_set()}
    expected = {"new", *(f"odd{i}" for i in range(len(ODD_TIMESTAMPS)))}
    assert survivors == (expected if not flags.dry_run else expected | {"old"})
    assert "out-of-range timestamp: 4" in render_text(report)


VERBOSE_EVENT = Path(__file__).resolve().parents[2] / "events" / "verbose.json"


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
