"""VACUUM after a run: on request, and its trouble (lock held, too little time) is a note, never
a failed run.
"""

from __future__ import annotations

import time

import pytest

from handler.cleanup import run_cleanup
from handler.settings import Flags
from tests.support.db import KeyRow, PgSchema
from tests.support.history import history, init_history
from tests.support.layouts import seed


def test_vacuum_flag_runs_vacuum_and_reports_it(pg: PgSchema, table: list[KeyRow]) -> None:
    report = run_cleanup(
        pg.settings(CLEANUP_GUARD_MIN_KEYS="100000"), Flags(dry_run=False, vacuum=True)
    )
    assert report.vacuumed
    assert report.reclaimable_bytes > 0
    with pg.connect() as conn:
        row = conn.execute(
            "SELECT vacuum_count + autovacuum_count FROM pg_stat_user_tables "
            "WHERE relid = 'whatsapp_keys'::regclass"
        ).fetchone()
    assert row is not None
    assert row[0] >= 1


def test_vacuum_that_cannot_get_its_lock_is_a_note_and_the_run_completes(
    app_state: PgSchema,
) -> None:
    settings = app_state.settings(CLEANUP_LOCK_TIMEOUT_MS="300")
    with app_state.connect() as other, other.transaction():
        # What a concurrent VACUUM or CREATE INDEX CONCURRENTLY holds; batches don't need it.
        other.execute("LOCK TABLE whatsapp_keys IN SHARE UPDATE EXCLUSIVE MODE")
        report = run_cleanup(settings, Flags(dry_run=False, force=True, vacuum=True), event_id="e")
    assert report.status == "completed"
    assert report.deleted == 3
    assert not report.vacuumed
    assert any("VACUUM not done" in note for note in report.notes)
    assert history(app_state) == [("e", "completed")]


def test_vacuum_is_skipped_when_too_little_time_is_left(app_state: PgSchema) -> None:
    report = run_cleanup(
        app_state.settings(),
        Flags(dry_run=False, force=True, vacuum=True),
        deadline=time.monotonic() + 5,
    )
    assert report.status == "completed"
    assert report.deleted == 3
    assert not report.vacuumed
    assert any("VACUUM skipped" in note for note in report.notes)


def test_after_a_deadline_shortened_vacuum_the_history_write_gets_the_time_left(
    app_state: PgSchema,
) -> None:
    """VACUUM runs under a timeout cut to the deadline; after it, the run's last statements
    (the history write here) get what is left of the deadline: neither VACUUM's own cut nor
    the session's 5 minutes."""
    init_history(app_state)
    with app_state.connect() as conn:
        # The history row records the statement timeout the job's session had when it wrote.
        conn.execute(
            "ALTER TABLE keys_cleanup_runs ADD COLUMN seen_timeout text "
            "DEFAULT current_setting('statement_timeout')"
        )
    run_cleanup(
        app_state.settings(CLEANUP_STATEMENT_TIMEOUT_MS="300000"),
        Flags(dry_run=False, force=True, vacuum=True),
        deadline=time.monotonic() + 120,
    )
    with app_state.connect() as conn:
        ((seen,),) = conn.execute("SELECT seen_timeout FROM keys_cleanup_runs").fetchall()
    assert seen.endswith("ms")
    assert 100_000 < int(seen.removesuffix("ms")) <= 120_000


def test_the_vacuum_option_takes_no_access_exclusive_lock_on_the_key_table(
    pg: PgSchema,
) -> None:
    """`--vacuum` runs `VACUUM (ANALYZE)`: with the deleted keys at the end of the heap its
    truncation phase takes ACCESS EXCLUSIVE on the live key table (PostgreSQL docs, VACUUM
    TRUNCATE), the one lock every reader and writer of the sessions waits for; it is also
    WAL-logged and replayed on hot standbys, where it conflicts with every query on the table.
    Proven from the WAL the run wrote (pg_walinspect): a Standby LOCK record for the table."""
    seed(pg, "tail", rows=20_000, old_share=0.5)  # the old keys fill the end of the heap
    with pg.connect() as conn:
        if not conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_walinspect'"
        ).fetchone():
            pytest.skip("pg_walinspect is not available on this server")
        conn.execute(f"CREATE EXTENSION IF NOT EXISTS pg_walinspect SCHEMA {pg.schema}")
        oid, before = conn.execute(
            "SELECT 'whatsapp_keys'::regclass::oid, pg_current_wal_insert_lsn()"
        ).fetchone()  # type: ignore[misc]
    report = run_cleanup(
        pg.settings(CLEANUP_GUARD_MIN_KEYS="1000000", CLEANUP_HISTORY="false"),
        Flags(dry_run=False, vacuum=True),
    )
    assert report.status == "completed"
    assert report.vacuumed
    with pg.connect() as conn:
        conn.execute("SELECT txid_current()")  # a commit: the run's WAL is flushed
        locks = [
            r[0]
            for r in conn.execute(
                "SELECT description FROM pg_get_wal_records_info_till_end_of_wal(%s) "
                "WHERE resource_manager = 'Standby' AND record_type = 'LOCK'",
                (before,),
            )
            if f"rel {oid}" in r[0]
        ]
        truncated = conn.execute(
            "SELECT count(*) FROM pg_get_wal_records_info_till_end_of_wal(%s) "
            "WHERE resource_manager = 'Storage' AND record_type = 'TRUNCATE'",
            (before,),
        ).fetchone()[0]  # type: ignore[index]
    assert report.released_bytes is not None
    assert locks == [], (
        f"ACCESS EXCLUSIVE on whatsapp_keys logged {len(locks)} time(s) ({locks[0]}); heap "
        f"truncations: {truncated}; released {report.released_bytes:,} bytes"
    )
