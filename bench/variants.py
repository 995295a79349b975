"""The three ways to delete the stale keys, each timed the same way.

`single` and `limit-batches` run one statement per transaction (autocommit) and time each
statement on the client; `ours` is the engine itself, in live mode, forced past the safety
guard and with no protected types, so that every variant deletes the same rows.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from bench.common import RETENTION_DAYS, EngineFigures, cutoff_predicate
from bench.writer import APPLICATION_NAME as WRITER_APP
from handler.cleanup import run_cleanup
from handler.deleteloop import Progress
from handler.schema import REFERENCE_TABLE
from handler.settings import DEFAULT_PROTECTED_KEY_TYPES, Flags, Settings

SAMPLER_APP = "bench-sampler"
SLOW_TXN_MS = 100


@dataclass
class Outcome:
    deleted: int
    wall_s: float
    transactions: int
    max_txn_ms: float
    delete_s: float | None = None  # delete loop alone, when it can be told apart
    # monotonic (start, end) of the engine's phases: measure, delete, after
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)
    engine: EngineFigures | None = None


def run_single(url: str) -> Outcome:
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.monotonic()
        cur = conn.execute(
            sql.SQL("DELETE FROM {t} WHERE {p}").format(
                t=sql.Identifier(REFERENCE_TABLE), p=cutoff_predicate()
            )
        )
        wall = time.monotonic() - started
    return Outcome(deleted=cur.rowcount, wall_s=wall, transactions=1, max_txn_ms=wall * 1000)


def run_limit_batches(url: str, batch_size: int) -> Outcome:
    statement = sql.SQL(
        "DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM {t} WHERE {p} LIMIT {n})"
    ).format(t=sql.Identifier(REFERENCE_TABLE), p=cutoff_predicate(), n=sql.Literal(batch_size))
    deleted = 0
    transactions = 0
    longest = 0.0
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.monotonic()
        while True:
            t0 = time.monotonic()
            rows = conn.execute(statement).rowcount
            longest = max(longest, time.monotonic() - t0)
            transactions += 1
            deleted += rows
            if rows == 0:
                break
        wall = time.monotonic() - started
    return Outcome(
        deleted=deleted, wall_s=wall, transactions=transactions, max_txn_ms=longest * 1000
    )


class TxnSampler:
    """Polls pg_stat_activity for the age of the oldest open transaction in one database.

    An independent check on every variant's own figure: it sees the engine's transactions
    too, including the read-only measuring ones. Resolution is the poll interval (~20 ms).
    Only client sessions count: autovacuum, which a minutes-long paced run at 4M rows wakes
    (its ANALYZE holds an xid for seconds), is recorded apart in `max_background_write_ms`.
    """

    def __init__(self, admin_url: str, dbname: str, interval_s: float = 0.02) -> None:
        self.admin_url = admin_url
        self.dbname = dbname
        self.interval_s = interval_s
        self.max_write_ms = 0.0
        self.max_any_ms = 0.0
        self.max_background_write_ms = 0.0
        # What the deleting session waits on while its write transaction is older than
        # SLOW_TXN_MS: (wait_event_type:wait_event or "cpu") -> samples.
        self.slow_waits: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = (
            "SELECT coalesce(max(age) FILTER (WHERE backend_xid IS NOT NULL AND client), 0),"
            " coalesce(max(age) FILTER (WHERE client), 0),"
            " array_agg(coalesce(wait_event_type || ':' || wait_event, 'cpu')) FILTER ("
            "   WHERE backend_xid IS NOT NULL AND state = 'active' AND client"
            "   AND age > %s),"
            " coalesce(max(age) FILTER (WHERE backend_xid IS NOT NULL AND NOT client), 0)"
            " FROM (SELECT *, extract(epoch FROM clock_timestamp() - xact_start) AS age,"
            "              backend_type = 'client backend' AS client"
            "       FROM pg_stat_activity"
            "       WHERE datname = %s AND coalesce(application_name, '') NOT IN (%s, %s)"
            "         AND pid <> pg_backend_pid() AND xact_start IS NOT NULL) AS a"
        )
        with psycopg.connect(self.admin_url, autocommit=True, application_name=SAMPLER_APP) as conn:
            while not self._stop.is_set():
                row = conn.execute(
                    query, (SLOW_TXN_MS / 1000, self.dbname, WRITER_APP, SAMPLER_APP)
                ).fetchone()
                if row is not None:
                    for wait in row[2] or ():
                        self.slow_waits[str(wait)] = self.slow_waits.get(str(wait), 0) + 1
                    self.max_write_ms = max(self.max_write_ms, float(str(row[0])) * 1000)
                    self.max_any_ms = max(self.max_any_ms, float(str(row[1])) * 1000)
                    self.max_background_write_ms = max(
                        self.max_background_write_ms, float(str(row[3])) * 1000
                    )
                self._stop.wait(self.interval_s)

    def __enter__(self) -> TxnSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def engine_settings(
    url: str, batch_size: int | None, extra_env: dict[str, str] | None = None
) -> Settings:
    """Settings for the engine on one copy: default tuning unless `extra_env` says otherwise,
    no protected types."""
    env = {
        "DATABASE_URL": url,
        "CLEANUP_TABLE": REFERENCE_TABLE,
        "CLEANUP_RETENTION_DAYS": str(RETENTION_DAYS),
        # No protected types, so every variant deletes exactly the same rows.
        "CLEANUP_UNPROTECT_KEY_TYPES": ",".join(DEFAULT_PROTECTED_KEY_TYPES),
    }
    if batch_size is not None:
        env["CLEANUP_BATCH_SIZE"] = str(batch_size)
    env.update(extra_env or {})
    return Settings.from_env(env)


def run_ours(url: str, batch_size: int | None, extra_env: dict[str, str] | None = None) -> Outcome:
    """The engine in live mode, forced past the guard (half the table is eligible)."""
    settings = engine_settings(url, batch_size, extra_env)
    ticks: list[float] = []

    def progress(_: Progress) -> None:
        ticks.append(time.monotonic())

    started = time.monotonic()
    report = run_cleanup(settings, Flags(dry_run=False, force=True), progress=progress)
    wall = time.monotonic() - started
    if report.status != "completed":
        raise RuntimeError(f"engine run ended {report.status}: {report.reason}")
    ended = started + wall
    delete_s = None
    phases: dict[str, tuple[float, float]] = {}
    if len(ticks) >= 2:
        # Progress fires after each batch; the first batch's own time is taken as the mean.
        delete_s = (ticks[-1] - ticks[0]) * len(ticks) / (len(ticks) - 1)
        phases = {
            "measure": (started, ticks[-1] - delete_s),
            "delete": (ticks[-1] - delete_s, ticks[-1]),
            "after": (ticks[-1], ended),
        }
    return Outcome(
        deleted=report.deleted,
        wall_s=wall,
        transactions=report.batches,
        max_txn_ms=float(report.max_batch_ms),
        delete_s=delete_s,
        engine=EngineFigures(
            engine_duration_ms=report.duration_ms,
            batch_retries=report.batch_retries,
            max_batch_rows=report.max_batch_rows,
            pacing_wait_ms=report.pacing_wait_ms,
            throttle_waits=report.throttle_waits,
            throttle_wait_ms=report.throttle_wait_ms,
        ),
        phases=phases,
    )
