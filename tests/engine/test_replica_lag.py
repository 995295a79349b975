"""The replica-lag throttle against a real primary and a real streaming standby.

The cluster (tools/pgcluster.py) runs from the system PostgreSQL
binaries on free local ports, whichever server the rest of the suite uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from handler import db, deleteloop
from handler.cleanup import run_cleanup
from handler.notify.html import render_summary
from handler.observability import publish_report
from handler.settings import Flags
from tests.support.db import PgSchema
from tests.support.layouts import seed
from tools.pgcluster import STANDBY_NAME, Cluster, bin_dir

pytestmark = pytest.mark.skipif(
    bin_dir() is None, reason="no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb)"
)


LIVE = Flags(dry_run=False)


LIMIT = 256 * 1024


BATCH = 200


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    found = bin_dir()
    assert found is not None
    c = Cluster(found)
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture
def primary(cluster: Cluster) -> Iterator[PgSchema]:
    """A fresh schema on the primary, with keys half past the cutoff, replayed by the standby."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster.primary_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    pg = PgSchema(cluster.primary_dsn, schema)
    seed(pg, "scattered", rows=20_000, old_share=0.5)
    with psycopg.connect(cluster.primary_dsn, autocommit=True) as conn:
        # Every page's first change after a checkpoint is logged whole: the run writes
        # enough WAL (~2.5 MB) to cross the limit many times over.
        conn.execute("CHECKPOINT")
    cluster.wait_for_standby()
    try:
        yield pg
    finally:
        with psycopg.connect(cluster.standby_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")
        with psycopg.connect(cluster.primary_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def settings_env(**extra: str) -> dict[str, str]:
    return {
        "CLEANUP_MAX_REPLICA_LAG_BYTES": str(LIMIT),
        "CLEANUP_THROTTLE_MAX_WAIT_S": "1",
        "CLEANUP_BATCH_SIZE": str(BATCH),
        "CLEANUP_GUARD_MIN_KEYS": "1000000",
        # The WAL budget would pause too; this test is about the replica throttle alone.
        "CLEANUP_WAL_BYTES_PER_S": "0",
        # Its history row (and table) would be WAL of its own, written after the loop.
        "CLEANUP_HISTORY": "false",
        **extra,
    }


def insert_lsn(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


def test_paused_standby_throttles_then_the_next_run_completes(
    cluster: Cluster, primary: PgSchema
) -> None:
    with psycopg.connect(cluster.standby_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    before = insert_lsn(cluster.primary_dsn)

    report = run_cleanup(primary.settings(**settings_env()), LIVE)

    written = insert_lsn(cluster.primary_dsn) - before
    assert report.status == "partial"
    assert report.reason is not None
    assert f"standby {STANDBY_NAME} (127.0.0.1)" in report.reason
    assert "CLEANUP_MAX_REPLICA_LAG_BYTES=262,144" in report.reason
    assert 0 < report.deleted < report.eligible
    assert report.throttle_waits >= 1
    assert report.throttle_wait_ms >= 900
    # The limit plus about one batch: a batch here is ~4 pages, ~40 KB of WAL.
    assert LIMIT < written <= LIMIT + 128 * 1024

    with psycopg.connect(cluster.standby_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_resume()")
    cluster.wait_for_standby()
    again = run_cleanup(primary.settings(**settings_env()), LIVE)
    assert again.status == "completed"
    assert report.deleted + again.deleted == report.eligible


@contextlib.contextmanager
def logical_slot(cluster: Cluster, *, consumer: bool) -> Iterator[str]:
    """A logical slot; with `consumer`, pg_recvlogical connected to it and then stopped
    (SIGSTOP): an active consumer that confirms nothing, whatever the timing."""
    slot = f"kc_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(cluster.primary_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (slot,))
    proc: subprocess.Popen[bytes] | None = None
    try:
        if consumer:
            proc = subprocess.Popen(
                [
                    str(cluster.bin / "pg_recvlogical"),
                    "--dbname",
                    cluster.primary_dsn,
                    "--slot",
                    slot,
                    "--start",
                    "--file",
                    os.devnull,
                    "--status-interval",
                    "3600",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_for_slot(cluster, slot, active=True)
            proc.send_signal(signal.SIGSTOP)
        yield slot
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            proc.wait(timeout=10)
            wait_for_slot(cluster, slot, active=False)
        with psycopg.connect(cluster.primary_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


def wait_for_slot(cluster: Cluster, slot: str, *, active: bool, timeout_s: float = 30) -> None:
    end = time.monotonic() + timeout_s
    with psycopg.connect(cluster.primary_dsn, autocommit=True) as conn:
        while time.monotonic() < end:
            row = conn.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            ).fetchone()
            if row is not None and row[0] is active:
                return
            time.sleep(0.05)
    raise AssertionError(f"slot {slot} did not become {'active' if active else 'inactive'}")


def test_a_lagging_logical_consumer_throttles(cluster: Cluster, primary: PgSchema) -> None:
    with logical_slot(cluster, consumer=True) as slot:
        report = run_cleanup(primary.settings(**settings_env()), LIVE)
    assert report.status == "partial"
    assert report.reason is not None
    assert f"logical slot {slot} is " in report.reason
    assert 0 < report.deleted < report.eligible


def test_an_abandoned_logical_slot_is_named_and_not_waited_for(
    cluster: Cluster, primary: PgSchema
) -> None:
    """No consumer connected: waiting cannot make it catch up, and it would stop every run at
    its first batch, for good (deleted 0, status partial, exit 0)."""
    with logical_slot(cluster, consumer=False) as slot:
        with psycopg.connect(cluster.primary_dsn, autocommit=True) as conn:
            # Far behind before the run starts, as an abandoned slot is.
            conn.execute("CREATE TABLE filler AS SELECT g FROM generate_series(1, 20000) g")
            conn.execute("DROP TABLE filler")
        report = run_cleanup(primary.settings(**settings_env()), LIVE)
    # Waited for, the slot would have stopped the run partial after 1 s
    # (CLEANUP_THROTTLE_MAX_WAIT_S): it is past the limit from the start. (The standby may
    # still make the run wait a little on a loaded machine.)
    assert report.status == "completed"
    assert report.deleted == report.eligible > 0
    (note,) = [n for n in report.notes if slot in n]
    assert "no consumer connected" in note
    assert "pg_drop_replication_slot" in note
    behind = re.search(r"is ([\d,]+) bytes of WAL behind", note)
    assert behind is not None
    assert int(behind.group(1).replace(",", "")) > LIMIT


def test_lag_within_the_limit_never_waits(cluster: Cluster, primary: PgSchema) -> None:
    report = run_cleanup(
        primary.settings(**settings_env(CLEANUP_MAX_REPLICA_LAG_BYTES=str(64 << 20))), LIVE
    )
    assert report.status == "completed"
    assert report.throttle_waits == 0
    with psycopg.connect(cluster.primary_dsn, autocommit=True) as conn:
        state = db.replication_state(conn)
    assert [lag.name for lag in state.lags] == [f"standby {STANDBY_NAME} (127.0.0.1)"]


def test_role_without_pg_monitor_gets_a_note_not_a_failure(
    cluster: Cluster, primary: PgSchema
) -> None:
    role = f"kc_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(cluster.primary_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(primary.schema), sql.Identifier(role)
            )
        )
        conn.execute(
            sql.SQL("GRANT SELECT, DELETE ON {}.whatsapp_keys TO {}").format(
                sql.Identifier(primary.schema), sql.Identifier(role)
            )
        )
    with psycopg.connect(cluster.standby_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    try:
        env = settings_env()
        env["DATABASE_URL"] = make_conninfo(primary.dsn, user=role)
        started = time.monotonic()
        report = run_cleanup(primary.settings(**env), LIVE)
    finally:
        with psycopg.connect(cluster.primary_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(
                    sql.Identifier(role), sql.Identifier(role)
                )
            )
    # The paused standby is invisible to this role: the run goes on, and says so.
    assert report.status == "completed"
    assert report.throttle_waits == 0
    (note,) = [n for n in report.notes if "not watched" in n]
    assert "replay lag of 1 streaming standby(s) not watched" in note
    assert "GRANT pg_monitor" in note
    assert time.monotonic() - started < 30


class VirtualClock:
    """The delete loop's clock where only its pauses take time: batches take none."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def test_wal_budget_paces_once_the_checkpoint_headroom_is_spent(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a server of our own with the smallest max_wal_size: full speed, then the rate.

    On the loop's virtual clock batches take no time, so every byte past the headroom must be
    paid for with pauses, however fast or slow (a loaded machine) the batches really run.
    """
    clock = VirtualClock()
    monkeypatch.setattr(deleteloop, "monotonic", clock.monotonic)
    monkeypatch.setattr(deleteloop, "sleep", clock.sleep)
    rate = 16 << 20
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster.primary_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        # Checkpoint trigger 32 MB / 1.9 = ~17 MB: 90 % of it, ~15 MB, at full speed.
        conn.execute("ALTER SYSTEM SET max_wal_size = '32MB'")
        conn.execute("SELECT pg_reload_conf()")
    pg = PgSchema(cluster.primary_dsn, schema)
    try:
        seed(pg, "scattered", rows=150_000, old_share=0.5)
        with psycopg.connect(cluster.primary_dsn, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        before = insert_lsn(cluster.primary_dsn)
        report = run_cleanup(
            pg.settings(
                CLEANUP_GUARD_MIN_KEYS="1000000",
                CLEANUP_HISTORY="false",
                CLEANUP_MAX_REPLICA_LAG_BYTES="0",
                CLEANUP_WAL_BYTES_PER_S=str(rate),
            ),
            LIVE,
        )
        written = insert_lsn(cluster.primary_dsn) - before
    finally:
        with psycopg.connect(cluster.primary_dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET max_wal_size")
            conn.execute("SELECT pg_reload_conf()")
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    assert report.status == "completed"
    assert report.deleted == report.eligible
    # Everything past the headroom (~16 MB) goes at no more than 16 MiB/s: with batches
    # taking no time, the pauses alone pay for it (less the WAL the run wrote outside the
    # loop, a few pages), and for no more than the whole run's WAL.
    headroom = 0.9 * (32 << 20) / 1.9
    paced_bytes = written - headroom
    assert paced_bytes > 4 << 20
    assert report.pacing_wait_ms == round(clock.slept * 1000)
    assert 0.95 * paced_bytes / rate <= clock.slept <= written / rate


def test_runs_stuck_partial_with_nothing_deleted_count_up_and_alert(
    cluster: Cluster, primary: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    """A standby far behind before each run: every run stops at once, deleting nothing. The
    second such run in a row is an alert (Telegram ❌, metric StalledRuns for its alarm)."""
    with psycopg.connect(cluster.standby_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    with psycopg.connect(cluster.primary_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE filler AS SELECT g FROM generate_series(1, 20000) g")
        conn.execute("DROP TABLE filler")
    settings = primary.settings(**settings_env(CLEANUP_HISTORY="true"))
    first = run_cleanup(settings, LIVE)
    second = run_cleanup(settings, LIVE)
    assert (first.status, first.deleted, second.status, second.deleted) == (
        "partial",
        0,
        "partial",
        0,
    )
    assert (first.stalled_runs, second.stalled_runs) == (1, 2)
    assert not first.stalled
    assert second.stalled
    assert any(
        "2 live runs in a row ended partial having deleted nothing" in n for n in second.notes
    )
    assert render_summary(first).startswith("⚠️")
    summary = render_summary(second)
    assert summary.startswith("❌")
    assert "<b>Stuck:</b> 2 runs in a row ended partial having deleted nothing" in summary
    capsys.readouterr()
    publish_report(second)
    values = [
        json.loads(line)["StalledRuns"]
        for line in capsys.readouterr().out.splitlines()
        if '"StalledRuns"' in line
    ]
    assert values == [[2]]

    with psycopg.connect(cluster.standby_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_resume()")
    cluster.wait_for_standby()
    third = run_cleanup(settings, LIVE)
    assert third.status == "completed"
    assert third.deleted > 0
    assert third.stalled_runs == 0
