"""What every bench module shares: the figures of one run (`Run`, `Latency`), small statistics,
the server helpers (a database's URL, an admin connection, DROP DATABASE), the cutoff rule and
the log line."""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

RETENTION_DAYS = 30

Conn = psycopg.Connection[tuple[object, ...]]


def log(msg: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mib(n: Any) -> str:
    return f"{int(n) / 2**20:.1f} MiB"


# --- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


@dataclass(frozen=True)
class Latency:
    """The writer's figures over a stretch of time."""

    ops: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    old_key_max_ms: float
    errors: int
    error_kinds: dict[str, int]


def latency_summary(ops: Sequence[Sequence[object]]) -> Latency:
    """ops: (scheduled_t, latency_s, kind, error) -> counts and p50/p99/max in ms."""
    lat = [float(str(op[1])) * 1000 for op in ops]
    errors: dict[str, int] = {}
    for op in ops:
        if op[3]:
            errors[str(op[3])] = errors.get(str(op[3]), 0) + 1
    old = [float(str(op[1])) * 1000 for op in ops if op[2] == "old"]
    return Latency(
        ops=len(ops),
        p50_ms=round(percentile(lat, 50), 2),
        p99_ms=round(percentile(lat, 99), 2),
        max_ms=round(max(lat, default=0.0), 2),
        old_key_max_ms=round(max(old, default=0.0), 2),
        errors=sum(errors.values()),
        error_kinds=errors,
    )


# --- one variant run -------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerDelta:
    """Server-wide WAL and checkpoint counters during a variant (other sessions' work too)."""

    wal_mib: float
    checkpoints: int
    backend_buffer_writes: int


@dataclass(frozen=True)
class EngineFigures:
    """The engine's own Report figures (variant `ours` only)."""

    engine_duration_ms: int
    batch_retries: int
    max_batch_rows: int
    pacing_wait_ms: int
    throttle_waits: int
    throttle_wait_ms: int


@dataclass(frozen=True)
class Run:
    """One variant run: a case (size, variant, index) and run number, and what it measured."""

    size: int
    variant: str
    index: bool
    run: int
    deleted: int
    wall_s: float
    rows_per_s: int | None
    transactions: int
    max_txn_ms: float
    sampled_max_write_txn_ms: float
    sampled_max_any_txn_ms: float
    sampled_max_background_write_txn_ms: float
    slow_txn_waits: dict[str, int]
    delete_s: float
    delete_rows_per_s: int
    phase_s: dict[str, float]
    remaining_old: int
    server: ServerDelta
    writer_idle: Latency
    writer_during: Latency
    writer_by_phase: dict[str, Latency]
    engine: EngineFigures | None = field(default=None)
    # --waits / --wal-stats (bench/stalls.py): what slow writes waited on, whose WAL it was
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, str, bool]:
        return (self.size, self.variant, self.index)

    def to_json(self) -> dict[str, Any]:
        """The results file's shape: the engine's figures flat beside the others."""
        out = asdict(self)
        engine = out.pop("engine")
        return {**out, **(engine or {})}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Run:
        names = {f.name for f in fields(cls)} - {"engine"}
        engine_names = {f.name for f in fields(EngineFigures)}
        kw: dict[str, Any] = {k: v for k, v in d.items() if k in names}
        kw.setdefault("sampled_max_background_write_txn_ms", 0.0)
        kw.setdefault("slow_txn_waits", {})
        kw.setdefault("phase_s", {})
        kw["server"] = ServerDelta(**d["server"])
        kw["writer_idle"] = Latency(**d["writer_idle"])
        kw["writer_during"] = Latency(**d["writer_during"])
        kw["writer_by_phase"] = {k: Latency(**v) for k, v in d.get("writer_by_phase", {}).items()}
        if engine_names <= d.keys():
            kw["engine"] = EngineFigures(**{k: d[k] for k in engine_names})
        return cls(**kw)


# --- the server ------------------------------------------------------------------------------


def db_url(base_url: str, dbname: str) -> str:
    params = conninfo_to_dict(base_url)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


def admin(base_url: str) -> Conn:
    return psycopg.connect(base_url, autocommit=True)


def drop_database(base_url: str, name: str) -> None:
    with admin(base_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def cutoff_predicate() -> sql.Composed:
    """The same cutoff rule as the engine: the database clock minus the retention."""
    return sql.SQL("updated_at < now() - make_interval(days => {})").format(
        sql.Literal(RETENTION_DAYS)
    )
