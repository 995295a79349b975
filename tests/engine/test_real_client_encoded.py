"""The real-client test (tests/engine/test_real_client.py) through a store of the encoded layout:
devlikeapro/waha's `waha_auth(session_id, key, value jsonb)`, keys `<type>-<id>`, the creds
row `creds`, no timestamps (docs/layouts.md; `harness.mjs --layout encoded`).

The same months of history are replayed for the same three accounts; the job then runs once,
live and forced, through the CLI with the layout's settings. Without a timestamp only the
pre-key window (and the opt-in orphan rule, off here) can delete: the run must delete exactly
the pre-keys below each account's window, as the job counts it (busy's 595; repaired's 812
re-pair leftovers sit above its newest id and stay, as any id above it does without a
timestamp), and every message
must still decrypt, the ones on sessions idle for 60 days included (no age rule takes them
here): measured 54 of 54.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from handler import cli
from handler.settings import BAILEYS_KEY_TYPES
from tests.engine.test_real_client import (
    PROTECTED_TYPES,
    counts_table,
    delivery_problems,
    realclient,
)
from tests.engine.test_real_client import (
    harness as reference_harness,
)
from tests.support.baileys_layouts import ABOVE_NEXT_DELETED, WAHA, window_low
from tests.support.db import PgSchema

pytestmark = pytest.mark.slow

__all__ = ["realclient"]  # the fixture, shared with the reference-layout test

Row = tuple[str, str, str]  # session, type ("" when unknown), id (or the whole key)


def _parse(key: str) -> tuple[str, str]:
    """(type, id) by the longest known type followed by "-"; ("", key) for any other key."""
    for key_type in sorted(BAILEYS_KEY_TYPES, key=len, reverse=True):
        if key.startswith(f"{key_type}-"):
            return key_type, key[len(key_type) + 1 :]
    return "", key


def snapshot(pg: PgSchema) -> dict[Row, str]:
    with pg.connect() as conn:
        rows = conn.execute("SELECT session_id, key, value::text FROM waha_auth").fetchall()
    return {(r[0], *_parse(r[1])): r[2] for r in rows}


def harness(realclient: Path, pg: PgSchema, phase: str, state: Path) -> dict[str, Any]:
    return reference_harness(realclient, pg, phase, state, "--layout", "encoded")


def counters(before: dict[Row, str], session: str) -> tuple[int, int]:
    creds = json.loads(before[(session, "", "creds")])
    return int(creds["nextPreKeyId"]), int(creds["firstUnuploadedPreKeyId"])


def _outside_window(key: Row, before: dict[Row, str]) -> bool:
    """A pre-key the run must delete: below its session's window, or above its newest id (as
    the engine takes them without a timestamp: ABOVE_NEXT_DELETED)."""
    session, key_type, key_id = key
    if key_type != "pre-key":
        return False
    nxt, first = counters(before, session)
    held = (int(k[2]) for k in before if k[:2] == (session, "pre-key"))
    return int(key_id) < window_low(held, first) or (ABOVE_NEXT_DELETED and int(key_id) > nxt - 1)


@pytest.mark.usefixtures("isolated_sentry")
def test_a_live_run_on_waha_s_layout_leaves_every_message_decryptable(
    realclient: Path, pg: PgSchema, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    WAHA.create(pg)
    state = tmp_path / "realclient-state.json"
    summary = harness(realclient, pg, "setup", state)
    sys.stdout.write(f"\nsetup (encoded): {json.dumps(summary)}\n")
    before = snapshot(pg)

    pg.use_env(monkeypatch, **WAHA.env)
    assert cli.main(["--execute", "--force", "--no-progress"]) == cli.EXIT_OK
    after = snapshot(pg)
    categories: dict[str, Any] = harness(realclient, pg, "verify", state)["categories"]
    deleted = set(before) - set(after)
    sys.stdout.write(
        f"\n== real client after a live run (encoded layout)\n{counts_table(categories)}\n"
        f"deleted: {len(deleted)} rows\n"
    )

    problems = delivery_problems(categories, tolerated=set())
    for key in sorted(k for k in before if k[1] in PROTECTED_TYPES):
        if after.get(key) != before[key]:
            problems.append(f"protected key deleted or changed: {key}")
    expected = {k for k in before if _outside_window(k, before)}
    if not any(k[0] == "busy" for k in expected):
        problems.append("no pre-key below busy's window: the test proves nothing")
    if deleted != expected:
        problems.append(
            f"deleted {len(deleted)} rows, expected the {len(expected)} pre-keys outside the "
            f"windows; not expected: {sorted(deleted - expected)[:10]}, "
            f"left: {sorted(expected - deleted)[:10]}"
        )
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
