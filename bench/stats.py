"""Small statistics helpers shared by the runner and the report."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def latency_summary(ops: Sequence[Sequence[object]]) -> dict[str, object]:
    """ops: (scheduled_t, latency_s, kind, error) -> counts and p50/p99/max in ms."""
    lat = [float(str(op[1])) * 1000 for op in ops]
    errors: dict[str, int] = {}
    for op in ops:
        if op[3]:
            errors[str(op[3])] = errors.get(str(op[3]), 0) + 1
    old = [float(str(op[1])) * 1000 for op in ops if op[2] == "old"]
    return {
        "ops": len(ops),
        "p50_ms": round(percentile(lat, 50), 2),
        "p99_ms": round(percentile(lat, 99), 2),
        "max_ms": round(max(lat, default=0.0), 2),
        "old_key_max_ms": round(max(old, default=0.0), 2),
        "errors": sum(errors.values()),
        "error_kinds": errors,
    }
