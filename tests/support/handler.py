"""The Lambda handler as the tests drive it: its environment, an invocation, the mixed key table,
its logs and EMF metrics.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext

from handler import observability
from handler.app import lambda_handler
from handler.local import LocalContext
from handler.settings import Settings
from tests.support.db import KeyRow, PgSchema, baileys_creds

REPO = Path(__file__).resolve().parents[2]


SCHEDULED_EVENT_ID = "cdc73f9d-aea9-11e3-9d5a-835b769c0d9c"


# Every variable Settings reads: tests start from none of them set.
SETTING_VARS = frozenset(f.alias for f in Settings.model_fields.values() if f.alias)


def set_lambda_env(monkeypatch: pytest.MonkeyPatch, pg: PgSchema, **overrides: str) -> None:
    """The function's environment: the test schema's database and nothing else configured."""
    for name in SETTING_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in pg.env(**overrides).items():
        monkeypatch.setenv(name, value)


def invoke(event: Any, *, timeout_s: float = 900.0) -> dict[str, Any]:
    return lambda_handler(event, cast(LambdaContext, LocalContext(timeout_s=timeout_s)))


def scheduled_event(**detail: Any) -> dict[str, Any]:
    event = json.loads((REPO / "events" / "scheduled.json").read_text())
    event["detail"] = detail
    return event


OLD = [KeyRow("c1", "session", f"old-s{i}", 60) for i in range(40)]


# Pre-key ids as Baileys numbers them; c2's creds (seed_mixed) are a registration with no
# pre-key yet (counters at 1), so every id is a leftover above its window: these old ones go,
# and the fresh ones below stay by age.
OLD += [KeyRow("c2", "pre-key", str(i), 45) for i in range(1, 31)]


PROTECTED = [KeyRow("c1", "app-state-sync-key", f"sync{i}", 90) for i in range(10)]


PROTECTED += [KeyRow("c2", "lid-mapping", f"lid{i}", 100) for i in range(5)]


FRESH = [KeyRow("c1", "session", f"new-s{i}", 1) for i in range(100)]


FRESH += [KeyRow("c2", "pre-key", str(1000 + i), 5) for i in range(50)]


def seed_mixed(pg: PgSchema) -> None:
    """70 keys past the 30-day retention, 15 old but protected, 150 fresh: 30% eligible."""
    pg.create_reference_table()
    pg.add_auth({"c1": baileys_creds(1), "c2": baileys_creds(1)})
    pg.insert_keys(OLD + PROTECTED + FRESH)


def idents(rows: list[KeyRow]) -> set[tuple[str, str, str]]:
    return {r.ident for r in rows}


def emf_blobs(stdout: str) -> list[dict[str, Any]]:
    """The EMF documents Powertools printed (one JSON object per line with an `_aws` key),
    each metric's value list of one collapsed to that value."""
    blobs = []
    for line in stdout.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            blob = json.loads(line)
            for metric in blob["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
                value = blob[metric["Name"]]
                if isinstance(value, list) and len(value) == 1:
                    blob[metric["Name"]] = value[0]
            blobs.append(blob)
    return blobs


def runs_metric(blobs: list[dict[str, Any]]) -> dict[str, Any]:
    (run,) = [b for b in blobs if "Runs" in b]
    return run


@contextmanager
def captured_logs() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The handler's Powertools log records, as the JSON objects it emits."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    keep = Keep()
    keep.setFormatter(observability.logger.registered_formatter)
    std = logging.getLogger(observability.logger.service)
    std.addHandler(keep)
    try:
        yield lambda: [json.loads(line) for line in lines]
    finally:
        std.removeHandler(keep)


# 80 of 100 keys past the retention: the safety guard (at most half the table) trips.
MASS_OLD = [KeyRow("c1", "session", f"m{i}", 60) for i in range(80)]


MASS_FRESH = [KeyRow("c1", "session", f"f{i}", 2) for i in range(20)]


UNREACHABLE = "postgresql://cleanup:pw@127.0.0.1:1/app"
