"""Whose WAL is it (issue 20 item 4): pg_walinspect's per-record statistics over each window.

`pg_get_wal_stats(start, end, per_record => true)` reads WAL from the server's own pg_wal, and
a run that writes gigabytes past `max_wal_size` has its first segments recycled by the time it
ends. So the WAL is decoded while it is written: a thread (it waits on the server, not on the
GIL) calls the function over at most `CHUNK` bytes at a time, from the last position up to
the flushed position. A record that crosses a chunk's end is counted in that chunk (the next
call starts at the first record after it). Bytes that could no longer be read are counted as
`lost`, never silently.

The bench marks named points (`mark`): the writer alone (idle), the variant, the gap until
the writer stops, and a plain VACUUM of the table at the end (the fairer accounting: both
variants measured until their dead rows are vacuumed). Each chunk is clipped at the next mark
and counted in the segment it belongs to.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from typing import Any

import psycopg
from psycopg import sql

from handler.schema import REFERENCE_TABLE

CHUNK = 64 << 20
POLL_S = 0.5
APP = "bench-walstats"


class WalStats:
    """Decodes the server's WAL from the first mark on, per segment between marks."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._marks: list[tuple[str, int, float]] = []  # (label, lsn, monotonic)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._final: int | None = None
        self.segments: dict[str, dict[str, list[int]]] = {}  # label -> record -> [n, rec, fpi]
        self.lost: Counter[str] = Counter()
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._conn = psycopg.connect(url, autocommit=True, application_name=APP)
        self._conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")

    def mark(self, label: str) -> int:
        """Start segment `label` at the current insert position; returns that position."""
        with psycopg.connect(self.url, autocommit=True, application_name=APP) as conn:
            row = conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint"
            ).fetchone()
        lsn = int(row[0]) if row else 0
        with self._lock:
            self._marks.append((label, lsn, time.monotonic()))
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()
        return lsn

    def finish(self, timeout_s: float = 120.0) -> None:
        """Decode up to the last mark, then stop."""
        with self._lock:
            self._final = self._marks[-1][1] if self._marks else None
        self._stop.set()
        self._thread.join(timeout_s)
        self._conn.close()

    def _segment_at(self, pos: int) -> tuple[str, int | None]:
        """The segment `pos` belongs to, and where the next one starts (None: open)."""
        with self._lock:
            marks = list(self._marks)
        label, nxt = marks[0][0], None
        for m_label, m_lsn, _ in marks:
            if m_lsn <= pos:
                label = m_label
            elif nxt is None:
                nxt = m_lsn
        return label, nxt

    def _run(self) -> None:
        with self._lock:
            pos = self._marks[0][1]
        conn = self._conn
        while True:
            flushed_row = conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint"
            ).fetchone()
            flushed = int(flushed_row[0]) if flushed_row else pos
            final = self._final
            limit = flushed if final is None else min(flushed, final)
            if pos < limit:
                label, nxt = self._segment_at(pos)
                end = min(limit, pos + CHUNK, nxt if nxt is not None else limit)
                self._decode(label, pos, end)
                pos = end
                continue
            if final is not None and pos >= final:
                return
            time.sleep(POLL_S / 10 if self._stop.is_set() else POLL_S)

    def _decode(self, label: str, start: int, end: int) -> None:
        try:
            rows = self._conn.execute(
                'SELECT "resource_manager/record_type", count, record_size, fpi_size'
                " FROM pg_get_wal_stats(%s::pg_lsn, %s::pg_lsn, true)",
                (_lsn(start), _lsn(end)),
            ).fetchall()
        except psycopg.Error as exc:
            self.lost[label] += end - start
            if len(self.errors) < 5:
                self.errors.append(f"{label}: {type(exc).__name__}: {str(exc).strip()[:120]}")
            return
        seg = self.segments.setdefault(label, {})
        for name, n, rec, fpi in rows:
            acc = seg.setdefault(str(name), [0, 0, 0])
            acc[0] += int(n)
            acc[1] += int(rec)
            acc[2] += int(fpi)

    def marks(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"label": lab, "lsn": _lsn(lsn), "t": t} for lab, lsn, t in self._marks]

    def window_bytes(self) -> dict[str, int]:
        """Bytes between each mark and the next, from the positions alone."""
        with self._lock:
            marks = list(self._marks)
        return {a[0]: b[1] - a[1] for a, b in itertools.pairwise(marks)}


def _lsn(pos: int) -> str:
    return f"{pos >> 32:X}/{pos & 0xFFFFFFFF:X}"


def vacuum_table(url: str) -> float:
    """A plain VACUUM of the key table (the writer stopped): seconds it took."""
    with psycopg.connect(url, autocommit=True, application_name=APP) as conn:
        t0 = time.monotonic()
        conn.execute(sql.SQL("VACUUM {}").format(sql.Identifier(REFERENCE_TABLE)))
        return time.monotonic() - t0


# --- attribution ------------------------------------------------------------------------------

# Record types grouped by who writes them, for the summary table.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("heap DELETE (the deletes)", ("Heap/DELETE",)),
    ("heap PRUNE (vacuum's first pass, or opportunistic pruning)", ("Heap2/PRUNE",)),
    ("heap VACUUM (vacuum's second pass)", ("Heap2/VACUUM",)),
    ("visibility map / freeze", ("Heap2/VISIBLE", "Heap2/FREEZE_PAGE", "Heap/INPLACE")),
    (
        "heap INSERT / UPDATE (the writer)",
        (
            "Heap/INSERT",
            "Heap/INSERT+INIT",
            "Heap/UPDATE",
            "Heap/HOT_UPDATE",
            "Heap/UPDATE+INIT",
            "Heap/HOT_UPDATE+INIT",
            "Heap/LOCK",
            "Heap2/LOCK_UPDATED",
        ),
    ),
    ("btree (the writer's inserts; index vacuum)", ("Btree/",)),
    ("transaction commits", ("Transaction/",)),
    ("checkpoints, FPI_FOR_HINT, other XLOG", ("XLOG/",)),
)


def _group(name: str) -> str:
    for label, prefixes in GROUPS:
        if any(name == p or (p.endswith("/") and name.startswith(p)) for p in prefixes):
            return label
    return "other"


def summarise(segments: dict[str, dict[str, list[int]]], labels: list[str]) -> dict[str, Any]:
    """Per group (and per record type) over the segments in `labels`: records, record bytes,
    FPI bytes, total bytes."""
    by_group: dict[str, list[int]] = {}
    by_record: dict[str, list[int]] = {}
    for label in labels:
        for name, (n, rec, fpi) in segments.get(label, {}).items():
            for table, key in ((by_group, _group(name)), (by_record, name)):
                acc = table.setdefault(key, [0, 0, 0])
                acc[0] += n
                acc[1] += rec
                acc[2] += fpi
    total = sum(r + f for _, r, f in by_group.values())
    return {
        "total_bytes": total,
        "fpi_bytes": sum(f for _, _, f in by_group.values()),
        "groups": {
            k: {"records": n, "record_bytes": r, "fpi_bytes": f}
            for k, (n, r, f) in sorted(by_group.items(), key=lambda kv: -(kv[1][1] + kv[1][2]))
        },
        "top_records": {
            k: {"records": n, "record_bytes": r, "fpi_bytes": f}
            for k, (n, r, f) in sorted(by_record.items(), key=lambda kv: -(kv[1][1] + kv[1][2]))[
                :12
            ]
        },
    }


def report(ws: WalStats, *, deleted: int, idle_s: float, variant_s: float) -> dict[str, Any]:
    """The raw window (as the issue defines it), the window plus the VACUUM that makes the
    table clean, and the window less the writer's WAL at its idle rate, side by side."""
    seg = ws.segments
    idle = summarise(seg, ["idle"])
    variant = summarise(seg, ["variant"])
    clean = summarise(seg, ["variant", "vacuum"])
    idle_rate = idle["total_bytes"] / idle_s if idle_s > 0 else 0.0
    writer_est = idle_rate * variant_s

    def per_row(b: float) -> float | None:
        return round(b / deleted, 1) if deleted else None

    return {
        "lsn_window_bytes": ws.window_bytes(),
        "decoded": {
            "variant": variant,
            "until_vacuumed": clean,
            "vacuum": summarise(seg, ["vacuum"]),
            "idle": idle,
        },
        "lost_bytes": dict(ws.lost),
        "errors": ws.errors,
        "writer_idle_bytes_per_s": round(idle_rate),
        "bytes_per_deleted_row": {
            "window": per_row(variant["total_bytes"]),
            "until_vacuumed": per_row(clean["total_bytes"]),
            "window_less_writer_idle_rate": per_row(max(0.0, variant["total_bytes"] - writer_est)),
            "until_vacuumed_less_writer_idle_rate": per_row(
                max(0.0, clean["total_bytes"] - writer_est)
            ),
        },
        "marks": ws.marks(),
    }
