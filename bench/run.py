"""Benchmark runner: `uv run python -m bench.run --rows 1000000` (see bench/README.md).

For each size (N and 4xN) it seeds one template database, then gives every variant run a
fresh copy of it, with a Baileys-like writer in a separate process measured alone (idle) and
during the delete. Results: bench/results/bench-<N>.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench import coldstart, measure, partitioned, replica, stalls
from bench.common import (
    RETENTION_DAYS,
    Run,
    ServerDelta,
    cutoff_predicate,
    drop_database,
    latency_summary,
    log,
)
from bench.data import AGE_SCALE, Template, build_template, expected_old_fraction, fresh_copy
from bench.evidence import collect as collect_evidence
from bench.report import render_markdown, summarise
from bench.targets import evaluate_targets
from bench.variants import Outcome, TxnSampler, run_limit_batches, run_ours, run_single
from bench.writer import WriterConfig, run_writer, sample_keys
from handler.schema import REFERENCE_TABLE
from tools.pgcluster import Cluster, bin_dir

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ALL_VARIANTS = ("single", "limit-batches", "ours")
# The engine with CLEANUP_WAL_BYTES_PER_S set: points of the pacing trade-off curve.
CURVE_PREFIX = "ours-wal="
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Case:
    size: int
    variant: str
    index: bool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    _case_args(p)
    _writer_args(p)
    _server_args(p)
    stalls.add_args(p)
    args = p.parse_args(argv)
    if args.through_vacuum and args.wal_stats:
        p.error("--through-vacuum or --wal-stats, not both (--wal-stats VACUUMs the table)")
    if args.server_setting and not args.private_server:
        p.error("--server-setting needs --private-server (it changes the server's settings)")
    if args.smoke:
        args.rows = 20_000 if args.rows == 1_000_000 else args.rows
        args.runs = 1
        args.idle_seconds = min(args.idle_seconds, 1.0)
        args.cold_samples = min(args.cold_samples, 2)
        args.no_artifact = True
        args.batch_size = min(args.batch_size, 2000)
        args.partitions = 8 if args.partitions is None else args.partitions
    args.partitions = args.partitions or 0
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="bench-smoke-")) if args.smoke else RESULTS_DIR
    return args


def _case_args(p: argparse.ArgumentParser) -> None:
    """Sizes, runs, variants and their batch sizes."""
    p.add_argument("--rows", type=int, default=1_000_000, help="N, rows of the base table")
    p.add_argument("--scale", type=int, default=4, help="also run at SCALE x N (0: skip)")
    p.add_argument("--runs", type=int, default=3, help="runs per case; medians are reported")
    p.add_argument("--variants", default=",".join(ALL_VARIANTS))
    p.add_argument(
        "--large-variants",
        default=",".join(ALL_VARIANTS),
        help="variants run at SCALE x N (always without the timestamp index)",
    )
    p.add_argument("--batch-size", type=int, default=5000, help="LIMIT of limit-batches")
    p.add_argument(
        "--ours-batch-size",
        type=int,
        default=None,
        help="CLEANUP_BATCH_SIZE for the engine (default: the engine's own)",
    )
    p.add_argument(
        "--pacing-curve",
        default="0,16000000,8000000",
        help="CLEANUP_WAL_BYTES_PER_S values (0: unlimited) run as extra `ours` variants at "
        "the largest size, beside the default pacing: the trade-off curve ('' skips)",
    )
    p.add_argument(
        "--replica-rows",
        type=int,
        default=None,
        help="rows for the replica-lag comparison on a primary + standby (default: N; 0 skips)",
    )
    p.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="at N, also run single and ours on the same rows hash-partitioned by company_id "
        "into this many leaves, and check that both delete the same keys (issue 20; default: "
        "0, off; 8 with --smoke)",
    )
    p.add_argument(
        "--no-index-only",
        action="store_true",
        help="at N too, run only without the timestamp index (as at 4xN)",
    )


def _writer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--writer-rate", type=float, default=200.0, help="writer upserts per second")
    p.add_argument("--writer-connections", type=int, default=8)
    p.add_argument(
        "--writer-lock-timeout-ms",
        type=int,
        default=0,
        help="lock_timeout of the writer's sessions (0: wait, like a default pool)",
    )
    p.add_argument(
        "--idle-seconds",
        type=float,
        default=10.0,
        help="writer alone before each variant (its idle baseline)",
    )


def _server_args(p: argparse.ArgumentParser) -> None:
    """The server, the extras (cold start, artifact, evidence) and the output."""
    p.add_argument("--cold-samples", type=int, default=10)
    p.add_argument("--no-artifact", action="store_true", help="do not build the artifact")
    p.add_argument(
        "--no-evidence",
        action="store_true",
        help="skip the EXPLAIN evidence runs for missed targets",
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL),
        help="maintenance database of a server where we may CREATE DATABASE",
    )
    p.add_argument(
        "--private-server",
        action="store_true",
        help="run on a PostgreSQL of its own (initdb in a temporary directory, stock settings,"
        " system binaries) instead of --database-url: other work's checkpoints stay out",
    )
    p.add_argument(
        "--server-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="with --private-server: ALTER SYSTEM SET NAME = VALUE and reload before the run "
        "(repeatable; a setting that needs a restart is refused), e.g. wal_compression=lz4",
    )
    p.add_argument("--out", type=Path, default=None, help="results directory")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny table, one run, short idle: a CI check that everything runs",
    )


def machine_info(base_url: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    with psycopg.connect(base_url) as conn:
        info["postgres"] = str((conn.execute("SELECT version()").fetchone() or ("?",))[0])
        for name in (
            "shared_buffers",
            "max_wal_size",
            "max_parallel_workers_per_gather",
            "work_mem",
            "synchronous_commit",
        ):
            row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
            info[name] = str(row[0]) if row else None
    return info


def git_state() -> dict[str, str]:
    """The commit measured, and whether the engine's files differed from it."""

    def git(*cmd: str) -> str:
        out = subprocess.run(
            ["git", *cmd],
            cwd=RESULTS_DIR.parent.parent,
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "handler_dirty": git("status", "--porcelain", "--", "handler") or "clean",
    }


def server_counters(base_url: str) -> dict[str, Any]:
    """Server-wide WAL position and checkpoint counters (other sessions' work included)."""
    with psycopg.connect(base_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_current_wal_lsn()::text, checkpoints_timed + checkpoints_req,"
            " buffers_backend FROM pg_stat_bgwriter"
        ).fetchone()
    if row is None:
        return {}
    return {"lsn": str(row[0]), "checkpoints": int(str(row[1])), "backend_writes": int(str(row[2]))}


def counters_delta(base_url: str, before: dict[str, Any]) -> ServerDelta:
    after = server_counters(base_url)
    with psycopg.connect(base_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (after["lsn"], before["lsn"])
        ).fetchone()
    return ServerDelta(
        wal_mib=round(float(str(row[0] if row else 0)) / 2**20, 1),
        checkpoints=after["checkpoints"] - before["checkpoints"],
        backend_buffer_writes=after["backend_writes"] - before["backend_writes"],
    )


def count_old(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
                sql.Identifier(REFERENCE_TABLE), cutoff_predicate()
            )
        ).fetchone()
    return int(str(row[0])) if row else 0


def variant_fn(args: argparse.Namespace, variant: str) -> Callable[[str], Outcome]:
    variant = partitioned.base(variant)  # the same variant on the partitioned copy
    if variant == "single":
        return run_single
    if variant == "limit-batches":
        return lambda url: run_limit_batches(url, args.batch_size)
    if variant == "ours":
        return lambda url: run_ours(url, args.ours_batch_size)
    if variant.startswith(CURVE_PREFIX):
        env = {"CLEANUP_WAL_BYTES_PER_S": variant.removeprefix(CURVE_PREFIX)}
        return lambda url: run_ours(url, args.ours_batch_size, env)
    raise ValueError(f"unknown variant {variant}")


@dataclass(frozen=True)
class Timed:
    """One variant on its copy, with the writer beside it: what run_case turns into a Run."""

    outcome: Outcome
    sampler: TxnSampler
    server: ServerDelta
    ops: list[list[Any]]  # the writer's (scheduled_t, latency_s, kind, error)
    idle_from: float
    started: float
    ended: float
    remaining_old: int
    diagnostics: dict[str, Any] = field(default_factory=dict)


def run_case(
    args: argparse.Namespace,
    prefix: str,
    template: Template,
    case: Case,
    *,
    run_no: int,
    workdir: Path,
) -> Run:
    name = f"{prefix}_{case.size}_{case.variant.replace('-', '')}_{int(case.index)}_{run_no}"
    with fresh_copy(args.database_url, template.name, name, timestamp_index=case.index) as url:
        timed = _with_writer(args, case, name, url, run_no=run_no, workdir=workdir)
    result = _figures(case, run_no, timed)
    o, server = timed.outcome, timed.server
    log(
        f"{case.variant:14} idx={int(case.index)} n={case.size:>9} run {run_no}: "
        f"{o.wall_s:7.2f}s {result.rows_per_s} rows/s, {o.transactions} txns, "
        f"max txn {o.max_txn_ms:.0f} ms; writer p99 "
        f"{result.writer_idle.p99_ms} -> {result.writer_during.p99_ms} ms, "
        f"errors {result.writer_during.errors}; WAL {server.wal_mib} MiB, "
        f"{server.checkpoints} checkpoints"
    )
    return result


def _with_writer(
    args: argparse.Namespace, case: Case, name: str, url: str, *, run_no: int, workdir: Path
) -> Timed:
    """The writer alone for --idle-seconds, then the variant beside it, on one copy."""
    diag = stalls.Diagnostics(args, url, name, workdir)
    recent, old = sample_keys(url, RETENTION_DAYS)
    # fork is ~1.4 s faster per case than spawn, and safe here: no thread and no
    # connection is open in this process at this point (spawn is the fallback if one is).
    ctx = mp.get_context("fork") if threading.active_count() == 1 else mp.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Event()
    out_path = workdir / f"{name}.json"
    cfg = WriterConfig(
        url=url,
        rate=args.writer_rate,
        connections=args.writer_connections,
        recent=recent,
        old=old,
        out_path=str(out_path),
        lock_timeout_ms=args.writer_lock_timeout_ms,
        seed=run_no,
        run_id=name,
    )
    writer = ctx.Process(target=run_writer, args=(cfg, stop, ready), daemon=True)
    writer.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("writer did not start")
        diag.writer_started(ctx)
        diag.mark("idle")
        t_idle = time.monotonic()
        time.sleep(args.idle_seconds)
        counters = server_counters(args.database_url)
        diag.mark("variant")
        t0 = time.monotonic()
        with TxnSampler(args.database_url, name) as sampler:
            outcome = variant_fn(args, case.variant)(url)
        t1 = time.monotonic()
        diag.mark("after")
        server = counters_delta(args.database_url, counters)
        diag.follow_vacuum(t0, t1)  # --through-vacuum: the writer goes on, still timed
    finally:
        stop.set()
        writer.join(120)
    if writer.exitcode != 0:
        raise RuntimeError(f"writer exited with {writer.exitcode}")
    diag.writer_stopped()
    ops = json.loads(out_path.read_text())
    remaining = count_old(url)
    return Timed(
        outcome, sampler, server, ops, t_idle, t0, t1, remaining, diag.result(ops, outcome.deleted)
    )


def _figures(case: Case, run_no: int, timed: Timed) -> Run:
    o, sampler, ops = timed.outcome, timed.sampler, timed.ops
    # single and limit-batches are all delete; ours' loop comes from its progress ticks.
    delete_s = o.delete_s or o.wall_s
    return Run(
        size=case.size,
        variant=case.variant,
        index=case.index,
        run=run_no,
        deleted=o.deleted,
        wall_s=round(o.wall_s, 3),
        rows_per_s=round(o.deleted / o.wall_s) if o.wall_s > 0 else None,
        transactions=o.transactions,
        max_txn_ms=round(o.max_txn_ms, 1),
        sampled_max_write_txn_ms=round(sampler.max_write_ms, 1),
        sampled_max_any_txn_ms=round(sampler.max_any_ms, 1),
        sampled_max_background_write_txn_ms=round(sampler.max_background_write_ms, 1),
        slow_txn_waits=dict(sorted(sampler.slow_waits.items(), key=lambda kv: -kv[1])),
        delete_s=round(delete_s, 3),
        delete_rows_per_s=round(o.deleted / delete_s),
        phase_s={k: round(b - a, 3) for k, (a, b) in o.phases.items()},
        remaining_old=timed.remaining_old,
        server=timed.server,
        writer_idle=latency_summary([op for op in ops if timed.idle_from <= op[0] < timed.started]),
        writer_during=latency_summary([op for op in ops if timed.started <= op[0] <= timed.ended]),
        writer_by_phase={
            phase: latency_summary([op for op in ops if a <= op[0] < b])
            for phase, (a, b) in o.phases.items()
        },
        engine=o.engine,
        diagnostics=timed.diagnostics,
    )


def cases_for(args: argparse.Namespace, size: int, variants: list[str]) -> list[Case]:
    cases = [Case(size, v, False) for v in variants]
    if size == args.rows and not args.no_index_only:
        cases = [Case(size, v, index) for index in (False, True) for v in variants]
    if size == args.rows:
        cases = partitioned.with_partitioned(
            cases, args.partitions, lambda v, index: Case(size, v, index)
        )
    largest = args.rows * max(args.scale, 1)
    if size == largest and "ours" in variants:
        curve = [v.strip() for v in args.pacing_curve.split(",") if v.strip()]
        cases += [Case(size, f"{CURVE_PREFIX}{v}", False) for v in curve]
    return cases


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.private_server:
        return run(args)
    found = bin_dir()
    if found is None:
        raise SystemExit("--private-server needs /usr/lib/postgresql/*/bin/initdb")
    server = Cluster(found).start(standby=False)
    log(f"private server on port {server.primary_port} ({server.root})")
    try:
        args.database_url = server.primary_dsn
        apply_server_settings(args.database_url, args.server_setting)
        args.pg_log = server.root / "primary.log"
        return run(args)
    finally:
        server.stop()


def parse_setting(text: str) -> tuple[str, str]:
    """`NAME=VALUE` -> (name, value); a name is letters, digits, `_` and `.` only."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name or not all(ch.isalnum() or ch in "_." for ch in name):
        raise SystemExit(f"--server-setting wants NAME=VALUE, got {text!r}")
    return name, value.strip()


def apply_server_settings(url: str, settings: list[str]) -> None:
    """ALTER SYSTEM SET each one on the private server and reload; refuse one that would need
    a restart (it would silently not apply)."""
    if not settings:
        return
    with psycopg.connect(url, autocommit=True) as conn:
        for text in settings:
            name, value = parse_setting(text)
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
            )
        conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)
        for text in settings:
            name, _ = parse_setting(text)
            row = conn.execute(
                "SELECT setting, pending_restart FROM pg_settings WHERE name = %s", (name,)
            ).fetchone()
            if row is None or row[1]:
                raise SystemExit(f"--server-setting {name}: unknown, or needs a restart")
            log(f"private server: {name} = {row[0]}")


@dataclass
class Plan:
    """What one invocation runs, and what it has measured so far (kept if it fails)."""

    variants: list[str]
    large_variants: list[str]
    sizes: list[int]
    prefix: str
    meta: dict[str, Any]
    templates: dict[int, Template] = field(default_factory=dict)
    part_template: Template | None = None  # --partitions: the same rows, partitioned
    runs: list[Run] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def plan(args: argparse.Namespace) -> Plan:
    variants = [v for v in args.variants.split(",") if v]
    large_variants = [v for v in args.large_variants.split(",") if v in variants]
    notes: list[str] = []
    if "ours" in variants and importlib.util.find_spec("handler.cleanup") is None:
        notes.append("handler/cleanup.py does not exist yet: variant `ours` was not run")
        variants.remove("ours")
        large_variants = [v for v in large_variants if v != "ours"]
    for v in variants:
        if v not in ALL_VARIANTS:
            raise SystemExit(f"unknown variant {v}")
    sizes = [args.rows] + ([args.rows * args.scale] if args.scale > 0 else [])
    meta: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.run " + " ".join(sys.argv[1:]),
        "machine": machine_info(args.database_url),
        "git": git_state(),
        "settings": _settings(args, sizes, variants, large_variants),
        "notes": notes,
    }
    return Plan(variants, large_variants, sizes, f"bench_{os.getpid()}", meta)


def _settings(
    args: argparse.Namespace, sizes: list[int], variants: list[str], large_variants: list[str]
) -> dict[str, Any]:
    return {
        "rows": args.rows,
        "sizes": sizes,
        "runs": args.runs,
        "variants": variants,
        "large_variants": large_variants,
        "limit_batch_size": args.batch_size,
        "ours_batch_size": args.ours_batch_size or "engine default",
        "pacing_curve": args.pacing_curve,
        "no_index_only": args.no_index_only,
        "partitions": args.partitions,
        "private_server": args.private_server,
        "server_settings": ", ".join(args.server_setting),
        "through_vacuum": args.through_vacuum_cap if args.through_vacuum else False,
        "retention_days": RETENTION_DAYS,
        "age_scale": AGE_SCALE,
        "expected_old_fraction": round(expected_old_fraction(), 3),
        "writer_rate": args.writer_rate,
        "writer_connections": args.writer_connections,
        "writer_lock_timeout_ms": args.writer_lock_timeout_ms,
        "idle_seconds": args.idle_seconds,
        "smoke": args.smoke,
    }


def run(args: argparse.Namespace) -> int:
    p = plan(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{'smoke' if args.smoke else 'bench'}-{args.rows}"
    log(f"bench: sizes {p.sizes}, runs {args.runs}, variants {p.variants}; out {args.out}")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-writer-") as tmp:
            for size in p.sizes:
                _run_size(args, p, size, Path(tmp))
            _measure_extras(args, p)
            summary = summarise(p.runs)
            targets = evaluate_targets(args.rows, p.sizes, p.runs, p.extra)
            if not args.no_evidence and not args.smoke:
                p.extra["evidence"] = collect_evidence(args, p.prefix, p.templates, targets, log)
    except BaseException:
        # Keep what was measured: a crash an hour in should not cost the finished runs.
        crash = args.out / f"{stem}.partial.json"
        runs = [r.to_json() for r in p.runs]
        crash.write_text(json.dumps({"meta": p.meta, "runs": runs, **p.extra}, default=str))
        log(f"failed; finished runs kept in {crash}")
        raise
    finally:
        for tpl in [*p.templates.values(), *([p.part_template] if p.part_template else [])]:
            drop_database(args.database_url, tpl.name)
    p.meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    result = {
        "meta": p.meta,
        "summary": summary,
        "targets": [t.to_json() for t in targets],
        "runs": [r.to_json() for r in p.runs],
        **p.extra,
    }
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.out / f"{stem}.md").write_text(render_markdown(result) + stalls.render(result))
    log(f"wrote {args.out / (stem + '.md')} and .json")
    for t in targets:
        log(f"{t.status:4} {t.name}: {t.value}")
    return 0


def _run_size(args: argparse.Namespace, p: Plan, size: int, workdir: Path) -> None:
    """Seed the template of one size, then every case of it, --runs times."""
    log(f"seeding template with {size} rows")
    tpl = build_template(args.database_url, f"{p.prefix}_tpl_{size}", size)
    p.templates[size] = tpl
    log(
        f"template ready in {tpl.seed_s:.1f}s: {tpl.rows} rows, "
        f"{tpl.old_rows} older than the cutoff, {tpl.total_bytes >> 20} MiB"
    )
    if args.partitions and size == args.rows:
        p.part_template = _partitioned_template(args, p, tpl)
    size_variants = p.variants if size == args.rows else p.large_variants
    for run_no in range(1, args.runs + 1):
        for case in cases_for(args, size, size_variants):
            on = p.part_template if partitioned.is_part(case.variant) else tpl
            p.runs.append(run_case(args, p.prefix, on or tpl, case, run_no=run_no, workdir=workdir))
    if p.part_template is not None and size == args.rows and "ours" in size_variants:
        log("partitioned: exactness without the writer, and the per-batch lock's cost")
        ex = partitioned.exactness(
            args.database_url, tpl.name, p.part_template.name, p.prefix, args.ours_batch_size
        )
        p.extra["partitioned"]["exactness"] = ex
        deleted = {k: r["deleted"] for k, r in ex["runs"].items()}
        log(f"partitioned: {'exact' if ex['exact'] else 'NOT exact'}, deleted {deleted}")


def _partitioned_template(args: argparse.Namespace, p: Plan, tpl: Template) -> Template:
    """The plain template's rows, hash-partitioned (bench/partitioned.py)."""
    log(f"partitioned template: {args.partitions} hash partitions by company_id")
    part = partitioned.build_template(
        args.database_url, tpl, f"{p.prefix}_tpl_{tpl.rows}_part", args.partitions
    )
    p.extra["partitioned"] = {
        "partitions": args.partitions,
        "template_s": round(part.seed_s, 1),
        "template_check": f"{part.rows:,} rows, {part.old_rows:,} old, same identity hash",
        "template": asdict(part),
    }
    log(f"partitioned template ready in {part.seed_s:.1f}s: {part.total_bytes >> 20} MiB")
    return part


def _measure_extras(args: argparse.Namespace, p: Plan) -> None:
    """The measuring pass against count(*), the replica lag, the cold start, the artifact."""
    if "ours" in p.variants:
        log("measurement phase vs count(*)")
        p.extra["measure"] = measure.measure_vs_count(
            args.database_url, p.templates[args.rows].name, f"{p.prefix}_measure", repeats=args.runs
        )
    replica_rows = args.rows if args.replica_rows is None else args.replica_rows
    if "ours" in p.variants and replica_rows > 0:
        p.extra["replica"] = replica.measure(replica_rows, log)
    log("cold start")
    p.extra["cold_start"] = coldstart.measure(args.cold_samples)
    p.extra["artifact"] = coldstart.artifact_size(build=not args.no_artifact)
    p.meta["templates"] = {str(k): asdict(v) for k, v in p.templates.items()}


if __name__ == "__main__":
    raise SystemExit(main())
