"""`--through-vacuum` (issue 20 item 3): the writer timed through the autovacuum that follows.

A variant's deletes leave dead rows that autovacuum vacuums once they pass its threshold
(`autovacuum_vacuum_threshold + autovacuum_vacuum_scale_factor * reltuples`). For `ours` at 4M
that vacuum falls inside the paced run; for the single DELETE it starts after the statement
ends, when the bench used to stop timing the writer. With this option the writer keeps running
after the variant until the table is settled: no vacuum of it in progress, and every leaf's
`n_dead_tup` at or below its autovacuum threshold (at least `MIN_TAIL_S` after the variant, so
that the deleting session's statistics have reached the server), or until a cap.

A thread (`VacuumWatch`) polls the copy's `pg_stat_progress_vacuum` and `pg_stat_user_tables`
every `POLL_S` from the variant's start, so the vacuums of the table are known for the variant
and for the tail alike; `phases` then splits the writer's writes by both: during the deletes
or after them, and with a vacuum of the table running or not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from bench.common import latency_summary
from handler.schema import REFERENCE_TABLE

POLL_S = 0.25
MIN_TAIL_S = 5.0
DEFAULT_CAP_S = 600.0
SLOW_MS = 50.0  # as bench/waits.py
TARGET_MS = 150.0  # the bound on the writer's max
APP = "bench-vacuumtail"

# Per leaf of the key table (the table itself when it is not partitioned): its dead rows,
# its autovacuum threshold (the table's own storage parameters first), and autovacuum count.
_STATE = """
SELECT c.oid::int8, coalesce(s.n_dead_tup, 0)::int8,
  coalesce((SELECT split_part(o, '=', 2) FROM unnest(c.reloptions) AS o
            WHERE o LIKE 'autovacuum_vacuum_threshold=%%'),
           current_setting('autovacuum_vacuum_threshold'))::float8
  + coalesce((SELECT split_part(o, '=', 2) FROM unnest(c.reloptions) AS o
              WHERE o LIKE 'autovacuum_vacuum_scale_factor=%%'),
             current_setting('autovacuum_vacuum_scale_factor'))::float8
    * greatest(c.reltuples, 0),
  coalesce(s.autovacuum_count, 0)::int8
FROM pg_class AS c
LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
WHERE c.relkind = 'r' AND (c.oid = %(t)s::regclass
  OR c.oid IN (SELECT relid FROM pg_partition_tree(%(t)s::regclass)))
"""
# (pg_partition_tree lists no rows for a plain table: the table itself is added.)
_VACUUMS = (
    "SELECT relid::int8, phase FROM pg_stat_progress_vacuum WHERE datname = current_database()"
)
_WAL = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8"


# --- the pure parts ----------------------------------------------------------------------------


def over_threshold(leaves: Sequence[tuple[int, int, float, int]]) -> bool:
    """Is any leaf past its autovacuum threshold? (autovacuum vacuums when dead > threshold)"""
    return any(dead > threshold for _, dead, threshold, _ in leaves)


def settled(*, vacuuming: bool, over: bool, waited_s: float, min_s: float = MIN_TAIL_S) -> bool:
    """The tail may end: no vacuum of the table running, none due, and the minimum waited."""
    return waited_s >= min_s and not vacuuming and not over


def intervals(samples: Sequence[tuple[float, bool]], end: float) -> list[tuple[float, float]]:
    """(t, vacuuming) samples in time order -> the [start, end] stretches a vacuum of the
    table was seen running; one still running at the last sample ends at `end`."""
    out: list[tuple[float, float]] = []
    start: float | None = None
    for t, on in samples:
        if on and start is None:
            start = t
        elif not on and start is not None:
            out.append((start, t))
            start = None
    if start is not None:
        out.append((start, max(start, end)))
    return out


def _inside(t: float, spans: Sequence[tuple[float, float]]) -> bool:
    return any(a <= t <= b for a, b in spans)


def summary(ops: Sequence[Sequence[Any]], seconds: float) -> dict[str, Any]:
    """The writer over one stretch: p50/p99/max, writes >= SLOW_MS and > TARGET_MS."""
    lat = asdict(latency_summary(ops))
    lat.pop("error_kinds", None)
    ms = [float(op[1]) * 1000 for op in ops]
    return {
        "seconds": round(seconds, 2),
        **lat,
        "slow": sum(1 for v in ms if v >= SLOW_MS),
        "over_150_ms": sum(1 for v in ms if v > TARGET_MS),
    }


def phases(
    ops: Sequence[Sequence[Any]],
    deletes: tuple[float, float],
    tail_end: float,
    vacuums: Sequence[tuple[float, float]],
) -> dict[str, dict[str, Any]]:
    """The writer's writes (by scheduled start) split into the deletes' window and the tail
    after it, each also by whether a vacuum of the table was running."""
    a, b = deletes

    def covered(lo: float, hi: float) -> float:
        return sum(max(0.0, min(hi, y) - max(lo, x)) for x, y in vacuums)

    out: dict[str, dict[str, Any]] = {}
    for name, (lo, hi, lo_open) in {
        "deletes": (a, b, False),
        "after": (b, tail_end, True),
    }.items():
        stretch = [op for op in ops if (lo < op[0] if lo_open else lo <= op[0]) and op[0] <= hi]
        vac = [op for op in stretch if _inside(op[0], vacuums)]
        rest = [op for op in stretch if not _inside(op[0], vacuums)]
        cov = covered(lo, hi)
        out[name] = summary(stretch, hi - lo)
        out[f"{name}, vacuum running"] = summary(vac, cov)
        out[f"{name}, no vacuum"] = summary(rest, hi - lo - cov)
    return out


# --- the watch ---------------------------------------------------------------------------------


@dataclass
class Tail:
    """How the tail went: its length, why it ended, the vacuums seen, its WAL."""

    seconds: float
    ended: str  # "settled" or "cap"
    cap_s: float
    wal_mib: float
    dead_at_end: int
    over_threshold_at_end: bool
    autovacuums: int  # autovacuum_count's increase from the variant's start to the tail's end


class VacuumWatch:
    """Polls the copy's vacuum progress and dead rows from `start()` until `stop()`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, bool]] = []
        self.phases_seen: list[tuple[float, str]] = []  # (t, phase) at each change
        self.leaves: list[tuple[int, int, float, int]] = []
        self.first_leaves: list[tuple[int, int, float, int]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._poll_once()
        self.first_leaves = list(self.leaves)
        self._thread.start()

    def _poll_once(self, conn: psycopg.Connection[Any] | None = None) -> None:
        own = conn is None
        c = conn or psycopg.connect(self.url, autocommit=True, application_name=APP)
        try:
            leaves = [
                (int(r[0]), int(r[1]), float(r[2]), int(r[3]))
                for r in c.execute(_STATE, {"t": REFERENCE_TABLE}).fetchall()
            ]
            ids = {leaf[0] for leaf in leaves}
            running = [str(p) for rel, p in c.execute(_VACUUMS).fetchall() if int(rel) in ids]
        finally:
            if own:
                c.close()
        t = time.monotonic()
        phase = running[0] if running else "-"
        with self._lock:
            self.leaves = leaves
            self.samples.append((t, bool(running)))
            if not self.phases_seen or self.phases_seen[-1][1] != phase:
                self.phases_seen.append((t, phase))

    def _run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True, application_name=APP) as conn:
                while not self._stop.wait(POLL_S):
                    self._poll_once(conn)
        except psycopg.Error as exc:  # a lost watch ends the tail at once, never hangs it
            self.errors.append(f"{type(exc).__name__}: {str(exc).strip()[:120]}")

    def state(self) -> tuple[bool, bool]:
        """(a vacuum of the table running, some leaf over its threshold) at the last poll."""
        with self._lock:
            on = self.samples[-1][1] if self.samples else False
            return on, over_threshold(self.leaves)

    def follow(self, after: float, cap_s: float) -> Tail:
        """Block from the variant's end (`after`) until the table is settled or `cap_s`."""
        wal0 = _wal(self.url)
        ended = "cap"
        while time.monotonic() - after < cap_s:
            if self.errors:
                ended = "watch failed"
                break
            on, over = self.state()
            if settled(vacuuming=on, over=over, waited_s=time.monotonic() - after):
                ended = "settled"
                break
            time.sleep(POLL_S)
        seconds = time.monotonic() - after
        wal = _wal(self.url) - wal0
        with self._lock:
            leaves = list(self.leaves)
        return Tail(
            seconds=round(seconds, 2),
            ended=ended,
            cap_s=cap_s,
            wal_mib=round(wal / 2**20, 1),
            dead_at_end=sum(leaf[1] for leaf in leaves),
            over_threshold_at_end=over_threshold(leaves),
            autovacuums=sum(leaf[3] for leaf in leaves)
            - sum(leaf[3] for leaf in self.first_leaves),
        )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def report(
        self, ops: Sequence[Sequence[Any]], deletes: tuple[float, float], tail: Tail
    ) -> dict[str, Any]:
        a, b = deletes
        end = b + tail.seconds
        with self._lock:
            spans = intervals(self.samples, end)
            seen = list(self.phases_seen)
        return {
            "tail": asdict(tail),
            # seconds from the deletes' start
            "vacuums": [[round(x - a, 1), round(y - a, 1)] for x, y in spans],
            "vacuum_phases": [[round(t - a, 1), p] for t, p in seen],
            "writer": phases(ops, deletes, end, spans),
            "errors": self.errors,
        }


def _wal(url: str) -> int:
    with psycopg.connect(url, autocommit=True, application_name=APP) as conn:
        row = conn.execute(_WAL).fetchone()
    return int(row[0]) if row else 0


# --- the results file's section -----------------------------------------------------------------


def render(runs: Sequence[dict[str, Any]]) -> list[str]:
    rows = [r for r in runs if r.get("diagnostics", {}).get("through_vacuum")]
    if not rows:
        return []
    out = [
        "",
        "## The writer through the following autovacuum (--through-vacuum)",
        "",
        "The writer kept running after each variant until no vacuum of the table ran and its "
        f"dead rows were at or below the autovacuum threshold (at least {MIN_TAIL_S:.0f} s; "
        "capped). Its writes (by scheduled start) split into the deletes' window and the tail "
        "after it, each by whether a vacuum of the table was running (polled every "
        f"{POLL_S} s). Slow: >= {SLOW_MS:.0f} ms.",
        "",
        "| run | stretch | s | writes | p50 ms | p99 ms | max ms | slow | > 150 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes: list[str] = []
    for r in rows:
        tv = r["diagnostics"]["through_vacuum"]
        name = f"{r['size']:,} {r['variant']}{' idx' if r['index'] else ''} run {r['run']}"
        for stretch, s in tv["writer"].items():
            out.append(
                f"| {name} | {stretch} | {s['seconds']:,.1f} | {s['ops']:,} | {s['p50_ms']:,.1f} "
                f"| {s['p99_ms']:,.1f} | {s['max_ms']:,.0f} | {s['slow']:,} "
                f"| {s['over_150_ms']:,} |"
            )
        t = tv["tail"]
        spans = ", ".join(f"{x:,.1f}-{y:,.1f} s" for x, y in tv["vacuums"]) or "none"
        notes.append(
            f"- {name}: vacuums of the table (from the deletes' start) {spans}; tail "
            f"{t['seconds']:,.1f} s ({t['ended']}), {t['wal_mib']:,.1f} MiB of WAL in it, "
            f"{t['autovacuums']} autovacuum(s) finished, {t['dead_at_end']:,} dead rows left"
        )
    return [*out, "", *notes, ""]
