"""A run beside the application and other runs: one run per table, rows the application holds or
refreshes are left alone, deadlocks and table locks do not fail the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import psycopg
from psycopg.types.json import Jsonb

from handler import db
from handler.cleanup import run_cleanup
from handler.deleteloop import Progress
from tests.support.db import KeyRow, PgSchema, baileys_creds
from tests.support.progress import AfterFirstBatch, refresh_last_old_key
from tests.support.tables import (
    LIVE,
    expected_survivors,
    half_old_survivors,
    slow_deletes,
    uploaded_prekeys,
)


def test_second_run_is_skipped_while_another_holds_the_lock(
    pg: PgSchema, table: list[KeyRow]
) -> None:
    with pg.connect() as holder:
        oid = holder.execute("SELECT 'whatsapp_keys'::regclass::oid").fetchone()
        assert oid is not None
        holder.execute("SELECT pg_advisory_lock(%s)", (db.LOCK_CLASS + oid[0],))
        report = run_cleanup(pg.settings(), LIVE)
        assert report.status == "skipped"
        assert report.reason is not None
        assert "lock" in report.reason
        assert pg.count() == len(table)
    # Lock released: the next run works.
    assert run_cleanup(pg.settings(CLEANUP_GUARD_MIN_KEYS="100000"), LIVE).status == "completed"


def test_key_refreshed_during_the_run_survives(pg: PgSchema, table: list[KeyRow]) -> None:
    last, refreshed = refresh_last_old_key(pg)
    settings = pg.settings(CLEANUP_BATCH_SIZE="5", CLEANUP_GUARD_MIN_KEYS="100000")
    report = run_cleanup(settings, LIVE, progress=refreshed)
    assert refreshed.seen
    assert report.deleted == report.eligible - 1
    assert pg.key_set() == expected_survivors(table, 30) | {tuple(last)}
    # Without counting per type, the split is unknown once a key left the eligible set; the
    # report says so rather than guess.
    assert {t.deleted for t in report.by_type.values()} == {None}
    assert any("per-type split of the deleted keys not counted" in note for note in report.notes)


def test_row_locked_by_another_transaction_is_skipped(pg: PgSchema, table: list[KeyRow]) -> None:
    old = next(r for r in table if r.age >= 30 and r.key_type == "session")
    settings = pg.settings(CLEANUP_GUARD_MIN_KEYS="100000")
    with pg.connect() as app, app.transaction():
        page = app.execute(
            "SELECT (ctid::text::point)[0]::int FROM whatsapp_keys WHERE company_id = %s "
            "AND key_type = %s AND key_id = %s FOR UPDATE",
            old.ident,
        ).fetchone()
        assert page is not None
        page_mates = {
            (r[0], r[1], r[2])
            for r in app.execute(
                "SELECT company_id, key_type, key_id FROM whatsapp_keys "
                "WHERE (ctid::text::point)[0]::int = %s",
                page,
            )
        }
        report = run_cleanup(settings, LIVE)
        assert report.status == "completed"
        assert report.skipped_pages == 1
        assert report.batch_retries >= 1
        assert any("left for the next run" in note for note in report.notes)
        # The held row and the eligible keys on its page wait; everything else went.
        assert old.ident in pg.key_set()
        assert pg.key_set() == expected_survivors(table, 30) | (
            page_mates & {r.ident for r in table}
        )
        assert report.deleted == report.eligible - len(page_mates - expected_survivors(table, 30))
        # The keys left on the skipped page are the backlog, though the run completed.
        assert report.remaining == report.eligible - report.deleted > 0
    # Once the application lets go, the next run finishes the job.
    run_cleanup(settings, LIVE)
    assert pg.key_set() == expected_survivors(table, 30)


def test_table_locked_exclusively_ends_partial_without_hanging(
    pg: PgSchema, table: list[KeyRow]
) -> None:
    settings = pg.settings(
        CLEANUP_BATCH_SIZE="5",
        CLEANUP_GUARD_MIN_KEYS="100000",
        CLEANUP_LOCK_TIMEOUT_MS="200",
        CLEANUP_BATCH_ATTEMPTS="2",
    )
    locker = pg.connect()
    release = threading.Event()

    def lock_table(_: Progress) -> None:
        if not release.is_set():
            locker.execute("BEGIN")
            locker.execute("LOCK TABLE whatsapp_keys IN ACCESS EXCLUSIVE MODE")
            release.set()

    try:
        started = time.monotonic()
        report = run_cleanup(settings, LIVE, progress=lock_table)
        elapsed = time.monotonic() - started
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert report.status == "partial"
    assert report.reason is not None
    assert "lock timeout" in report.reason
    assert report.after is None  # the after-measurement could not take its lock either
    assert report.batches == 1
    assert elapsed < 30  # bounded: a handful of 200 ms lock waits, never a hang
    assert pg.count() == len(table) - report.deleted


def test_two_processes_at_once_exactly_one_deletes(
    pg: PgSchema, half_old_table: list[KeyRow]
) -> None:
    slow_deletes(pg, 0.3)  # each batch >= 0.3 s, so the first run is still going
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEANUP_", "DATABASE_"))}
    env |= pg.env(CLEANUP_BATCH_SIZE="40", CLEANUP_GUARD_MIN_KEYS="100000")
    cmd = [sys.executable, "-m", "handler.cli", "--execute", "--json"]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    statuses = sorted(r["status"] for r in reports)
    assert statuses == ["completed", "skipped"]
    assert sum(r["deleted"] for r in reports) == len(half_old_table) - len(
        half_old_survivors(half_old_table)
    )
    assert pg.key_set() == half_old_survivors(half_old_table)


def test_deadlock_with_the_application_skips_the_page_instead_of_failing(
    pg: PgSchema,
) -> None:
    """Our batch holds key A and waits for key B; the application holds B and asks for A."""
    pg.create_reference_table()
    keys = [KeyRow("c", "session", f"k{i}", 40) for i in range(4)]  # all on page 0
    pg.insert_keys(keys)
    a, b = keys[0], keys[3]
    with pg.role(
        "dl",
        "GRANT ALL ON whatsapp_keys TO {role}",
        # Our session looks for deadlocks after 10 ms, before its 100 ms row wait runs out,
        # so it is the one PostgreSQL picks to abort.
        "ALTER ROLE {role} SET deadlock_timeout = '10ms'",
    ) as role:
        outcome = _deadlock_with_the_application(pg, role, a, b)
    (report,) = outcome
    assert not isinstance(report, BaseException), report
    assert report.status == "completed"
    assert report.skipped_pages == 1
    assert {a.ident, b.ident} <= pg.key_set()  # A was refreshed by the app, B was held


def _deadlock_with_the_application(pg: PgSchema, role: str, a: KeyRow, b: KeyRow) -> list[object]:
    settings = pg.settings(
        DATABASE_URL=pg.dsn + f" user={role}", CLEANUP_HISTORY="false", CLEANUP_GUARD_MIN_KEYS="9"
    )
    where = "company_id = %s AND key_type = %s AND key_id = %s"
    app = pg.connect()
    app.execute("BEGIN")
    app.execute(f"SELECT 1 FROM whatsapp_keys WHERE {where} FOR UPDATE", b.ident)
    outcome: list[object] = []

    def job() -> None:
        try:
            outcome.append(run_cleanup(settings, LIVE))
        except Exception as exc:  # the test asserts on it below
            outcome.append(exc)

    runner = threading.Thread(target=job)
    runner.start()
    try:
        with pg.connect() as watch:  # wait until the job's DELETE is blocked on key B
            for _ in range(200):
                waiting = watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = %s "
                    "AND wait_event_type = 'Lock' AND query ILIKE '%%DELETE%%'",
                    (role,),
                ).fetchone()
                if waiting and waiting[0]:
                    break
                time.sleep(0.005)
        # Now the application wants key A, which the job's DELETE holds: a deadlock.
        app.execute(f"UPDATE whatsapp_keys SET value = value WHERE {where}", a.ident)
    finally:
        app.execute("COMMIT")
        app.close()
        runner.join(30)
    return outcome


def test_an_auth_table_reloaded_in_one_transaction_is_waited_for_by_the_creds_recheck(
    pg: PgSchema,
) -> None:
    """Without a timestamp column each DELETE re-reads the auth table (the creds recheck).
    docs/engine.md: a reload of the auth table in one transaction (TRUNCATE and INSERT, as
    docs/rules.md advises) is waited for with CLEANUP_LOCK_TIMEOUT_MS, not taken for a row
    conflict. Here the batch meets that lock under the 100 ms row wait instead: pages are
    skipped as if the application held rows there, and their keys are left."""
    uploaded_prekeys(pg, 6000)
    reloads: list[psycopg.Connection[tuple[object, ...]]] = []

    def reload_auth() -> None:  # the application refills its auth table in one transaction
        app = psycopg.connect(pg.dsn)
        reloads.append(app)
        app.execute("TRUNCATE whatsapp_auth")

        def refill() -> None:
            app.execute(
                "INSERT INTO whatsapp_auth (company_id, creds) VALUES ('a', %s)",
                (Jsonb(baileys_creds(6001)),),
            )
            app.commit()

        threading.Timer(0.8, refill).start()  # well within CLEANUP_LOCK_TIMEOUT_MS (2 s)

    reload = AfterFirstBatch(reload_auth)
    settings = pg.settings(
        CLEANUP_TIMESTAMP_COLUMN="none",
        CLEANUP_GUARD_MIN_KEYS="100000",
        CLEANUP_BATCH_SIZE="100",
        CLEANUP_LOCK_TIMEOUT_MS="2000",
    )
    try:
        report = run_cleanup(settings, LIVE, progress=reload)
    finally:
        time.sleep(1.0)
        for app in reloads:
            app.close()
    assert reload.seen
    assert report.status == "completed"
    assert report.skipped_pages == 0, report.notes
    assert report.deleted == report.eligible == 5000
