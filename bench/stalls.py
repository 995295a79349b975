"""`--waits` and `--wal-stats` (issue 20 items 3 and 4): one variant run's diagnostics.

`Diagnostics` is what `run._with_writer` calls at its points (writer up, variant start and
end, writer stopped): the 10 ms wait sampler (`bench.waits`), the WAL decoder
(`bench.walstats`) with its marks, and at the end a plain VACUUM of the table so that both
variants are also measured until their dead rows are vacuumed. Its `result` goes into the
run's `diagnostics`.
"""

from __future__ import annotations

import argparse
import os
import time
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import psycopg

from bench import vacuumtail, waits, walstats
from bench.explain import DEFAULT_SERVER_LOG
from handler.schema import REFERENCE_TABLE


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--waits",
        action="store_true",
        help="sample the writer's wait events every 10 ms and line its slow writes up with "
        "checkpoints and autovacuum (bench/waits.py)",
    )
    p.add_argument(
        "--wal-stats",
        action="store_true",
        help="attribute each variant's WAL by record type with pg_walinspect, and VACUUM the "
        "table after it (bench/walstats.py)",
    )
    p.add_argument(
        "--through-vacuum",
        action="store_true",
        help="keep the writer running and timed after each variant until the autovacuum its "
        "deletes trigger has vacuumed the table (or --through-vacuum-cap); its figures per "
        "stretch, deletes and after, with a vacuum running or not (bench/vacuumtail.py; not "
        "with --wal-stats, whose own VACUUM would take autovacuum's place)",
    )
    p.add_argument(
        "--through-vacuum-cap",
        type=float,
        default=vacuumtail.DEFAULT_CAP_S,
        help="longest the writer is kept after a variant with --through-vacuum (seconds)",
    )


def server_log(args: argparse.Namespace) -> Path | None:
    explicit = getattr(args, "pg_log", None)
    if explicit is not None:
        return Path(explicit)
    return Path(os.environ.get("BENCH_PG_LOG", DEFAULT_SERVER_LOG))


class Diagnostics:
    """The sampler process and the WAL decoder around one variant run (both optional)."""

    def __init__(self, args: argparse.Namespace, url: str, dbname: str, workdir: Path) -> None:
        self.args = args
        self.url = url
        self.dbname = dbname
        self.on = bool(args.waits or args.wal_stats)
        self.samples_path = workdir / f"{dbname}.waits.json"
        self.proc: BaseProcess | None = None
        self.ws: walstats.WalStats | None = None
        self.t: dict[str, float] = {}
        self.epoch: dict[str, float] = {}
        self.vacuum_s: float | None = None
        through = bool(getattr(args, "through_vacuum", False))
        self.watch = vacuumtail.VacuumWatch(url) if through else None
        self.tail: vacuumtail.Tail | None = None
        self.deletes: tuple[float, float] | None = None
        self.on = self.on or through
        if self.on:
            waits.log_table_vacuums(url)

    def writer_started(self, ctx: BaseContext) -> None:
        """Right after the writer process: the sampler process (forked before any thread or
        connection of ours exists), then the WAL decoder and its first mark."""
        if self.args.waits:
            self.stop, ready = ctx.Event(), ctx.Event()
            sampler_args = (self.args.database_url, self.dbname, str(self.samples_path))
            proc: BaseProcess = ctx.Process(  # type: ignore[attr-defined]
                target=waits.run_sampler, args=(*sampler_args, self.stop, ready), daemon=True
            )
            self.proc = proc
            proc.start()
            if not ready.wait(60):
                raise RuntimeError("wait sampler did not start")
        if self.args.wal_stats:
            self.ws = walstats.WalStats(self.url)
        if self.watch is not None:
            self.watch.start()

    def mark(self, label: str) -> None:
        if not self.on:
            return
        self.t[label] = time.monotonic()
        self.epoch[label] = time.time()
        if self.ws is not None:
            self.ws.mark(label)

    def follow_vacuum(self, started: float, ended: float) -> None:
        """--through-vacuum: the writer goes on after the variant (`started`..`ended`) until
        the table's autovacuum is done (bench/vacuumtail.py)."""
        if self.watch is None:
            return
        self.deletes = (started, ended)
        self.tail = self.watch.follow(ended, self.args.through_vacuum_cap)
        self.mark("tail_end")

    def writer_stopped(self) -> None:
        """Stop the sampler; VACUUM the table (the WAL until clean); stop the decoder."""
        if self.watch is not None:
            self.watch.stop()
        if self.proc is not None:
            self.stop.set()
            self.proc.join(120)
        if self.ws is not None:
            self.mark("vacuum")
            self.vacuum_s = walstats.vacuum_table(self.url)
            self.mark("end")
            self.ws.finish()

    def result(self, ops: list[list[Any]], deleted: int) -> dict[str, Any]:
        if not self.on:
            return {}
        out: dict[str, Any] = {}
        window = (self.t["variant"], self.t["after"])
        relid = _table_relid(self.url)
        if self.proc is not None and self.samples_path.exists():
            samples = waits.load(self.samples_path)
            out["waits"] = waits.align(ops, samples, window, table=(self.dbname, relid))
            out["waits"]["samples"] = len(samples)
            out["waits"]["timeline"] = waits.timeline(samples, window, table=(self.dbname, relid))
            last = self.epoch.get("tail_end", self.epoch["after"])
            out["waits"]["server_log"] = waits.log_lines(
                server_log(self.args), (self.epoch["idle"], last)
            )
            if "tail_end" in self.t:
                tail = (window[1], self.t["tail_end"])
                out["waits_tail"] = waits.align(ops, samples, tail, table=(self.dbname, relid))
        if self.watch is not None and self.tail is not None and self.deletes is not None:
            out["through_vacuum"] = self.watch.report(ops, self.deletes, self.tail)
        if self.ws is not None:
            out["wal"] = walstats.report(
                self.ws,
                deleted=deleted,
                idle_s=self.t["variant"] - self.t["idle"],
                variant_s=self.t["after"] - self.t["variant"],
            )
            out["wal"]["vacuum_after_s"] = round(self.vacuum_s or 0.0, 2)
        return out


def _table_relid(url: str) -> int | None:
    """The key table's oid; None for a partitioned one (its leaves are vacuumed, not it)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT oid, relkind FROM pg_class WHERE oid = %s::regclass", (REFERENCE_TABLE,)
        ).fetchone()
    return int(row[0]) if row and row[1] == "r" else None


# --- the results file's section -----------------------------------------------------------------


def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f}"


def render(result: dict[str, Any]) -> str:
    """Markdown for the runs that carry diagnostics ('' when none does)."""
    runs = [r for r in result.get("runs", []) if r.get("diagnostics")]
    if not runs:
        return ""
    out = ["", "## Writer stalls and WAL (--waits, --wal-stats)", ""]
    server = result.get("meta", {}).get("settings", {}).get("server_settings")
    if server:
        out += [f"Server settings changed for this run: {server}.", ""]
    out += _wal_table(runs) + _wait_table(runs) + vacuumtail.render(runs)
    for r in runs:
        wal = r["diagnostics"].get("wal")
        if wal:
            out += _attribution(r, wal)
    return "\n".join(out) + "\n"


def _name(r: dict[str, Any]) -> str:
    return f"{r['size']:,} {r['variant']}{' idx' if r['index'] else ''} run {r['run']}"


def _wal_table(runs: list[dict[str, Any]]) -> list[str]:
    rows = [r for r in runs if r["diagnostics"].get("wal")]
    if not rows:
        return []
    out = [
        "WAL per variant. Raw: the server's WAL position before and after the variant (the "
        "issue's figure). Decoded: pg_walinspect over the same window. Until vacuumed: the "
        "window plus a plain VACUUM of the table right after it (writer stopped), so both "
        "variants end with their dead rows vacuumed. Less writer: minus the writer's WAL at "
        "its idle rate over the window. Bytes per deleted row beside each.",
        "",
        "| run | deleted | wall s | raw MiB (B/row) | decoded MiB (B/row) | FPI MiB "
        "| until vacuumed MiB (B/row) | less writer: window / until vacuumed B/row "
        "| VACUUM after s | lost MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        w = r["diagnostics"]["wal"]
        d = w["decoded"]
        per = w["bytes_per_deleted_row"]
        raw = r["server"]["wal_mib"] * 2**20
        deleted = max(1, r["deleted"])
        out.append(
            f"| {_name(r)} | {r['deleted']:,} | {r['wall_s']:.1f} "
            f"| {_mib(raw)} ({raw / deleted:,.0f}) "
            f"| {_mib(d['variant']['total_bytes'])} ({per['window']:,.0f}) "
            f"| {_mib(d['variant']['fpi_bytes'])} "
            f"| {_mib(d['until_vacuumed']['total_bytes'])} ({per['until_vacuumed']:,.0f}) "
            f"| {per['window_less_writer_idle_rate']:,.0f} / "
            f"{per['until_vacuumed_less_writer_idle_rate']:,.0f} "
            f"| {w['vacuum_after_s']} | {_mib(sum(w['lost_bytes'].values()))} |"
        )
    return [*out, ""]


def _wait_table(runs: list[dict[str, Any]]) -> list[str]:
    rows = [(r, key) for r in runs for key in ("waits", "waits_tail") if r["diagnostics"].get(key)]
    if not rows:
        return []
    out = [
        f"Slow writes (>= {waits.SLOW_MS:.0f} ms from their scheduled start) lined up with the "
        "10 ms samples of their backend while they ran (`cpu` = active, not waiting; `idle` = "
        "the backend had not got the statement yet: queueing or client-side), and what the "
        "server did meanwhile (samples).",
        "",
        "| run | writer max ms | writes | slow | > 150 ms | max queued / exec ms "
        "| waits of slow writes | blockers | server meanwhile | old-key refreshes |",
        "|---|---:|---:|---:|---:|---|---|---|---|---|",
    ]
    for r, key in rows:
        w = r["diagnostics"][key]
        name, top = _name(r), r["writer_during"]["max_ms"]
        if key == "waits_tail":  # --through-vacuum: the stretch after the variant
            name, top = f"{name}, after", r["diagnostics"]["through_vacuum"]["writer"]["after"]
            top = top["max_ms"]

        def fmt(d: dict[str, int], n: int = 6) -> str:
            return ", ".join(f"{k} {v}" for k, v in list(d.items())[:n]) or "-"

        out.append(
            f"| {name} | {top:,.0f} | {w['writes']:,} "
            f"| {w['slow_writes']} | {w['over_150_ms']} "
            f"| {w['max_queued_ms']:,.0f} / {w['max_exec_ms']:,.0f} "
            f"| {fmt(w['slow_write_waits'])} | {fmt(w['slow_write_blockers'])} "
            f"| {fmt(w['slow_write_server_state'])} | {fmt(w['refreshes_of_old_keys'])} |"
        )
    return [*out, ""]


def _attribution(r: dict[str, Any], wal: dict[str, Any]) -> list[str]:
    d = wal["decoded"]
    out = [
        f"WAL by record group, {_name(r)} (MiB: record + FPI = total):",
        "",
        "| group | window records | window MiB | window FPI MiB | VACUUM after MiB "
        "| writer idle MiB/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    idle_s = max(1e-9, _idle_s(wal))
    groups = list(d["until_vacuumed"]["groups"])
    for g in groups:
        v = d["variant"]["groups"].get(g, {"records": 0, "record_bytes": 0, "fpi_bytes": 0})
        vac = d["vacuum"]["groups"].get(g, {"record_bytes": 0, "fpi_bytes": 0})
        idle = d["idle"]["groups"].get(g, {"record_bytes": 0, "fpi_bytes": 0})
        out.append(
            f"| {g} | {v['records']:,} | {_mib(v['record_bytes'] + v['fpi_bytes'])} "
            f"| {_mib(v['fpi_bytes'])} | {_mib(vac['record_bytes'] + vac['fpi_bytes'])} "
            f"| {(idle['record_bytes'] + idle['fpi_bytes']) / idle_s / 2**20:.3f} |"
        )
    return [*out, ""]


def _idle_s(wal: dict[str, Any]) -> float:
    marks = {m["label"]: m["t"] for m in wal.get("marks", [])}
    return float(marks.get("variant", 0) - marks.get("idle", 0))
