"""Time zones: `timestamp` columns are compared in the application's zone, the session is UTC, N
days are N x 24 hours, abbreviations are refused.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from handler.cleanup import run_cleanup
from handler.report import render_text
from handler.settings import ConfigError, Flags
from tests.support.db import KeyRow, PgSchema
from tests.support.tables import DRY, FORCE


def with_timezone(pg: PgSchema, zone: str) -> str:
    """The schema's DSN as on a server whose default TimeZone is `zone`."""
    return make_conninfo(pg.server_dsn, options=f"-c search_path={pg.schema} -c TimeZone={zone}")


def naive_table(pg: PgSchema, writer_zone: str, ages_days: list[float]) -> None:
    """`updated_at timestamp`, each row written as `writer_zone` wall time, `age` days ago."""
    with pg.connect() as conn:
        conn.execute(
            "CREATE TABLE naive_keys (id int PRIMARY KEY, key_type text, updated_at timestamp)"
        )
        for i, age in enumerate(ages_days):
            conn.execute(
                "INSERT INTO naive_keys VALUES "
                "(%s, 'session', (now() - make_interval(secs => %s * 86400)) AT TIME ZONE %s)",
                (i, age, writer_zone),
            )


def ids(pg: PgSchema, table: str = "naive_keys") -> set[int]:
    with pg.connect() as conn:
        query = sql.SQL("SELECT id FROM {}").format(sql.Identifier(table))
        return {r[0] for r in conn.execute(query)}


@pytest.mark.parametrize("writer_zone", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_timestamp_column_is_compared_in_the_zone_the_application_writes(
    pg: PgSchema, writer_zone: str
) -> None:
    # Ages within half a day of the 30-day cutoff: a 9-hour error (Tokyo) deletes the first.
    naive_table(pg, writer_zone, [29.7, 30.3])
    settings = pg.settings(
        DATABASE_URL=with_timezone(pg, "Asia/Tokyo"),
        CLEANUP_TABLE="naive_keys",
        CLEANUP_KEY_ID_COLUMN="id",
        CLEANUP_TIMESTAMP_TIMEZONE=writer_zone,
    )
    report = run_cleanup(settings, FORCE)
    assert report.deleted == 1
    assert ids(pg) == {0}


def test_live_run_on_a_timestamp_column_without_its_zone_refuses_naming_the_setting(
    pg: PgSchema,
) -> None:
    naive_table(pg, "UTC", [40, 50])
    settings = pg.settings(CLEANUP_TABLE="naive_keys", CLEANUP_KEY_ID_COLUMN="id")
    with pytest.raises(ConfigError, match="CLEANUP_TIMESTAMP_TIMEZONE") as caught:
        run_cleanup(settings, FORCE)
    assert "\n" not in str(caught.value)
    assert ids(pg) == {0, 1}


def test_dry_run_on_a_timestamp_column_without_its_zone_goes_ahead_with_a_note(
    pg: PgSchema,
) -> None:
    naive_table(pg, "UTC", [40, 1])
    report = run_cleanup(pg.settings(CLEANUP_TABLE="naive_keys", CLEANUP_KEY_ID_COLUMN="id"), DRY)
    assert report.status == "completed"
    assert report.eligible == 1
    assert any("CLEANUP_TIMESTAMP_TIMEZONE" in note for note in report.notes)
    assert "CLEANUP_TIMESTAMP_TIMEZONE" in render_text(report)


def test_report_times_are_utc_whatever_the_server_zone(pg: PgSchema) -> None:
    pg.create_reference_table()
    pg.insert_keys([KeyRow("c", "session", "k", 3)])
    report = run_cleanup(pg.settings(DATABASE_URL=with_timezone(pg, "Asia/Tokyo")), DRY)
    for instant in (report.started_at, report.cutoff, report.oldest, report.newest):
        assert instant is not None
        assert instant.utcoffset() == timedelta(0)


def test_retention_is_n_times_24_hours_across_daylight_saving_changes(pg: PgSchema) -> None:
    # A session in New York: `now() - interval '30 days'` keeps the wall-clock time, so across
    # a daylight-saving change (1 November 2026 falls within 30 days of late November) it
    # is 721 or 719 hours. The retention is 30 x 24 hours, in any zone and any season.
    pg.create_reference_table()
    for days in (30, 45, 120):
        settings = pg.settings(
            DATABASE_URL=with_timezone(pg, "America/New_York"), CLEANUP_RETENTION_DAYS=str(days)
        )
        report = run_cleanup(settings, DRY)
        assert report.started_at is not None
        assert report.cutoff is not None
        # As instants: Python subtracts two datetimes of the same zone as wall times.
        elapsed = report.started_at.timestamp() - report.cutoff.timestamp()
        assert round(elapsed, 3) == 24 * days * 3600


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
