"""Large tables across runs (issue 20 item 2): a backlog drained by runs of a fixed budget.

On a private server (stock settings): seed the bench's table (~50 % older than the cutoff),
then run the engine again and again, each run in a fresh process with the deadline Lambda
would give it (remaining time `--budget-s` minus CLEANUP_DEADLINE_MARGIN_MS), until one ends
`completed`. Each run's wall time, deleted keys, WAL, backlog and peak RSS are recorded; the
same at `--small-rows` for the RSS ratio; and one single DELETE of the keys older than the
cutoff on a fresh copy, for the time baseline. Exactness: a final dry run finds 0 eligible
keys, and the runs' deleted keys add up to what the first run measured as eligible.

    uv run python -m bench.drain --rows 10000000      # results in bench/results/drain-10m/
    uv run python -m bench.drain --smoke              # tiny, seconds, 2+ runs forced

The runs take long; the module takes the exclusive bench lock (/work/bench.lock, when it
exists) only for the single DELETE and the small size's run, not for the drain's runs: the
machine load is recorded at each run's start and end instead.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg

from bench.common import RETENTION_DAYS, drop_database, log
from bench.data import build_template, fresh_copy
from bench.run import git_state, machine_info
from bench.variants import engine_settings, run_single
from tools.pgcluster import Cluster, bin_dir

RESULTS = Path(__file__).parent / "results"
LOCK = Path("/work/bench.lock")
MAX_RUNS = 40  # a drain that needs more has failed the target many times over


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@contextlib.contextmanager
def _bench_lock(enabled: bool) -> Iterator[None]:
    """The shared machine's exclusive bench lock, when it exists and `enabled`."""
    if not enabled or not LOCK.exists():
        yield
        return
    with LOCK.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _wal_lsn(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    return int(str(row[0])) if row else 0


def child(url: str, budget_s: float, batch_size: int | None, dry_run: bool) -> int:
    """One engine run in this process, as Lambda would start it; prints its figures as JSON."""
    from handler.cleanup import run_cleanup  # noqa: PLC0415 - the child's own imports
    from handler.settings import Flags  # noqa: PLC0415

    margin = os.environ.get("CLEANUP_DEADLINE_MARGIN_MS")  # the smoke's: a second
    settings = engine_settings(
        url, batch_size, {"CLEANUP_DEADLINE_MARGIN_MS": margin} if margin else None
    )
    deadline = time.monotonic() + budget_s - settings.deadline_margin_ms / 1000
    started = time.monotonic()
    report = run_cleanup(settings, Flags(dry_run=dry_run, force=True), deadline=deadline)
    wall = time.monotonic() - started
    hwm_kib = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm_kib = int(line.split()[1])
    out = {
        "status": report.status,
        "reason": report.reason,
        "eligible": report.eligible,
        "deleted": report.deleted,
        "remaining": report.remaining,
        "drain": report.drain.model_dump(mode="json") if report.drain else None,
        "kept": sum(k.keys for k in report.kept),
        "cutoff": report.cutoff.isoformat() if report.cutoff else None,
        "keys_before": report.before.keys if report.before else None,
        "batches": report.batches,
        "pacing_wait_ms": report.pacing_wait_ms,
        "max_batch_ms": report.max_batch_ms,
        "duration_ms": report.duration_ms,
        "engine_wall_s": round(wall, 3),
        "peak_rss_kib": max(hwm_kib, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
        "trend_backlog": [p.remaining for p in report.trend],
    }
    print(json.dumps(out))
    return 0


def _aged_between(url: str, since: str | None, until: str | None) -> int:
    """Keys whose age crossed the cutoff between two runs' cutoffs (by age alone)."""
    if since is None or until is None:
        return 0
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM whatsapp_keys WHERE updated_at >= %s AND updated_at < %s",
            (since, until),
        ).fetchone()
    return int(str(row[0])) if row else 0


def _one_run(
    url: str, budget_s: float, batch_size: int | None, *, dry_run: bool = False
) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.drain", "--child", url, "--budget-s", str(budget_s)]
    if batch_size is not None:
        cmd += ["--batch-size", str(batch_size)]
    if dry_run:
        cmd.append("--dry-run")
    load = _load()
    wal = _wal_lsn(url)
    started = time.monotonic()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["process_wall_s"] = round(time.monotonic() - started, 3)
    figures["wal_bytes"] = _wal_lsn(url) - wal
    figures["load_at_start"], figures["load_at_end"] = load, _load()
    return figures


def drain(url: str, budget_s: float, batch_size: int | None) -> list[dict[str, Any]]:
    """Runs until one completes (at most MAX_RUNS)."""
    runs: list[dict[str, Any]] = []
    while len(runs) < MAX_RUNS:
        r = _one_run(url, budget_s, batch_size)
        runs.append(r)
        log(
            f"run {len(runs)}: {r['status']}, deleted {r['deleted']:,} in {r['process_wall_s']} s, "
            f"remaining {r['remaining']:,}, peak RSS {r['peak_rss_kib'] / 1024:.0f} MiB"
        )
        if r["status"] == "completed":
            break
    return runs


def _size(base_url: str, rows: int, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    """One size: seed, drain, check, and (unless skipped) the single DELETE."""
    log(f"{rows:,} rows: seeding")
    tpl = build_template(base_url, f"drain_tpl_{tag}", rows)
    log(f"seeded {tpl.rows:,} rows ({tpl.old_rows:,} older than the cutoff) in {tpl.seed_s:.0f} s")
    result: dict[str, Any] = {
        "rows": tpl.rows,
        "older_than_cutoff": tpl.old_rows,
        "table_bytes": tpl.table_bytes,
        "total_bytes": tpl.total_bytes,
        "seed_s": round(tpl.seed_s, 1),
    }
    try:
        with (
            _bench_lock(args.lock and tag == "small"),
            fresh_copy(base_url, tpl.name, f"drain_runs_{tag}", timestamp_index=False) as url,
        ):
            runs = drain(url, args.budget_s if tag == "large" else args.small_budget_s, args.batch)
            check = _one_run(url, args.budget_s, args.batch, dry_run=True)
            # Keys keep ageing past the moving cutoff: between the last run and the check, this
            # many crossed it (by age alone, an upper bound of what the rules take of them).
            check["aged_since_last_run"] = _aged_between(url, runs[-1]["cutoff"], check["cutoff"])
        if not args.no_single:
            with (
                _bench_lock(args.lock),
                fresh_copy(base_url, tpl.name, f"drain_single_{tag}", timestamp_index=False) as url,
            ):
                result["single_load_at_start"] = _load()
                wal = _wal_lsn(url)
                single = run_single(url)
                result["single_delete"] = {
                    "deleted": single.deleted,
                    "wall_s": round(single.wall_s, 3),
                    "wal_bytes": _wal_lsn(url) - wal,
                }
                log(f"single DELETE: {single.deleted:,} rows in {single.wall_s:.1f} s")
        result["runs"] = runs
        result["after_dry_run"] = {
            k: check[k] for k in ("eligible", "status", "keys_before", "aged_since_last_run")
        }
        deleted = sum(r["deleted"] for r in runs)
        # Each run's count is the table's own drop (no writer): the next run's keys, the check's.
        chained = all(
            b["keys_before"] == a["keys_before"] - a["deleted"] for a, b in pairwise([*runs, check])
        )
        result["totals"] = {
            "runs": len(runs),
            "completed": runs[-1]["status"] == "completed",
            "deleted": deleted,
            "first_eligible": runs[0]["eligible"],
            # Exact: the counts chain, the drain's total is their sum, and nothing eligible is
            # left but what aged past the cutoff after the last run measured.
            "exact": chained
            and (runs[-1]["drain"] or {}).get("deleted") == deleted
            and check["eligible"] <= check["aged_since_last_run"],
            "aged_during_drain": deleted - runs[0]["eligible"],
            "drain_deleted": (runs[-1]["drain"] or {}).get("deleted"),
            "drain_runs": (runs[-1]["drain"] or {}).get("runs"),
            "lifecycle_kept": runs[0]["kept"],
            "wall_s": round(sum(r["process_wall_s"] for r in runs), 1),
            "wal_bytes": sum(r["wal_bytes"] for r in runs),
            "peak_rss_kib": max(r["peak_rss_kib"] for r in runs),
        }
    finally:
        drop_database(base_url, tpl.name)
    return result


def render(data: dict[str, Any]) -> str:
    large, small = data["large"], data.get("small")
    t = large["totals"]
    lines = [
        f"# Large tables across runs: {large['rows']:,} rows",
        "",
        f"Measured {data['finished_at']} at {data['git'].get('commit', '?')} with "
        f"`{data['command']}` on a private server (stock settings: "
        f"shared_buffers {data['machine'].get('shared_buffers')}, max_wal_size "
        f"{data['machine'].get('max_wal_size')}); {data['machine'].get('nproc')} cores, load at "
        f"start {data['machine'].get('loadavg_at_start')}.",
        "",
        "The exclusive bench lock was held for the single DELETE and the small size's run only, "
        "not for the drain's runs (up to 2 x 900 s): each run's load at start and end is in its "
        "row, and other helpers' tests may have run beside it.",
        "",
        f"Seeded {large['rows']:,} keys, {large['older_than_cutoff']:,} older than the "
        f"{RETENTION_DAYS}-day cutoff; no protected types; the key lifecycle keeps "
        f"{t['lifecycle_kept']:,} of them (pre-keys the server may still hand out and the like), "
        f"so the runs' eligible keys are {t['first_eligible']:,}.",
        "",
        f"Budget per run: {data['budget_s']:g} s of Lambda remaining time (the engine's own "
        "deadline margin taken off), each run a fresh process.",
        "",
        "| run | status | wall s | deleted | remaining | WAL | peak RSS | load start / end |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for i, r in enumerate(large["runs"], start=1):
        lines.append(
            f"| {i} | {r['status']} | {r['process_wall_s']:.1f} | {r['deleted']:,} | "
            f"{r['remaining']:,} | {r['wal_bytes'] / 2**20:,.0f} MiB | "
            f"{r['peak_rss_kib'] / 1024:.0f} MiB | "
            f"{r['load_at_start'][0]} / {r['load_at_end'][0]} |"
        )
    single = large.get("single_delete")
    lines += [
        "",
        f"- Runs: **{t['runs']}** (target: at most 2 of 900 s); completed: {t['completed']}.",
        f"- Deleted over the runs: {t['deleted']:,}; the first run measured "
        f"{t['first_eligible']:,} eligible; the last run's drain says {t['drain_runs']} runs, "
        f"{t['drain_deleted']:,} deleted; a dry run afterwards finds "
        f"{large['after_dry_run']['eligible']:,} eligible, all of them keys that aged past the "
        f"cutoff after the last run measured ({large['after_dry_run']['aged_since_last_run']:,} "
        f"did, by age alone); {t['aged_during_drain']:,} keys aged past it during the drain. "
        f"Exact: **{t['exact']}**.",
        f"- Total wall time {t['wall_s']:,.1f} s, WAL {t['wal_bytes'] / 2**20:,.0f} MiB.",
    ]
    if single:
        lines.append(
            f"- One single DELETE of the keys older than the cutoff ({single['deleted']:,}, the "
            f"lifecycle's kept keys included) on a fresh copy: {single['wall_s']:.1f} s, WAL "
            f"{single['wal_bytes'] / 2**20:,.0f} MiB: the runs took "
            f"**{t['wall_s'] / single['wall_s']:.1f}x** its time."
        )
    if small:
        ratio = t["peak_rss_kib"] / small["totals"]["peak_rss_kib"]
        lines.append(
            f"- Peak RSS: {t['peak_rss_kib'] / 1024:.0f} MiB at {large['rows']:,} rows, "
            f"{small['totals']['peak_rss_kib'] / 1024:.0f} MiB at {small['rows']:,} "
            f"({small['totals']['runs']} run(s), {small['totals']['wall_s']:.1f} s): "
            f"**{ratio:.2f}x** (target: at most 1.1x)."
        )
    backlog = large["runs"][-1].get("trend_backlog") or []
    if backlog:
        lines.append(
            "- The last run's trend (the run history): backlog "
            + " → ".join(f"{n:,}" if n is not None else "-" for n in backlog)
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--small-rows", type=int, default=1_000_000, help="for the RSS ratio")
    p.add_argument("--budget-s", type=float, default=900.0, help="Lambda remaining time per run")
    p.add_argument("--small-budget-s", type=float, default=None)
    p.add_argument("--batch", type=int, default=None, help="CLEANUP_BATCH_SIZE (default: its)")
    p.add_argument("--no-single", action="store_true", help="skip the single DELETE")
    p.add_argument("--no-lock", dest="lock", action="store_false")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--smoke", action="store_true", help="tiny, seconds, 2+ runs forced")
    p.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        # A budget under the engine's margin would leave none: the margin is taken off it.
        args.rows, args.small_rows, args.batch = 5_000, 0, 50
        args.budget_s, args.lock = 1.15, False
    args.small_budget_s = args.small_budget_s or args.budget_s
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args.child, args.budget_s, args.batch_size, args.dry_run)
    found = bin_dir()
    if found is None:
        raise SystemExit("bench.drain needs /usr/lib/postgresql/*/bin/initdb")
    if args.smoke:
        os.environ.setdefault("CLEANUP_DEADLINE_MARGIN_MS", "1000")
    server = Cluster(found).start(standby=False)
    log(f"private server on port {server.primary_port} ({server.root})")
    try:
        base = server.primary_dsn
        data: dict[str, Any] = {
            "command": "python -m bench.drain " + " ".join(argv or sys.argv[1:]),
            "machine": machine_info(base),
            "git": git_state(),
            "budget_s": args.budget_s,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        out = args.out or (
            Path(tempfile.mkdtemp(prefix="drain-smoke-"))
            if args.smoke
            else RESULTS / f"drain-{args.rows // 1_000_000}m"
        )
        out.mkdir(parents=True, exist_ok=True)
        # The large size first: its runs hold no lock, and what it measured is kept at once.
        data["large"] = _size(base, args.rows, "large", args)
        (out / "drain.json").write_text(json.dumps(data, indent=2) + "\n")
        if args.small_rows:
            data["small"] = _size(base, args.small_rows, "small", _no_single(args))
        data["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    finally:
        server.stop()
    (out / "drain.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "drain.md").write_text(render(data))
    print(render(data))
    t = data["large"]["totals"]
    if not t["exact"] or not t["completed"]:
        log("the runs did not drain the table exactly: see the results")
        return 1
    if args.smoke and t["runs"] < 2:
        log("smoke: the drain took 1 run, the resume was not exercised (not a failure)")
    return 0


def _no_single(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "no_single": True})


if __name__ == "__main__":
    sys.exit(main())
