"""What the rules beyond age cost: the key lifecycle (creds read, pre-key window, own devices,
sender keys), TTL, orphans and the top-tenants figures, against the age rule alone and against
the defaults before the key lifecycle ("before": the same code with the creds never read, which
turns every lifecycle check off, as the engine ran until the key-lifecycle issue).

    uv run python -m bench.rules --rows 1000000      # ~5 min on 2 cores
    uv run python -m bench.rules --smoke             # 20k rows, a few seconds

Data: bench/data.py's seed (KEY_MIX, ~50% of the rows past the 30-day cutoff) over 1,000
tenants; the reference auth table (`whatsapp_auth`) holds a creds row for all but 10 of them
(1% orphaned tenants, ~1% of the keys); 5% of the keys carry an expiry in the past and 5% one
in the future. Protection stays at the engine's defaults.

Two figures per configuration:
- the measuring pass: a dry run of `run_cleanup` (connect, lock, clock, sizes, the one
  measuring scan), the median of `--repeats` rounds alternating the configurations on one
  fresh copy, beside a sequential count(*) as the yardstick;
- the delete loop: a live run (forced past the guard) on a fresh copy per configuration; the
  loop's time is taken from the progress callback (last batch end - first batch end,
  extrapolated by one batch), since the first callback comes after the measuring pass.

Results: bench/results/rules-<rows>.md and .json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg

from bench import measure as bench_measure
from bench.data import build_template, drop_database, fresh_copy
from handler import cleanup
from handler.cleanup import run_cleanup
from handler.deleteloop import Progress
from handler.schema import REFERENCE_TABLE, seed_rules
from handler.settings import Flags, Settings

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TENANTS = 1000
ORPHANED_TENANTS = [f"company-{i}" for i in range(1, 11)]  # 1% of the tenants
EXPIRED_SHARE = 0.05
FUTURE_SHARE = 0.05

TTL = {"CLEANUP_EXPIRES_COLUMN": "expires_at"}
NO_TOP = {"CLEANUP_TOP_TENANTS": "0"}
# name -> settings beyond the base; the age rule is always on. Names ending in BEFORE run with
# the key lifecycle off.
BEFORE = " (before)"
AGE = "age" + BEFORE
CONFIGS: dict[str, dict[str, str]] = {
    AGE: NO_TOP,
    "age + key lifecycle": NO_TOP,
    "old defaults: age + TTL + top tenants" + BEFORE: TTL,
    "defaults: age + key lifecycle + top tenants": {},
    "age + key lifecycle + TTL": TTL | NO_TOP,
    "all: defaults + TTL + orphans": TTL | {"CLEANUP_ORPHAN_RULE": "true"},
}
DRY = Flags(dry_run=True, force=True)
LIVE = Flags(dry_run=False, force=True)


def settings_for(url: str, config: str) -> Settings:
    env = {
        "DATABASE_URL": url,
        "CLEANUP_TABLE": REFERENCE_TABLE,
        "CLEANUP_RETENTION_DAYS": "30",
        "CLEANUP_HISTORY": "false",
        **CONFIGS[config],
    }
    return Settings.from_env(env)


def add_rules_data(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    seed_rules(
        conn,
        without_creds=ORPHANED_TENANTS,
        expired_share=EXPIRED_SHARE,
        future_share=FUTURE_SHARE,
    )


@contextlib.contextmanager
def lifecycle_for(config: str) -> Iterator[None]:
    """The engine as it ran before the key lifecycle, for configurations named so: the creds
    are never read, and no lifecycle check enters the measuring pass or the DELETEs."""
    if not config.endswith(BEFORE):
        yield
        return
    original = cleanup._Run._lifecycle
    cleanup._Run._lifecycle = lambda self, conn, target: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        cleanup._Run._lifecycle = original  # type: ignore[method-assign]


def _timed_dry_run(url: str, config: str) -> tuple[float, dict[str, Any]]:
    with lifecycle_for(config):
        started = time.monotonic()
        report = run_cleanup(settings_for(url, config), DRY)
        elapsed = time.monotonic() - started
    if report.status != "completed":
        raise RuntimeError(f"{config}: dry run ended {report.status}: {report.reason}")
    figures = {
        "eligible": report.eligible,
        "expired": report.expired,
        "orphaned": report.orphaned,
        "orphaned_tenants": report.orphaned_tenants,
        "orphan_rule": report.orphan_rule,
        "kept": sum(k.keys for k in report.kept),
    }
    return elapsed, figures


def measuring_pass(base_url: str, template: str, repeats: int) -> dict[str, Any]:
    name = f"{template}_measure"
    times: dict[str, list[float]] = {c: [] for c in CONFIGS}
    counts: list[float] = []
    figures: dict[str, dict[str, Any]] = {}
    with (
        fresh_copy(base_url, template, name, timestamp_index=False) as url,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        for config in CONFIGS:  # warm-up: every configuration once
            _timed_dry_run(url, config)
        for _ in range(repeats):
            bench_measure._sequential_only(conn)
            started = time.monotonic()
            bench_measure._count(conn)
            counts.append(time.monotonic() - started)
            conn.execute("RESET ALL")
            for config in CONFIGS:
                elapsed, figures[config] = _timed_dry_run(url, config)
                times[config].append(elapsed)
    count_ms = statistics.median(counts) * 1000
    age_ms = statistics.median(times[AGE]) * 1000
    return {
        "count_ms": round(count_ms, 1),
        "configs": {
            config: {
                "median_ms": round(statistics.median(t) * 1000, 1),
                "runs_ms": [round(x * 1000, 1) for x in t],
                "vs_age": round(statistics.median(t) * 1000 / age_ms, 3),
                "vs_count": round(statistics.median(t) * 1000 / count_ms, 3),
                **figures[config],
            }
            for config, t in times.items()
        },
    }


def delete_loop(base_url: str, template: str, config: str, index: int) -> dict[str, Any]:
    ticks: list[float] = []

    def progress(_: Progress) -> None:
        ticks.append(time.monotonic())

    with (
        fresh_copy(base_url, template, f"{template}_live{index}", timestamp_index=False) as url,
        lifecycle_for(config),
    ):
        started = time.monotonic()
        report = run_cleanup(settings_for(url, config), LIVE, progress=progress)
        wall = time.monotonic() - started
    if report.status != "completed":
        raise RuntimeError(f"{config}: live run ended {report.status}: {report.reason}")
    batches = len(ticks)
    loop = (ticks[-1] - ticks[0]) * batches / (batches - 1) if batches > 1 else 0.0
    return {
        "deleted": report.deleted,
        "batches": report.batches,
        "max_batch_ms": report.max_batch_ms,
        "wall_ms": round(wall * 1000, 1),
        "loop_ms": round(loop * 1000, 1),
        "loop_ms_per_1k_deleted": round(loop * 1000 / (report.deleted / 1000), 2)
        if report.deleted
        else None,
    }


def render(result: dict[str, Any]) -> str:
    m = result["measure"]
    lines = [
        f"# Rules beyond age: cost at {result['rows']:,} keys",
        "",
        f"Generated by `uv run python -m bench.rules --rows {result['rows']}` "
        f"({result['repeats']} measuring rounds). PostgreSQL {result['server']}; "
        f"{TENANTS:,} tenants, {len(ORPHANED_TENANTS)} without a creds row (1%); "
        f"{EXPIRED_SHARE:.0%} of the keys expired, {FUTURE_SHARE:.0%} with a future expiry. "
        f"Template seeded in {result['seed_s']:.0f} s.",
        "",
        "## Measuring pass (a dry run: lock, clock, sizes, the one scan)",
        "",
        f"Sequential count(*) of the same table: {m['count_ms']:,.0f} ms (median).",
        "",
        "| configuration | median ms | vs age alone | vs count(*) | eligible | kept | expired | "
        "orphaned keys | orphaned tenants |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in m["configs"].items():
        lines.append(
            f"| {name} | {c['median_ms']:,.0f} | {c['vs_age']:.2f}x | {c['vs_count']:.2f}x | "
            f"{c['eligible']:,} | {c['kept']:,} | {c['expired']:,} | {c['orphaned']:,} | "
            f"{c['orphaned_tenants']:,} |"
        )
    old = m["configs"]["old defaults: age + TTL + top tenants" + BEFORE]["median_ms"]
    new = m["configs"]["defaults: age + key lifecycle + top tenants"]["median_ms"]
    lines += [
        "",
        f"Defaults now against the defaults before the key lifecycle: {new / old:.2f}x "
        "(target: at most 1.1x).",
    ]
    lines += [
        "",
        "## Delete loop (a live run, forced; fresh copy per configuration)",
        "",
        "| configuration | deleted | batches | longest batch ms | loop ms | ms per 1k deleted "
        "| whole run ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, d in result["delete"].items():
        per_k = "-" if d["loop_ms_per_1k_deleted"] is None else f"{d['loop_ms_per_1k_deleted']}"
        lines.append(
            f"| {name} | {d['deleted']:,} | {d['batches']:,} | {d['max_batch_ms']:,} | "
            f"{d['loop_ms']:,.0f} | {per_k} | {d['wall_ms']:,.0f} |"
        )
    before = result["delete"][AGE]["loop_ms_per_1k_deleted"]
    after = result["delete"]["age + key lifecycle"]["loop_ms_per_1k_deleted"]
    if before and after:
        lines += [
            "",
            f"Delete loop per key, key lifecycle against age alone: {after / before:.2f}x "
            "(target: at most 1.1x).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rules", allow_abbrev=False)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="20k rows, 1 round, no files")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    rows, repeats = (20_000, 1) if args.smoke else (args.rows, args.repeats)
    base_url = args.database_url
    template = f"bench_{os.getpid()}_rules"
    try:
        tpl = build_template(base_url, template, rows, companies=TENANTS, extra=add_rules_data)
        with psycopg.connect(base_url) as conn:
            server = conn.info.parameter_status("server_version") or "?"
        result: dict[str, Any] = {
            "rows": tpl.rows,
            "repeats": repeats,
            "server": server,
            "seed_s": tpl.seed_s,
            "measure": measuring_pass(base_url, template, repeats),
            "delete": {
                config: delete_loop(base_url, template, config, i)
                # Top tenants change the measuring pass only: the loop runs the same DELETEs.
                for i, config in enumerate(c for c in CONFIGS if "top tenants" not in c)
            },
        }
    finally:
        drop_database(base_url, template)
    text = render(result)
    sys.stdout.write(text)
    if not args.smoke:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"rules-{rows}.md").write_text(text, encoding="utf-8")
        (args.out / f"rules-{rows}.json").write_text(
            json.dumps(result, indent=2) + "\n", encoding="utf-8"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
