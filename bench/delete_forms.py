"""Which part of a batch costs what: the same TID-range batches, five statement forms.

`uv run python -m bench.delete_forms --rows 1000000 --rounds 3` seeds a template, then per
round runs each form on a fresh copy (no writer) and reports wall time and the ratio to the
single DELETE of the same round. It isolates the statement itself from everything else the
engine does (measuring, locking, timeouts), to show where the delete loop loses time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from bench.data import RETENTION_DAYS, build_template, drop_database, fresh_copy
from bench.run import DEFAULT_URL, RESULTS_DIR, log, machine_info
from handler.schema import REFERENCE_TABLE

Conn = psycopg.Connection[tuple[object, ...]]
COLUMNS = ("company_id", "key_type", "key_id", "value", "created_at", "updated_at", "expires_at")

_T = sql.Identifier(REFERENCE_TABLE)
_RANGE_AND_OLD = sql.SQL("ctid >= %(lo)s::tid AND ctid < %(hi)s::tid AND updated_at < %(cutoff)s")
_ROW_BYTES = sql.SQL("28 + ") + sql.SQL(" + ").join(
    sql.SQL("coalesce(pg_column_size({}), 0)").format(sql.Identifier(c)) for c in COLUMNS
)
FORMS: dict[str, list[sql.Composed]] = {
    # What the engine runs (per-type counts and bytes through RETURNING, aggregated in a CTE).
    "cte-returning": [
        sql.SQL(
            "WITH deleted AS (DELETE FROM {t} AS t WHERE {w} RETURNING key_type, {b} AS bytes)"
            " SELECT key_type, count(*), sum(bytes) FROM deleted GROUP BY key_type"
        ).format(t=_T, w=_RANGE_AND_OLD, b=_ROW_BYTES)
    ],
    "returning-type": [
        sql.SQL("DELETE FROM {t} WHERE {w} RETURNING key_type").format(t=_T, w=_RANGE_AND_OLD)
    ],
    "plain": [sql.SQL("DELETE FROM {t} WHERE {w}").format(t=_T, w=_RANGE_AND_OLD)],
    # Per-type counts and bytes from a SELECT over the same range, then a plain DELETE, in
    # one transaction: the counts are exact unless a row changes between the two statements
    # (compare the DELETE's row count with the SELECT's total to detect it).
    "select-then-plain": [
        sql.SQL("SELECT key_type, count(*), sum({b}) FROM {t} WHERE {w} GROUP BY key_type").format(
            t=_T, w=_RANGE_AND_OLD, b=_ROW_BYTES
        ),
        sql.SQL("DELETE FROM {t} WHERE {w}").format(t=_T, w=_RANGE_AND_OLD),
    ],
}


def _single(conn: Conn, _span: int) -> tuple[int, float]:
    conn.execute(
        sql.SQL("DELETE FROM {} WHERE updated_at < now() - make_interval(days => %s)").format(_T),
        (RETENTION_DAYS,),
    )
    return 1, 0.0  # one transaction: the caller takes the wall time


SLOW_BATCH_MS = 100.0
slow_batches: dict[str, int] = {}


def _batched(
    name: str, statements: list[sql.Composed], pause: float = 0.0
) -> Callable[[Conn, int], tuple[int, float]]:
    """Batches over the heap in TID order; `pause` sleeps that multiple of each batch's time
    after it (0.5: the loop runs two thirds of the time), to see what pacing buys."""

    def run(conn: Conn, span: int) -> tuple[int, float]:
        row = conn.execute(
            "SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int,"
            " now() - make_interval(days => %s)",
            (REFERENCE_TABLE, RETENTION_DAYS),
        ).fetchone()
        if row is None:
            raise RuntimeError("no table size")
        pages, cutoff = int(str(row[0])), row[1]
        batches, longest = 0, 0.0
        for lo in range(0, pages, span):
            params = {"lo": f"({lo},0)", "hi": f"({lo + span},0)", "cutoff": cutoff}
            started = time.monotonic()
            with conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = off")  # as the engine does
                for statement in statements:
                    cur = conn.execute(statement, params)
                    if cur.description is not None:
                        cur.fetchall()
            took = time.monotonic() - started
            longest = max(longest, took)
            batches += 1
            if took * 1000 > SLOW_BATCH_MS:
                slow_batches[name] = slow_batches.get(name, 0) + 1
            if pause:
                time.sleep(took * pause)
        return batches, longest

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.delete_forms", description=__doc__)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-rows", type=int, default=2500, help="target deleted rows per batch")
    p.add_argument("--database-url", default=DEFAULT_URL)
    p.add_argument("--forms", default="", help="comma-separated subset (single always runs)")
    p.add_argument("--pause", type=float, default=0.5, help="plain-paused: sleep x batch time")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    prefix = f"bench_{os.getpid()}_forms"
    tpl = build_template(args.database_url, f"{prefix}_tpl", args.rows)
    # Pages per batch so that a batch deletes about --batch-rows rows, as the engine sizes it.
    span = max(1, round(args.batch_rows * (tpl.table_bytes // 8192) / max(tpl.old_rows, 1)))
    forms: dict[str, Callable[[Conn, int], tuple[int, float]]] = {"single": _single}
    forms |= {name: _batched(name, stmts) for name, stmts in FORMS.items()}
    forms["plain-paused"] = _batched("plain-paused", FORMS["plain"], pause=args.pause)
    if args.forms:
        forms = {k: v for k, v in forms.items() if k == "single" or k in args.forms.split(",")}
    times: dict[str, list[float]] = {name: [] for name in forms}
    ratios: dict[str, list[float]] = {name: [] for name in forms}
    longest: dict[str, list[float]] = {name: [] for name in forms}
    try:
        for rnd in range(1, args.rounds + 1):
            single_s = 0.0
            for name, fn in forms.items():
                copy = f"{prefix}_{rnd}_{name.replace('-', '')}"
                with (
                    fresh_copy(args.database_url, tpl.name, copy, timestamp_index=False) as url,
                    psycopg.connect(url, autocommit=True) as conn,
                ):
                    started = time.monotonic()
                    _, long_s = fn(conn, span)
                    wall = time.monotonic() - started
                single_s = wall if name == "single" else single_s
                times[name].append(wall)
                ratios[name].append(wall / single_s)
                longest[name].append((long_s or wall) * 1000)
                log(f"round {rnd} {name:18} {wall:6.2f}s ({wall / single_s:.2f}x single)")
    finally:
        drop_database(args.database_url, tpl.name)
    result = {
        "meta": {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine_info(args.database_url),
            "rows": tpl.rows,
            "old_rows": tpl.old_rows,
            "pages_per_batch": span,
            "rounds": args.rounds,
        },
        "forms": {
            name: {
                "median_s": round(statistics.median(times[name]), 3),
                "median_ratio_to_single": round(statistics.median(ratios[name]), 3),
                "median_longest_txn_ms": round(statistics.median(longest[name]), 1),
                "batches_over_100ms_all_rounds": slow_batches.get(name, 0),
                "times_s": [round(t, 3) for t in times[name]],
            }
            for name in forms
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"delete-forms-{args.rows}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Delete statement forms, {tpl.rows:,} rows ({tpl.old_rows:,} deleted), "
        f"{span} pages per batch, median of {args.rounds} rounds",
        "",
        "Each form on a fresh copy, no writer; ratio to the single DELETE of the same round. "
        f"plain-paused sleeps {args.pause}x each batch's time after it. "
        "Command: `uv run python -m bench.delete_forms " + " ".join(sys.argv[1:]) + "`.",
        "",
        "| form | median s | ratio to single | longest txn ms | batches > 100 ms (all rounds) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, f in result["forms"].items():
        lines.append(
            f"| {name} | {f['median_s']:.2f} | {f['median_ratio_to_single']:.2f}x | "
            f"{f['median_longest_txn_ms']:.0f} | "
            f"{f['batches_over_100ms_all_rounds'] if name != 'single' else '-'} |"
        )
    (args.out / f"delete-forms-{args.rows}.md").write_text("\n".join(lines) + "\n")
    log(f"wrote {args.out}/delete-forms-{args.rows}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
