"""The engine's measurement phase against one sequential count(*) over the same table.

The measurement phase is what `run_cleanup` does before deciding anything: `db.sizes` (catalog
look-ups) and `db.measure` (one pass: counts, age buckets, extremes, per key type). We call
those two functions directly, with the policy the benchmark's runs use (30 days, no
protected types), so nothing else the engine does (locking, deleting) is in the figure.
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from bench import explain
from bench.data import RETENTION_DAYS, fresh_copy
from handler import db
from handler.schema import REFERENCE_TABLE

FUNCTION = "handler.db.sizes + handler.db.measure"


def _prepare(conn: db.Conn) -> tuple[db.Target, db.Policy, datetime]:
    """Target and policy, as the engine resolves them before it measures (not timed)."""
    target = db.resolve_target(conn, None, REFERENCE_TABLE, "updated_at", "key_type")
    policy = db.Policy(cutoff=db.cutoff_for(conn, RETENTION_DAYS), protected=())
    return target, policy, db.db_now(conn)


def _measure_step(conn: db.Conn, prepared: tuple[db.Target, db.Policy, datetime]) -> None:
    target, policy, now = prepared
    db.sizes(conn, target)
    db.measure(conn, target, policy, now)


def _count(conn: db.Conn) -> None:
    conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(REFERENCE_TABLE)))


def _sequential_only(conn: db.Conn) -> None:
    """Make this session's count(*) a (parallel) sequential scan, as the target names it.

    Left alone, the planner answers count(*) with an index-only scan of the smallest index,
    which on a freshly vacuumed copy reads far less than the table: not the yardstick.
    """
    for name in ("enable_indexonlyscan", "enable_indexscan", "enable_bitmapscan"):
        conn.execute(sql.SQL("SET {} = off").format(sql.Identifier(name)))


def _timed(fn: Any, conn: db.Conn) -> float:
    started = time.monotonic()
    fn(conn)
    return time.monotonic() - started


def measure_vs_count(base_url: str, template: str, name: str, repeats: int = 3) -> dict[str, Any]:
    """Median of `repeats` alternated pairs, after one warm-up of each, on a fresh copy."""
    with (
        fresh_copy(base_url, template, name, timestamp_index=False) as url,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        rows = int(
            str(
                (
                    conn.execute(
                        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(REFERENCE_TABLE))
                    ).fetchone()
                    or (0,)
                )[0]
            )
        )
        prepared = _prepare(conn)
        _measure_step(conn, prepared)
        counts, measures, ratios = [], [], []
        for _ in range(max(repeats, 3)):
            _sequential_only(conn)
            c = _timed(_count, conn)
            conn.execute("RESET ALL")
            m = _timed(lambda c: _measure_step(c, prepared), conn)
            counts.append(c)
            measures.append(m)
            ratios.append(m / c)
    return {
        "available": True,
        "function": FUNCTION,
        "rows": rows,
        "repeats": len(ratios),
        "count_ms": round(statistics.median(counts) * 1000, 1),
        "measure_ms": round(statistics.median(measures) * 1000, 1),
        "ratio": round(statistics.median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
    }


def evidence(base_url: str, template: str, name: str) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of count(*) and of the engine's measuring statements."""
    out = []
    with fresh_copy(base_url, template, name, timestamp_index=False) as url:
        count_sql = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(REFERENCE_TABLE))
        out.append(
            "-- SELECT count(*), index scans off\n"
            + explain.explain(url, count_sql, setup=_sequential_only)
        )
        explain.enable_auto_explain(base_url, name)

        def step() -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                _measure_step(conn, _prepare(conn))

        plans, note = explain.capture_plans(name, step)
        if note:
            out.append(f"-- engine plans unavailable: {note}")
        out.extend(
            f"-- engine measurement statement ({ms:.1f} ms)\n{text}"
            for ms, text in plans
            if ms >= 1.0
        )
    return out
