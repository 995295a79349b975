"""What the writer's slow writes waited on (issue 20 item 3): a 10 ms wait-event sampler.

A process of its own (like the writer, so that the engine's Python work in the bench process
does not delay its polls) reads `pg_stat_activity` every `interval_s`: every non-idle session of
the copy's database (the writer's backends, the engine's), and the server's checkpointer,
WAL writer and autovacuum workers; for a session waiting on a heavyweight lock, the lock's
holders (`pg_blocking_pids`); the vacuums in progress (`pg_stat_progress_vacuum`, whose phase
`truncating heap` is autovacuum's ACCESS EXCLUSIVE truncation); and the last checkpoint's redo
position (a new one = a checkpoint finished).

`align` then lines each slow write (from the writer's own per-write record: backend pid, when
a connection took it, when it ended) up with the samples of its backend while it ran, and says
what the server was doing meanwhile (checkpoint phase, autovacuum phase, the engine's wait).
Server log lines about checkpoints and autovacuum (log_checkpoints, and
log_autovacuum_min_duration = 0 set on the copy's table) are kept beside it, by timestamp.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.writer import APPLICATION_NAME as WRITER_APP
from handler.schema import REFERENCE_TABLE

SAMPLER_APP = "bench-waits"
ENGINE_APP = "keys-cleanup"
# A write at least this slow (from its scheduled start) is lined up with the samples.
SLOW_MS = 50.0
BACKGROUND = ("checkpointer", "walwriter", "autovacuum worker", "background writer")

# One poll: [server epoch, [[pid, who, state, wait, blockers, xact_ms, query]...],
#            [[pid, datname, relid, phase, scanned, total]...], redo_lsn]
_POLL = """
SELECT extract(epoch FROM clock_timestamp())::float8,
  (SELECT coalesce(json_agg(json_build_array(
      a.pid,
      CASE WHEN a.backend_type = 'client backend' THEN coalesce(a.application_name, '')
           ELSE a.backend_type END,
      a.state,
      a.wait_event_type || ':' || a.wait_event,
      CASE WHEN a.wait_event_type = 'Lock' THEN pg_blocking_pids(a.pid) END,
      round((extract(epoch FROM clock_timestamp() - a.xact_start) * 1000)::numeric, 1),
      CASE WHEN a.backend_type = 'client backend' THEN NULL ELSE left(a.query, 80) END)), '[]')
   FROM pg_stat_activity AS a
   WHERE a.pid <> pg_backend_pid()
     AND ((a.datname = %(db)s AND a.state IS DISTINCT FROM 'idle')
          OR a.backend_type = ANY(%(bg)s))),
  (SELECT coalesce(json_agg(json_build_array(v.pid, v.datname, v.relid, v.phase,
                                             v.heap_blks_scanned, v.heap_blks_total)), '[]')
   FROM pg_stat_progress_vacuum AS v),
  (SELECT redo_lsn::text FROM pg_control_checkpoint())
"""


def run_sampler(admin_url: str, dbname: str, out_path: str, stop: Event, ready: Event,
                interval_s: float = 0.01) -> None:  # fmt: skip
    """Entry point of the sampler process: polls until `stop`, then writes the samples as
    JSON: [[mono_t, epoch, sessions, vacuums, redo_lsn], ...]."""
    samples: list[list[Any]] = []
    with psycopg.connect(admin_url, autocommit=True, application_name=SAMPLER_APP) as conn:
        params = {"db": dbname, "bg": list(BACKGROUND)}
        conn.execute(_POLL, params)
        ready.set()
        next_t = time.monotonic()
        while not stop.is_set():
            t0 = time.monotonic()
            row = conn.execute(_POLL, params).fetchone()
            t1 = time.monotonic()
            if row is not None:
                samples.append([round((t0 + t1) / 2, 4), row[0], row[1], row[2], row[3]])
            next_t += interval_s
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_t = time.monotonic()
    Path(out_path).write_text(json.dumps(samples))


def log_table_vacuums(url: str) -> None:
    """log_autovacuum_min_duration = 0 on the copy's table: every autovacuum of it is logged
    (a storage parameter of this table only; it changes what is logged, nothing else)."""
    with psycopg.connect(url, autocommit=True) as conn:
        # A partitioned table takes no storage parameters: its leaves do. pg_partition_tree
        # lists no rows for a plain table, so the table itself is added.
        leaves = conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class AS c"
            " WHERE c.relkind = 'r' AND (c.oid = %(t)s::regclass"
            " OR c.oid IN (SELECT relid FROM pg_partition_tree(%(t)s::regclass)))",
            {"t": REFERENCE_TABLE},
        ).fetchall()
        for (leaf,) in leaves:
            conn.execute(
                sql.SQL("ALTER TABLE {} SET (log_autovacuum_min_duration = 0)").format(
                    sql.SQL(str(leaf))  # a regclass's own quoted text
                )
            )


# --- lining the slow writes up with the samples -----------------------------------------------


@dataclass(frozen=True)
class Sample:
    t: float
    epoch: float
    sessions: list[list[Any]]
    vacuums: list[list[Any]]
    redo: str


def load(path: Path) -> list[Sample]:
    return [Sample(*s) for s in json.loads(path.read_text())]


def _wait(session: Sequence[Any]) -> str:
    """A session's state in one sample: its wait event, or `cpu` when active and not waiting."""
    if session[3]:
        return str(session[3])
    return "cpu" if session[2] == "active" else str(session[2] or "?")


def _server_state(s: Sample, table: tuple[str, int | None] | None) -> dict[str, str]:
    """What the checkpointer, autovacuum and the engine were doing in one sample."""
    out: dict[str, str] = {}
    for sess in s.sessions:
        who = str(sess[1])
        if who == "checkpointer":
            w = str(sess[3] or "")
            out["checkpoint"] = {
                "Activity:CheckpointerMain": "idle",
                "Timeout:CheckpointWriteDelay": "write (spread)",
                "IO:DataFileSync": "sync",
                "IO:DataFileWrite": "write",
                "IO:DataFileFlush": "write (flush)",
            }.get(w, w or "busy")
        elif who == ENGINE_APP:
            out["engine"] = _wait(sess)
        elif who == "autovacuum worker" and REFERENCE_TABLE in str(sess[6] or ""):
            out["autovacuum"] = _wait(sess)
    for v in s.vacuums:
        if table is None or (str(v[1]) == table[0] and table[1] in (None, int(v[2]))):
            out["vacuum_phase"] = str(v[3])
    return out


def align(
    ops: Sequence[Sequence[Any]],
    samples: Sequence[Sample],
    window: tuple[float, float],
    *,
    table: tuple[str, int | None] | None = None,
    slow_ms: float = SLOW_MS,
    keep: int = 15,
) -> dict[str, Any]:
    """The slow writes scheduled in `window`, each with what its backend waited on while it ran
    and what the server did meanwhile; counts per wait event over all of them."""
    a, b = window
    during = [op for op in ops if a <= op[0] <= b and len(op) >= 7]
    by_pid: dict[int, list[tuple[float, str, list[int] | None]]] = {}
    for s in samples:
        for sess in s.sessions:
            if sess[1] == WRITER_APP:
                by_pid.setdefault(int(sess[0]), []).append((s.t, _wait(sess), sess[4]))
    who = {int(sess[0]): str(sess[1]) or "client without application_name" for s in samples
           for sess in s.sessions}  # fmt: skip
    slow = sorted((op for op in during if op[1] * 1000 >= slow_ms), key=lambda op: -op[1])
    totals: Counter[str] = Counter()
    blockers: Counter[str] = Counter()
    context: Counter[str] = Counter()
    unsampled = 0
    detail: list[dict[str, Any]] = []
    for op in slow:
        sched, lat, kind, _err, pid, exec_t, outcome = op[:7]
        end = sched + lat
        seen = [(t, w, bl) for t, w, bl in by_pid.get(int(pid), []) if exec_t <= t <= end]
        waits = Counter(w for _, w, _ in seen)
        if not seen:
            unsampled += 1
        totals.update(waits)
        for _, _, bl in seen:
            for p in bl or ():
                blockers[who.get(int(p), "?")] += 1
        states = [_server_state(s, table) for s in samples if sched <= s.t <= end]
        ctx = Counter(f"{k}={v}" for st in states for k, v in st.items())
        context.update(ctx)
        if len(detail) < keep:
            detail.append({
                "at_s": round(sched - a, 2),
                "latency_ms": round(lat * 1000, 1),
                "queued_ms": round((exec_t - sched) * 1000, 1),
                "kind": kind,
                "outcome": outcome,
                "waits": dict(waits.most_common()),
                "server": dict(ctx.most_common(6)),
            })  # fmt: skip
    all_waits: Counter[str] = Counter()
    for pid, seq in by_pid.items():
        del pid
        all_waits.update(w for t, w, _ in seq if a <= t <= b)
    return {
        "slow_ms": slow_ms,
        "writes": len(during),
        "slow_writes": len(slow),
        "over_150_ms": sum(1 for op in slow if op[1] * 1000 > 150),
        "slow_writes_unsampled": unsampled,
        "max_queued_ms": round(max(((op[5] - op[0]) * 1000 for op in during), default=0), 1),
        "max_exec_ms": round(max(((op[0] + op[1] - op[5]) * 1000 for op in during), default=0), 1),
        "slow_write_waits": dict(totals.most_common()),
        "slow_write_blockers": dict(blockers.most_common()),
        "slow_write_server_state": dict(context.most_common(12)),
        "writer_waits_all_samples": dict(all_waits.most_common(12)),
        "refreshes_of_old_keys": _old_outcomes(during),
        "slowest": detail,
        # When: per 10 s of the window, [slow writes, the slowest ms]
        "slow_by_10s": _by_10s(slow, a),
    }


def _by_10s(slow: Sequence[Sequence[Any]], start: float) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for op in slow:
        key = str(int((op[0] - start) // 10) * 10)
        n, worst = out.get(key, [0, 0.0])
        out[key] = [n + 1, round(max(worst, op[1] * 1000), 1)]
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def _old_outcomes(ops: Sequence[Sequence[Any]]) -> dict[str, int]:
    """Did the writer's "old" refreshes find their key (update) or come after its deletion?"""
    return dict(Counter(str(op[6]) for op in ops if op[2] == "old" and op[6]))


def timeline(samples: Sequence[Sample], window: tuple[float, float],
             table: tuple[str, int | None] | None = None) -> list[list[Any]]:  # fmt: skip
    """Transitions of the checkpointer, autovacuum on the table and the redo pointer, as
    [seconds from the window's start, what]: the background the slow writes are read against."""
    a, _ = window
    events: list[list[Any]] = []
    last: dict[str, str] = {}
    for s in samples:
        st = _server_state(s, table)
        st.pop("engine", None)
        st["redo"] = s.redo
        for k in ("checkpoint", "vacuum_phase", "redo"):
            v = st.get(k, "-")
            if last.get(k) != v:
                if k in last:
                    events.append([round(s.t - a, 2), f"{k}: {last[k]} -> {v}"])
                last[k] = v
    return events


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (\w+)")
_KEEP = ("checkpoint", "automatic vacuum", "automatic analyze", "truncat")


def log_lines(log_path: Path | None, epochs: tuple[float, float]) -> list[str]:
    """The server log's checkpoint and autovacuum lines between two server epochs."""
    if log_path is None or not log_path.exists():
        return []
    out: list[str] = []
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    keep_next = False
    for line in text.splitlines():
        m = _LOG_LINE.match(line)
        if m is None:
            if keep_next and line.startswith(("\t", " ")):
                out.append(line.strip())
            continue
        keep_next = False
        try:
            ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
        except ValueError:
            continue
        ts = ts.replace(tzinfo=UTC) if m.group(2) in ("UTC", "GMT") else ts.astimezone()
        if epochs[0] - 1 <= ts.timestamp() <= epochs[1] + 1 and any(k in line for k in _KEEP):
            out.append(line)
            keep_next = True
    return out
