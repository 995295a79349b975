"""The engine's measurement phase against one sequential count(*) on the same table."""

from __future__ import annotations

from typing import Any


def measure_vs_count(base_url: str, template: str, name: str, repeats: int = 3) -> dict[str, Any]:
    return {"available": False, "reason": "engine measure step not wired yet"}


def evidence(base_url: str, template: str, name: str) -> list[str]:
    return []
