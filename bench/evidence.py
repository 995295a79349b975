"""EXPLAIN (ANALYZE, BUFFERS) evidence for the missed targets.

Each piece of evidence is collected once (a fresh copy per piece) and stored by key; a missed
target lists the keys that explain it, so the Markdown shows each plan once.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable

from psycopg import sql

from bench import coldstart, explain, measure
from bench.common import cutoff_predicate
from bench.data import Template, fresh_copy
from bench.targets import Target
from bench.variants import run_ours
from handler.schema import REFERENCE_TABLE

Log = Callable[[str], None]


def _single_plan(args: argparse.Namespace, name: str, tpl: Template, index: bool) -> list[str]:
    statement = sql.SQL("DELETE FROM {t} WHERE {p}").format(
        t=sql.Identifier(REFERENCE_TABLE), p=cutoff_predicate()
    )
    with fresh_copy(args.database_url, tpl.name, name, timestamp_index=index) as url:
        plan = explain.explain(url, statement)
    return [f"-- single DELETE ({tpl.rows:,} rows, index={index}, no writer), rolled back\n{plan}"]


def _ours_plans(args: argparse.Namespace, name: str, tpl: Template, index: bool) -> list[str]:
    with fresh_copy(args.database_url, tpl.name, name, timestamp_index=index) as url:
        explain.enable_auto_explain(args.database_url, name)
        plans, note = explain.capture_plans(name, lambda: run_ours(url, args.ours_batch_size))
    if note:
        return [f"-- engine plans unavailable: {note}"]
    total = sum(ms for ms, _ in plans)
    head = (
        f"-- engine statements under auto_explain ({tpl.rows:,} rows, index={index}, no "
        f"writer): {len(plans)} statements, {total:.0f} ms in total"
    )
    return [head, *explain.engine_evidence(plans)]


def _importtime() -> list[str]:
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
    top = "\n".join(line for _, line in rows[:25])
    return [f"-- python -X importtime -c 'import handler.app', top 25 by cumulative us\n{top}"]


def collect(
    args: argparse.Namespace,
    prefix: str,
    templates: dict[int, Template],
    targets: list[Target],
    log: Log,
) -> dict[str, list[str]]:
    """Gather the evidence the missed targets need; returns {key: blocks}."""
    n = args.rows
    big = max(templates)
    evidence: dict[str, list[str]] = {}

    def need(key: str, make: Callable[[], list[str]]) -> str:
        if key not in evidence:
            log(f"evidence: {key}")
            evidence[key] = make()
        return key

    def ours(size: int, index: bool) -> str:
        return need(
            f"engine statements, {size:,} rows, index={index}",
            lambda: _ours_plans(args, f"{prefix}_ev_o{int(index)}_{size}", templates[size], index),
        )

    def single(size: int, index: bool) -> str:
        return need(
            f"single DELETE, {size:,} rows, index={index}",
            lambda: _single_plan(args, f"{prefix}_ev_s{int(index)}_{size}", templates[size], index),
        )

    for t in targets:
        if t.status != "FAIL":
            continue
        tid = t.id
        index = tid.endswith("-index")
        if tid.startswith(("throughput-", "writer-p99-")):
            t.evidence = [single(n, index), ours(n, index)]
        elif tid == "max-txn":
            t.evidence = [ours(n, False), ours(n, True)]
        elif tid in ("txn-growth", "linear"):
            t.evidence = [ours(n, False), ours(big, False)]
        elif tid == "measure":
            t.evidence = [
                need(
                    "measurement phase",
                    lambda: measure.evidence(
                        args.database_url, templates[n].name, f"{prefix}_ev_m"
                    ),
                )
            ]
        elif tid == "cold-start":
            t.evidence = [need("cold start", _importtime)]
    return evidence
