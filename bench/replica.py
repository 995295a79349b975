"""Replica lag with a real streaming standby: the single DELETE against the engine.

A primary and a standby of their own (tools/pgcluster.py: the system binaries, stock
settings but `wal_level = logical`), the same seeded table for both variants (a fresh copy each,
CHECKPOINT, standby caught up), and a sampler that reads every 20 ms how far the standby's
replay is behind the primary's WAL insert position (what the engine's throttle reads too).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import psycopg

from bench.common import drop_database
from bench.data import build_template, fresh_copy
from bench.variants import Outcome, run_ours, run_single
from handler.settings import Settings
from tools.pgcluster import Cluster, bin_dir

LAG_QUERY = (
    "SELECT coalesce(max(pg_current_wal_insert_lsn() - replay_lsn), 0) FROM pg_stat_replication"
)


class LagSampler:
    """The largest replay lag (bytes) seen, polled every `interval_s` from the primary."""

    def __init__(self, dsn: str, interval_s: float = 0.02) -> None:
        self.dsn = dsn
        self.interval_s = interval_s
        self.max_bytes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute(LAG_QUERY).fetchone()
                self.max_bytes = max(self.max_bytes, int(row[0]) if row else 0)
                self.samples += 1
                self._stop.wait(self.interval_s)

    def __enter__(self) -> LagSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _wal_insert(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
    return int(row[0]) if row else 0


def measure(rows: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Max replay lag during the single DELETE and during the engine, on `rows` rows."""
    found = bin_dir()
    if found is None:
        return {"available": False, "reason": "no /usr/lib/postgresql/*/bin/initdb"}
    # Stock wal_receiver_status_interval (10 s): the standby reports on every WAL receipt.
    cluster = Cluster(found, status_interval_s=10)
    limit = Settings().max_replica_lag_bytes
    result: dict[str, Any] = {"available": True, "rows": rows, "limit_bytes": limit}
    try:
        log("replica: starting a primary and a streaming standby")
        cluster.start()
        tpl = build_template(cluster.primary_dsn, "bench_replica_tpl", rows)
        log(f"replica: template ready, {tpl.old_rows} rows past the cutoff")
        runs: dict[str, Callable[[str], Outcome]] = {
            "single": run_single,
            "ours": lambda url: run_ours(url, None),
        }
        for variant, fn in runs.items():
            name = f"bench_replica_{variant}"
            with fresh_copy(cluster.primary_dsn, tpl.name, name, timestamp_index=False) as url:
                cluster.wait_for_standby(timeout_s=300)
                before = _wal_insert(cluster.primary_dsn)
                with LagSampler(cluster.primary_dsn) as sampler:
                    outcome = fn(url)
                    wal = _wal_insert(cluster.primary_dsn) - before
                    ended = time.monotonic()
                    cluster.wait_for_standby(timeout_s=600)
                    catch_up = time.monotonic() - ended
            entry: dict[str, Any] = {
                "wall_s": round(outcome.wall_s, 3),
                "deleted": outcome.deleted,
                "transactions": outcome.transactions,
                "max_lag_bytes": sampler.max_bytes,
                "samples": sampler.samples,
                "wal_bytes": wal,
                "catch_up_s": round(catch_up, 3),
                **(asdict(outcome.engine) if outcome.engine else {}),
            }
            if outcome.transactions:
                entry["wal_per_txn_bytes"] = wal // outcome.transactions
            result[variant] = entry
            log(
                f"replica {variant}: {outcome.wall_s:.2f}s, max replay lag "
                f"{sampler.max_bytes / 2**20:.1f} MiB, WAL {wal / 2**20:.0f} MiB, "
                f"caught up {catch_up:.2f}s after"
            )
        drop_database(cluster.primary_dsn, tpl.name)
    finally:
        cluster.stop()
    return result
