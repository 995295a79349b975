"""Medians per case and the Markdown rendering of a benchmark run (targets: bench/targets.py).

`render_markdown` reads the results file's shape (the JSON written beside it), so an old
results file can be rendered again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from bench import partitioned
from bench.common import Latency, Run, median, mib

Key = tuple[int, str, bool]
ENGINE_MEDIANS = ("max_batch_rows", "pacing_wait_ms", "throttle_wait_ms")


def summarise(runs: list[Run]) -> list[dict[str, Any]]:
    """Median of every figure per (size, variant, index)."""
    groups: dict[Key, list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.key].append(r)
    out = [_summary(key, rs) for key, rs in groups.items()]
    order = {"single": 0, "limit-batches": 1, "ours": 2, "single-part": 3, "ours-part": 4}
    out.sort(key=lambda s: (int(s["size"]), bool(s["index"]), order.get(str(s["variant"]), 9)))
    return out


def _med(rs: list[Run], fn: Callable[[Run], float | None]) -> float:
    return round(median([float(v) for r in rs if (v := fn(r)) is not None]), 2)


def _writer(rs: list[Run], name: str, fn: Callable[[Run], Latency]) -> dict[str, float]:
    return {
        f"{name}_p50_ms": _med(rs, lambda r: fn(r).p50_ms),
        f"{name}_p99_ms": _med(rs, lambda r: fn(r).p99_ms),
        f"{name}_max_ms": _med(rs, lambda r: fn(r).max_ms),
    }


def _summary(key: Key, rs: list[Run]) -> dict[str, Any]:
    size, variant, index = key
    engines = [r.engine for r in rs]
    return {
        "size": size,
        "variant": variant,
        "index": index,
        "runs": len(rs),
        **{
            name: _med(rs, attrgetter(name))
            for name in ("deleted", "wall_s", "delete_s", "delete_rows_per_s", "rows_per_s")
        },
        **{
            name: _med(rs, attrgetter(name))
            for name in ("transactions", "max_txn_ms", "sampled_max_write_txn_ms")
        },
        "sampled_max_any_txn_ms": _med(rs, lambda r: r.sampled_max_any_txn_ms),
        "remaining_old": _med(rs, lambda r: r.remaining_old),
        "wal_mib": _med(rs, lambda r: r.server.wal_mib),
        "checkpoints": _med(rs, lambda r: r.server.checkpoints),
        **_writer(rs, "writer_idle", lambda r: r.writer_idle),
        **_writer(rs, "writer", lambda r: r.writer_during),
        "writer_errors": sum(int(r.writer_during.errors) for r in rs),
        "writer_idle_errors": sum(int(r.writer_idle.errors) for r in rs),
        **{
            name: round(median([float(getattr(e, name)) for e in engines if e]), 2)
            for name in ENGINE_MEDIANS
            if all(e is not None for e in engines)
        },
        "phases": {
            phase: {
                "s": round(median([float(r.phase_s[phase]) for r in rs]), 2),
                "writer_p99_ms": round(median([r.writer_by_phase[phase].p99_ms for r in rs]), 2),
                "writer_max_ms": round(median([r.writer_by_phase[phase].max_ms for r in rs]), 2),
            }
            for phase in rs[0].phase_s
            if all(phase in r.phase_s for r in rs)
        },
    }


# --- Markdown --------------------------------------------------------------------------------


def render_markdown(result: dict[str, Any]) -> str:
    sections: list[Callable[[dict[str, Any]], list[str]]] = [
        _header,
        _targets,
        _variants,
        _phases,
        _waits,
        _measurement,
        _cold_start,
        _pacing_curve,
        _replica,
        partitioned.render,
        _missed,
        _evidence,
    ]
    lines = [line for section in sections for line in section(result)]
    lines.append("")
    return "\n".join(lines)


def _header(result: dict[str, Any]) -> list[str]:
    meta = result["meta"]
    mach = meta["machine"]
    st = meta["settings"]
    git = meta.get("git", {})
    private = (
        " (a server of its own, initdb'd for this run: stock settings, and no other "
        "work's checkpoints)."
        if st.get("private_server")
        else "."
    )
    lines = [
        f"# keys-cleanup benchmark: N = {st['rows']:,}",
        "",
        f"Run {meta['started']} to {meta['finished']} with `{meta['command']}` at commit "
        f"{git.get('commit', '?')} (handler/: {git.get('handler_dirty', '?')}).",
        "",
        f"Machine: {mach.get('nproc')} CPUs ({mach.get('cpu_model', '?')}), "
        f"{mach.get('memory_gib', '?')} GiB RAM, load at start {mach.get('loadavg_at_start')}, "
        f"Python {mach.get('python')}. Shared with other work: every target is a ratio within "
        f"one run, median of {st['runs']} run(s).",
        "",
        f"PostgreSQL: {mach.get('postgres')}; shared_buffers {mach.get('shared_buffers')}, "
        f"max_wal_size {mach.get('max_wal_size')}, max_parallel_workers_per_gather "
        f"{mach.get('max_parallel_workers_per_gather')}, work_mem {mach.get('work_mem')}" + private,
        "",
        f"Data: reference schema, sizes {', '.join(f'{s:,}' for s in st['sizes'])}; key types "
        f"per `handler.schema.KEY_MIX`, JSONB values ~220-380 bytes; retention "
        f"{st['retention_days']} days, ~{st['expected_old_fraction']:.0%} of rows older, "
        "scattered through the heap. Each variant run gets a fresh copy "
        "(CREATE DATABASE ... TEMPLATE, STRATEGY FILE_COPY) and a CHECKPOINT before it starts.",
        "",
        f"Writer: separate process, {st['writer_rate']:.0f} upserts/s over "
        f"{st['writer_connections']} connections (50% new keys, 40% refreshes of recent keys, "
        f"10% refreshes of keys past the cutoff), lock_timeout {st['writer_lock_timeout_ms']} ms; "
        f"latency counted from each write's scheduled start; idle baseline = the same writer "
        f"for {st['idle_seconds']:.0f} s just before the variant. limit-batches LIMIT "
        f"{st['limit_batch_size']}; ours batch size: {st['ours_batch_size']}.",
        "",
    ]
    for note in meta.get("notes", []):
        lines += [f"> Note: {note}", ""]
    for size, tpl in meta.get("templates", {}).items():
        lines.append(
            f"- template {int(size):,} rows: {tpl['old_rows']:,} older than the cutoff "
            f"({tpl['old_rows'] / max(tpl['rows'], 1):.0%}), table "
            f"{mib(tpl['table_bytes'])}, total {mib(tpl['total_bytes'])}, "
            f"seeded in {tpl['seed_s']:.0f} s"
        )
    return lines


def _targets(result: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Targets",
        "",
        "| target | goal | measured | status | miss |",
        "|---|---|---|---|---|",
    ]
    for t in result["targets"]:
        lines.append(
            f"| {t['name']} | {t['target']} | {t['value']} | **{t['status']}** | {t['miss']} |"
        )
    return lines


def _variants(result: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Variants (medians)",
        "",
        "Longest txn: the variant's own figure (client-timed statement; for ours "
        "`report.max_batch_ms`); sampled: the oldest open write transaction seen in "
        "pg_stat_activity every 20 ms (any: read-only transactions too). Old rows left: rows "
        "past the cutoff afterwards (the cutoff moves on while a variant runs; ours also skips "
        "rows the writer holds). WAL and checkpoints: server-wide, during the variant (the "
        "writer's WAL included); WAL B/deleted row = that WAL / deleted rows.",
        "",
        "| rows | variant | ts index | deleted | wall s | rows/s | delete loop s | txns "
        "| longest txn ms | "
        "sampled write / any ms | writer idle p50/p99/max ms | writer during p50/p99/max ms "
        "| writer errors | old rows left | WAL MiB | WAL B/deleted row | checkpoints |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in result["summary"]:
        lines.append(
            f"| {s['size']:,} | {s['variant']} | {'yes' if s['index'] else 'no'} | "
            f"{s['deleted']:,.0f} | {s['wall_s']:.2f} | {s['rows_per_s']:,.0f} | "
            f"{s['delete_s']:.2f} | "
            f"{s['transactions']:,.0f} | {s['max_txn_ms']:,.0f} | "
            f"{s['sampled_max_write_txn_ms']:,.0f} / {s['sampled_max_any_txn_ms']:,.0f} | "
            f"{s['writer_idle_p50_ms']:.1f} / {s['writer_idle_p99_ms']:.1f} / "
            f"{s['writer_idle_max_ms']:.0f} | {s['writer_p50_ms']:.1f} / "
            f"{s['writer_p99_ms']:.1f} / {s['writer_max_ms']:,.0f} | {s['writer_errors']} | "
            f"{s['remaining_old']:,.0f} | {s['wal_mib']:,.0f} | "
            f"{s['wal_mib'] * 2**20 / max(1, s['deleted']):,.0f} | {s['checkpoints']:.0f} |"
        )
    return lines


def _phases(result: dict[str, Any]) -> list[str]:
    phased = [s for s in result["summary"] if s.get("phases")]
    if not phased:
        return []
    lines = [
        "",
        "## ours by phase (medians)",
        "",
        "Phases from the engine's progress callback: measure = before the first batch "
        "(lock, cutoff, sizes, the one measuring pass), delete = the batch loop, after = "
        "the after-run sizes and key count. Writer figures are for writes scheduled in "
        "that phase.",
        "",
        "| rows | ts index | measure s | delete s | after s | writer p99 / max ms: "
        "measure | delete | after |",
        "|---:|---|---:|---:|---:|---|---|---|",
    ]
    for s in phased:
        ph = s["phases"]

        def cell(name: str, ph: dict[str, Any] = ph) -> str:
            if name not in ph:
                return "-"
            return f"{ph[name]['writer_p99_ms']:.1f} / {ph[name]['writer_max_ms']:.0f}"

        def secs(name: str, ph: dict[str, Any] = ph) -> str:
            return f"{ph[name]['s']:.2f}" if name in ph else "-"

        lines.append(
            f"| {s['size']:,} | {'yes' if s['index'] else 'no'} | {secs('measure')} | "
            f"{secs('delete')} | {secs('after')} | {cell('measure')} | {cell('delete')} | "
            f"{cell('after')} |"
        )
    return lines


def _waits(result: dict[str, Any]) -> list[str]:
    waits: dict[Key, dict[str, int]] = {}
    for r in result["runs"]:
        acc = waits.setdefault((int(r["size"]), str(r["variant"]), bool(r["index"])), {})
        for name, n in (r.get("slow_txn_waits") or {}).items():
            acc[name] = acc.get(name, 0) + int(n)
    if not any(waits.values()):
        return []
    lines = [
        "",
        "## What long write transactions waited on",
        "",
        "Samples (every 20 ms, all runs summed) of the deleting session while its write "
        "transaction was older than 100 ms: `cpu` = running, else pg_stat_activity's "
        "wait_event_type:wait_event.",
        "",
        "| rows | variant | ts index | samples |",
        "|---:|---|---|---|",
    ]
    for (size, variant, index), acc in sorted(waits.items()):
        if acc:
            top = ", ".join(f"{k} {v}" for k, v in sorted(acc.items(), key=lambda kv: -kv[1]))
            lines.append(f"| {size:,} | {variant} | {'yes' if index else 'no'} | {top} |")
    return lines


def _measurement(result: dict[str, Any]) -> list[str]:
    m = result.get("measure")
    if not m:
        return []
    if not m.get("available"):
        return ["", "## Measurement phase", "", f"Not measured: {m.get('reason')}"]
    return [
        "",
        "## Measurement phase",
        "",
        f"Engine measurement phase (`{m['function']}`: connect, resolve, lock, clock, "
        f"sizes and the one measuring pass; connection set-up included) "
        f"{m['measure_ms']:.0f} ms vs `SELECT count(*)` as a sequential scan "
        f"{m['count_ms']:.0f} ms on the same {m['rows']:,}-row copy (median of "
        f"{m['repeats']}, alternated, after one warm-up of each): **{m['ratio']:.2f}x**.",
        *_pass_line(m),
    ]


def _pass_line(m: dict[str, Any]) -> list[str]:
    """The measuring pass alone against one scan of the same columns (issue 20 item 5)."""
    if "pass_ratio" not in m:
        return []
    return [
        "",
        f"The measuring pass alone (`handler.db.measure` with the engine's arguments, on an "
        f"engine-like connection: no JIT, max_parallel_workers_per_gather "
        f"{m['parallel_workers']}) {m['pass_ms']:.0f} ms vs one heap scan reading the same "
        f"columns ({', '.join(m['columns'])}) grouped as the pass groups them, "
        f"`{m['scan_sql']}`, {m['scan_ms']:.0f} ms (median of {len(m['pass_ratios'])}, "
        f"alternated, after one warm-up of each): **{m['pass_ratio']:.2f}x**."
        + (
            ""
            if "pass_parallel_scan" not in m
            else " The pass's plan reads the table with a parallel scan."
            if m["pass_parallel_scan"]
            else " The pass's plan reads the table in one process."
        ),
        *_next_day_line(m),
    ]


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def _next_day_line(m: dict[str, Any]) -> list[str]:
    """The same comparison on the table the next day's run meets (`next_day_pass_vs_scan`)."""
    n = m.get("next_day")
    if not n or "keys" not in m:
        return []
    return [
        "",
        f"On this backlog the pass found {m['keys']:,} keys: {_share(m['eligible'], m['keys'])} "
        f"to delete and {_share(m['kept'], m['keys'])} aged but kept by the key lifecycle. "
        f"The next day, after yesterday's run (the engine, live, with one day more of "
        f"retention: {n['yesterday_deleted']:,} keys deleted; then VACUUM ANALYZE), it finds "
        f"{n['keys']:,} keys: {_share(n['eligible'], n['keys'])} to delete and "
        f"{_share(n['kept'], n['keys'])} kept. There the pass takes {n['pass_ms']:.0f} ms "
        f"vs {n['scan_ms']:.0f} ms for the same scan: **{n['pass_ratio']:.2f}x** (median of "
        f"{len(n['pass_ratios'])}).",
    ]


def _cold_start(result: dict[str, Any]) -> list[str]:
    c = result.get("cold_start")
    a = result.get("artifact")
    lines = ["", "## Lambda cold start", ""]
    if c and c.get("available"):
        lines.append(
            f"`import handler.app` {c['app_import_ms']} ms vs its third-party imports alone "
            f"({', '.join(c['third_party'])}) {c['deps_import_ms']} ms, median of "
            f"{c['samples']} fresh interpreters each: **{c['ratio']}x**."
        )
    else:
        lines.append(f"Not measured: {(c or {}).get('reason')}")
    if a and a.get("unzipped_bytes"):
        lines += [
            "",
            f"Artifact ({a['source']}): {mib(a['unzipped_bytes'])} unzipped, "
            f"{mib(a['zipped_bytes'])} zipped.",
        ]
    elif a:
        lines += ["", f"Artifact size not measured: {a.get('reason')}"]
    return lines


def _pacing_curve(result: dict[str, Any]) -> list[str]:
    curve = [
        s
        for s in result["summary"]
        if (s["variant"] == "ours" or str(s["variant"]).startswith("ours-wal=")) and not s["index"]
    ]
    if len(curve) <= 1:
        return []
    lines = [
        "",
        "## Pacing trade-off (medians, no timestamp index)",
        "",
        "`ours` is the default pacing (WAL budget derived from max_wal_size and "
        "checkpoint_timeout, full speed within the headroom before the checkpoint trigger);"
        " `ours-wal=R` sets CLEANUP_WAL_BYTES_PER_S=R (0: unlimited, no pauses). Pacing "
        "wait: the pauses the WAL budget made, the cost of the pacing in run time.",
        "",
        "| rows | pacing | wall s | writer p99 ms (idle) | writer max ms | longest txn ms "
        "| pacing wait s | largest batch rows | WAL MiB | checkpoints |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sorted(curve, key=lambda s: (int(s["size"]), float(s["wall_s"]))):
        lines.append(
            f"| {s['size']:,} | {s['variant']} | {s['wall_s']:.1f} | "
            f"{s['writer_p99_ms']:.1f} ({s['writer_idle_p99_ms']:.1f}) | "
            f"{s['writer_max_ms']:,.0f} | {s['max_txn_ms']:,.0f} | "
            f"{float(s.get('pacing_wait_ms', 0)) / 1000:.1f} | "
            f"{s.get('max_batch_rows', 0):,.0f} | {s['wal_mib']:,.0f} | "
            f"{s['checkpoints']:.0f} |"
        )
    return lines


def _replica(result: dict[str, Any]) -> list[str]:
    rep = result.get("replica")
    if not rep:
        return []
    lines = ["", "## Replica lag with a streaming standby", ""]
    if not rep.get("available"):
        return [*lines, f"Not measured: {rep.get('reason')}"]
    lines += [
        f"A primary and a streaming standby of their own (system binaries, stock settings, "
        f"wal_level logical), {int(rep['rows']):,} rows, no writer; replay lag = primary's "
        "WAL insert position - the standby's replay_lsn, sampled every 20 ms. Limit: "
        f"CLEANUP_MAX_REPLICA_LAG_BYTES = {mib(rep['limit_bytes'])} (default).",
        "",
        "| variant | wall s | max replay lag | WAL | WAL per txn | caught up after s "
        "| throttle waits |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in ("single", "ours"):
        e = rep.get(variant)
        if e:
            lines.append(
                f"| {variant} | {e['wall_s']:.2f} | {mib(e['max_lag_bytes'])} | "
                f"{mib(e['wal_bytes'])} | {mib(e.get('wal_per_txn_bytes', 0))} | "
                f"{e['catch_up_s']:.2f} | {e.get('throttle_waits', '-')} |"
            )
    return lines


def _missed(result: dict[str, Any]) -> list[str]:
    failed = [t for t in result["targets"] if t["status"] == "FAIL"]
    if not failed:
        return []
    keys = list((result.get("evidence") or {}).keys())
    lines = ["", "## Missed targets", ""]
    for t in failed:
        refs = ", ".join(
            f"[{k}](#evidence-{keys.index(k)})" for k in t.get("evidence", []) if k in keys
        )
        lines.append(
            f"- **{t['name']}**: measured {t['value']}; {t['miss']}. Per run: "
            f"{t['per_run']}." + (f" Evidence: {refs}." if refs else "")
        )
    return lines


def _evidence(result: dict[str, Any]) -> list[str]:
    evidence = result.get("evidence") or {}
    if not evidence:
        return []
    lines = ["", "## Evidence: EXPLAIN (ANALYZE, BUFFERS)", ""]
    for i, (key, blocks) in enumerate(evidence.items()):
        lines += [f'<a id="evidence-{i}"></a>', "", f"### {key}", ""]
        for block in blocks:
            lines += ["```", block.rstrip(), "```", ""]
    return lines
