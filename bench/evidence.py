"""EXPLAIN (ANALYZE, BUFFERS) evidence for each missed target, attached to the target."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from psycopg import sql

from bench import coldstart, explain, measure
from bench.data import RETENTION_DAYS, Template, fresh_copy
from bench.variants import run_ours
from handler.schema import REFERENCE_TABLE

Log = Callable[[str], None]


def _single_plan(args: argparse.Namespace, name: str, tpl: Template, index: bool) -> str:
    statement = sql.SQL(
        "DELETE FROM {t} WHERE updated_at < now() - make_interval(days => {d})"
    ).format(t=sql.Identifier(REFERENCE_TABLE), d=sql.Literal(RETENTION_DAYS))
    with fresh_copy(args.database_url, tpl.name, name, timestamp_index=index) as url:
        plan = explain.explain(url, statement)
    head = f"-- single DELETE for comparison ({tpl.rows:,} rows, index={index}), rolled back"
    return f"{head}\n{plan}"


def _ours_plans(args: argparse.Namespace, name: str, tpl: Template, index: bool) -> list[str]:
    with fresh_copy(args.database_url, tpl.name, name, timestamp_index=index) as url:
        explain.enable_auto_explain(args.database_url, name)
        plans, note = explain.capture_plans(name, lambda: run_ours(url, args.ours_batch_size))
    if note:
        return [f"-- engine plans unavailable: {note}"]
    picked = explain.pick_plans(plans)
    total = sum(ms for ms, _ in plans)
    head = (
        f"-- engine statements under auto_explain ({tpl.rows:,} rows, index={index}): "
        f"{len(plans)} statements, {total:.0f} ms in total"
    )
    return [head, *picked]


def _importtime() -> str:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {coldstart.APP_MODULE}"],
        cwd=coldstart.ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    rows = []
    for line in out.stderr.splitlines():
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[1].isdigit():
            rows.append((int(parts[1]), line))
    rows.sort(reverse=True)
    return "-- python -X importtime, top 20 by cumulative us\n" + "\n".join(
        line for _, line in rows[:20]
    )


def collect(
    args: argparse.Namespace,
    prefix: str,
    templates: dict[int, Template],
    targets: list[dict[str, Any]],
    log: Log,
) -> None:
    n = args.rows
    big = max(templates)
    cache: dict[tuple[str, int, bool], list[str]] = {}

    def ours(size: int, index: bool) -> list[str]:
        key = ("ours", size, index)
        if key not in cache:
            log(f"evidence: engine plans at {size} rows, index={index}")
            cache[key] = _ours_plans(
                args, f"{prefix}_ev_o{int(index)}_{size}", templates[size], index
            )
        return cache[key]

    def single(size: int, index: bool) -> list[str]:
        key = ("single", size, index)
        if key not in cache:
            log(f"evidence: single DELETE plan at {size} rows, index={index}")
            cache[key] = [
                _single_plan(args, f"{prefix}_ev_s{int(index)}_{size}", templates[size], index)
            ]
        return cache[key]

    for t in targets:
        if t["status"] != "FAIL":
            continue
        tid = t["id"]
        if tid in ("throughput-run-noindex", "throughput-delete-noindex", "writer-p99-noindex"):
            t["evidence"] = single(n, False) + ours(n, False)
        elif tid in ("throughput-run-index", "throughput-delete-index", "writer-p99-index"):
            t["evidence"] = single(n, True) + ours(n, True)
        elif tid == "max-txn":
            t["evidence"] = ours(n, False)
        elif tid in ("txn-growth", "linear"):
            t["evidence"] = ours(n, False) + ours(big, False)
        elif tid == "measure":
            t["evidence"] = measure.evidence(args.database_url, templates[n].name, f"{prefix}_ev_m")
        elif tid == "cold-start":
            t["evidence"] = [_importtime()]
