"""EXPLAIN (ANALYZE, BUFFERS) evidence for a missed target.

For statements we issue ourselves we run EXPLAIN directly (inside a rolled-back transaction
when the statement writes). For the engine's own statements we turn on auto_explain for the
copy's database (ALTER DATABASE ... SET, so every new session loads it) and read the plans
back from the server log, which on this Debian server is a plain file.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql

DEFAULT_SERVER_LOG = "/var/log/postgresql/postgresql-15-main.log"
_ENTRY_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", re.MULTILINE)
_DURATION = re.compile(r"duration: ([0-9.]+) ms\s+plan:")


def explain(
    url: str,
    statement: sql.Composable,
    *,
    rollback: bool = True,
    setup: Callable[[psycopg.Connection[tuple[object, ...]]], None] | None = None,
) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of one statement; writes are rolled back."""
    with psycopg.connect(url) as conn:
        if setup is not None:
            setup(conn)
        rows = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS) {}").format(statement)).fetchall()
        if rollback:
            conn.rollback()
        else:
            conn.commit()
    return "\n".join(str(r[0]) for r in rows)


def enable_auto_explain(admin_url: str, dbname: str, min_duration_ms: int = 0) -> None:
    db = sql.Identifier(dbname)
    settings = {
        "session_preload_libraries": "auto_explain",
        "auto_explain.log_min_duration": str(min_duration_ms),
        "auto_explain.log_analyze": "on",
        "auto_explain.log_buffers": "on",
        "auto_explain.log_nested_statements": "on",
    }
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name, value in settings.items():
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                    db, sql.Identifier(*name.split(".")), sql.Literal(value)
                )
            )


def capture_plans(
    dbname: str, action: Callable[[], object], log_path: str | None = None
) -> tuple[list[tuple[float, str]], str | None]:
    """Run `action`, return the auto_explain plans the server logged for `dbname` meanwhile.

    Returns (plans as (duration_ms, text) in log order, a note when the log is unreadable).
    """
    path = Path(log_path or os.environ.get("BENCH_PG_LOG", DEFAULT_SERVER_LOG))
    try:
        start = path.stat().st_size
    except OSError as exc:
        action()
        return [], f"server log {path} not readable ({type(exc).__name__})"
    action()
    with path.open("rb") as fh:
        fh.seek(start)
        text = fh.read().decode("utf-8", "replace")
    marker = f"@{dbname} "
    plans: list[tuple[float, str]] = []
    starts = [m.start() for m in _ENTRY_START.finditer(text)] + [len(text)]
    for a, b in itertools.pairwise(starts):
        entry = text[a:b]
        first_line = entry.split("\n", 1)[0]
        match = _DURATION.search(entry)
        if marker in first_line and match:
            plans.append((float(match.group(1)), entry.strip()))
    return plans, None


def engine_evidence(plans: list[tuple[float, str]], slow_ms: float = 10.0) -> list[str]:
    """The engine's statements, condensed: the delete batches as a distribution plus the
    slowest and a median batch in full, and every other statement that took `slow_ms` or more.
    """
    if not plans:
        return []
    batches = [(ms, text) for ms, text in plans if "Delete on" in text]
    others = [(ms, text) for ms, text in plans if "Delete on" not in text]
    out = []
    if batches:
        ordered = sorted(ms for ms, _ in batches)
        n = len(ordered)
        # The batch timeline in 20 slices shows whether batches slow down as the run goes on.
        step = max(1, n // 20)
        timeline = [
            round(sum(ms for ms, _ in batches[i : i + step]) / len(batches[i : i + step]))
            for i in range(0, n, step)
        ]
        out.append(
            f"-- {n} delete batches: {sum(ordered):.0f} ms in total, median "
            f"{ordered[n // 2]:.1f} ms, p90 {ordered[min(n - 1, n * 9 // 10)]:.1f} ms, max "
            f"{ordered[-1]:.1f} ms; mean ms per 1/20th of the run: {timeline}"
        )
        slowest = max(batches, key=lambda p: p[0])
        median_batch = sorted(batches, key=lambda p: p[0])[n // 2]
        out.append(f"-- slowest batch ({slowest[0]:.1f} ms)\n{slowest[1]}")
        out.append(f"-- a median batch ({median_batch[0]:.1f} ms)\n{median_batch[1]}")
    out.extend(f"-- other statement ({ms:.1f} ms)\n{text}" for ms, text in others if ms >= slow_ms)
    return out
