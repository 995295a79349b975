"""The engine's measurement phase against one sequential count(*) over the same table, and
the measuring pass itself against one heap scan reading the same columns (issue 20 item 5).

The measurement phase is what a dry run of `run_cleanup` does: connect, resolve the target,
take the advisory lock, read the clock, the table sizes and the one measuring pass, then stop
(nothing to delete). Timing the public entry point keeps this independent of the engine's
internal helpers, at the price of a few milliseconds of connection set-up charged to the
engine (stated in the report).

The measuring pass is `handler.db.measure` called with the arguments the engine gave it in a
dry run (target, edges, policy, by_tenant), on a connection set up as the engine's
(`handler.db.connect`: no JIT, UTC). Its yardstick is one sequential scan that reads the
columns the pass reads (`same_column_scan`) and groups them as the pass groups them (per key
type and tenant), on the same connection: same parallel-worker settings. It is timed twice:
on the bench's backlog (half the keys past the cutoff), then on the table the next day's run
meets (`next_day_pass_vs_scan`: yesterday's run done), the table a daily job reads.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from unittest import mock

import psycopg
from psycopg import sql

from bench import explain
from bench.common import RETENTION_DAYS
from bench.data import fresh_copy
from bench.variants import engine_settings
from handler import db
from handler.cleanup import run_cleanup
from handler.db.predicates import applies_ttl, lifecycle_branches, measures_orphans
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
        # The measuring pass alone, against the same-column scan (issue 20 item 5): on the
        # backlog, then on the table the next day's run meets.
        same = pass_vs_scan(url, repeats=max(repeats, 5))
        next_day = next_day_pass_vs_scan(url, repeats=max(repeats, 5))
    return {
        "available": True,
        "function": FUNCTION,
        "rows": rows,
        "repeats": len(ratios),
        "count_ms": round(statistics.median(counts) * 1000, 1),
        "measure_ms": round(statistics.median(measures) * 1000, 1),
        "ratio": round(statistics.median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
        **same,
        "next_day": next_day,
    }


PassArgs = tuple[db.Target, list[datetime], db.Policy, bool]


def pass_args(url: str) -> PassArgs:
    """What the engine hands `db.measure` in a dry run with the bench's settings: (target,
    edges, policy, by_tenant), from the last call (the one the run kept)."""
    with mock.patch.object(db, "measure", wraps=db.measure) as spy:
        _measure_step(url)
    if spy.call_args is None:
        raise RuntimeError("the dry run made no measuring pass")
    _conn, target, edges, policy = spy.call_args.args
    return target, list(edges), policy, bool(spy.call_args.kwargs.get("by_tenant", False))


def read_columns(target: db.Target, policy: db.Policy, by_tenant: bool) -> dict[str, str]:
    """The key-table columns the measuring pass reads, by role: the key type, the tenant (per
    tenant figures, or the orphan rule), the timestamp, the key id (the key lifecycle) and the
    expiry (the TTL rule). Encoded: the key column holds type and id."""
    enc = target.encoded
    roles = {
        "type": enc.key_column if enc is not None else target.key_type_column,
        "tenant": target.tenant_column
        if (by_tenant or measures_orphans(target, policy)) and target.has_tenant
        else None,
        "ts": target.timestamp_column,
        "id": (enc.key_column if enc is not None else target.key_id_column)
        if lifecycle_branches(target, policy)
        else None,
        "expires": target.expires_column if applies_ttl(target, policy) else None,
    }
    return {role: col for role, col in roles.items() if col is not None}


def same_column_scan(target: db.Target, policy: db.Policy, by_tenant: bool) -> sql.Composed:
    """One sequential scan reading exactly the columns the pass reads, grouped as the pass
    groups (key type, tenant): the keys, the timestamps' extremes, the largest key id and
    expiry. With the default rules on the reference table:
    `SELECT key_type, company_id, count(*), min(updated_at), max(updated_at), max(key_id)
    FROM whatsapp_keys GROUP BY 1, 2`."""
    cols = read_columns(target, policy, by_tenant)
    keys = [sql.Identifier(cols[r]) for r in ("type", "tenant") if r in cols]
    if "type" in cols and target.encoded is not None:
        keys = keys[1:]  # the encoded key column is read whole, as the id below
    aggs: list[sql.Composable] = [sql.SQL("count(*)")]
    if "ts" in cols:
        ts = sql.Identifier(cols["ts"])
        aggs += [sql.SQL("min({})").format(ts), sql.SQL("max({})").format(ts)]
    for role in ("id", "expires"):
        if role in cols and not (target.encoded is not None and role == "id"):
            aggs.append(sql.SQL("max({})").format(sql.Identifier(cols[role])))
    if target.encoded is not None:
        aggs.append(sql.SQL("max({})").format(sql.Identifier(cols["type"])))
    group = sql.SQL(" GROUP BY {}").format(sql.SQL(", ").join(keys)) if keys else sql.SQL("")
    return sql.SQL("SELECT {select} FROM {table}{group}").format(
        select=sql.SQL(", ").join([*keys, *aggs]), table=target.ident, group=group
    )


def pass_vs_scan(url: str, repeats: int = 5) -> dict[str, Any]:
    """The measuring pass against `same_column_scan`: alternated on one engine-like connection,
    median of `repeats` pairs after one warm-up of each."""
    target, edges, policy, by_tenant = pass_args(url)
    scan = same_column_scan(target, policy, by_tenant)
    with db.connect(url, connect_timeout_s=10) as conn:
        scan_text = scan.as_string(conn)

        measured: list[db.Measurement] = []

        def run_pass() -> None:
            measured[:] = [db.measure(conn, target, edges, policy, by_tenant=by_tenant)]

        def run_scan() -> None:
            conn.execute(scan).fetchall()

        run_pass()
        run_scan()
        passes, scans, ratios = [], [], []
        for _ in range(max(repeats, 3)):
            s = _timed(run_scan)
            m = _timed(run_pass)
            scans.append(s)
            passes.append(m)
            ratios.append(m / s)
        workers = str((conn.execute("SHOW max_parallel_workers_per_gather").fetchone() or ("",))[0])
        query, params = db.measure_statement(target, edges, policy, by_tenant=by_tenant)
        plan = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(query), params).fetchone()
        pass_parallel = parallel_scan(plan[0][0]["Plan"]) if plan else False
    types = measured[0].types
    return {
        # What the pass found: the keys, the ones it would delete, and the aged or expired
        # ones the key lifecycle keeps (each of those went through the lifecycle's checks).
        "keys": sum(t.keys for t in types),
        "eligible": sum(t.eligible for t in types),
        "kept": sum(sum(t.kept.values()) for t in types),
        "pass_ms": round(statistics.median(passes) * 1000, 1),
        "scan_ms": round(statistics.median(scans) * 1000, 1),
        "pass_ratio": round(statistics.median(ratios), 3),
        "pass_ratios": [round(r, 3) for r in ratios],
        "scan_sql": scan_text,
        "columns": sorted(read_columns(target, policy, by_tenant).values()),
        "parallel_workers": workers,
        # The pass's own plan: a parallel scan of the key table, as the scan it is compared with.
        "pass_parallel_scan": pass_parallel,
    }


def yesterdays_run(url: str) -> int:
    """Make the copy the table the next day's run meets: a live run of the engine with the
    bench's settings and one day more of retention (what yesterday's run took), then VACUUM
    (ANALYZE). Returns the keys that run deleted."""
    settings = engine_settings(url, None, {"CLEANUP_RETENTION_DAYS": str(RETENTION_DAYS + 1)})
    report = run_cleanup(settings, Flags(dry_run=False, force=True))
    if report.status != "completed":
        raise RuntimeError(f"yesterday's run ended {report.status}: {report.reason}")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(REFERENCE_TABLE)))
    return report.deleted


def next_day_pass_vs_scan(url: str, repeats: int = 5) -> dict[str, Any]:
    """`pass_vs_scan` on the table a daily job meets: the bench's backlog after yesterday's
    run (`yesterdays_run`), so only a day's keys are new to the age rule. The keys the key
    lifecycle kept yesterday are due again today (the bench has no creds: every old pre-key)."""
    deleted = yesterdays_run(url)
    return {"yesterday_deleted": deleted, **pass_vs_scan(url, repeats)}


def parallel_scan(node: dict[str, Any]) -> bool:
    """True when an EXPLAIN (FORMAT JSON) plan reads a table with a parallel sequential scan:
    a "Seq Scan" node that is "Parallel Aware" ("Parallel Seq Scan" is the text format's name)."""
    here = node.get("Node Type") == "Seq Scan" and node.get("Parallel Aware") is True
    return here or any(parallel_scan(child) for child in node.get("Plans") or [])


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
