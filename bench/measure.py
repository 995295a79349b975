"""The engine's measurement phase against one sequential count(*) over the same table.

The measurement phase is what a dry run of `run_cleanup` does: connect, resolve the target,
take the advisory lock, read the clock, the table sizes and the one measuring pass, then stop
(nothing to delete). Timing the public entry point keeps this independent of the engine's
internal helpers, at the price of a few milliseconds of connection set-up charged to the
engine (stated in the report).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from bench import explain
from bench.data import fresh_copy
from bench.variants import engine_settings
from handler import db
from handler.cleanup import run_cleanup
from handler.schema import REFERENCE_TABLE
from handler.settings import Flags

FUNCTION = "run_cleanup(settings, Flags(dry_run=True, force=True))"
_DRY_RUN = Flags(dry_run=True, force=True)


def _measure_step(url: str) -> None:
    report = run_cleanup(engine_settings(url, None), _DRY_RUN)
    if report.status != "completed":
        raise RuntimeError(f"dry run ended {report.status}: {report.reason}")


def _count(conn: db.Conn) -> None:
    conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(REFERENCE_TABLE)))


def _sequential_only(conn: db.Conn) -> None:
    """Make this session's count(*) a (parallel) sequential scan, as the target names it.

    Left alone, the planner answers count(*) with an index-only scan of the smallest index,
    which on a freshly vacuumed copy reads far less than the table: not the yardstick.
    """
    for name in ("enable_indexonlyscan", "enable_indexscan", "enable_bitmapscan"):
        conn.execute(sql.SQL("SET {} = off").format(sql.Identifier(name)))


def _timed(fn: Callable[[], object]) -> float:
    started = time.monotonic()
    fn()
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
        _measure_step(url)
        counts, measures, ratios = [], [], []
        for _ in range(max(repeats, 3)):
            _sequential_only(conn)
            c = _timed(lambda: _count(conn))
            conn.execute("RESET ALL")
            m = _timed(lambda: _measure_step(url))
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

        plans, note = explain.capture_plans(name, lambda: _measure_step(url))
        if note:
            out.append(f"-- engine plans unavailable: {note}")
        out.extend(
            f"-- engine measurement statement ({ms:.1f} ms)\n{text}"
            for ms, text in plans
            if ms >= 1.0
        )
    return out
