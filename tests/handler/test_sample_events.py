"""Every sample event in events/ through the Lambda handler, against a real PostgreSQL.

The outcome of each is asserted row by row: which keys are gone and which remain.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.db import PgSchema
from tests.support.handler import (
    FRESH,
    MASS_FRESH,
    MASS_OLD,
    OLD,
    PROTECTED,
    REPO,
    SCHEDULED_EVENT_ID,
    idents,
    invoke,
    set_lambda_env,
)

EVENTS = REPO / "events"


TESTED = {"scheduled.json", "dry-run.json", "verbose.json", "live.json", "force.json"}


def load(name: str) -> Any:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture
def mass(pg: PgSchema, monkeypatch: pytest.MonkeyPatch) -> PgSchema:
    pg.create_reference_table()
    pg.insert_keys(MASS_OLD + MASS_FRESH)
    # The guard ignores tables with fewer eligible keys than this (default 1000).
    set_lambda_env(monkeypatch, pg, CLEANUP_GUARD_MIN_KEYS="10")
    return pg


def test_every_sample_event_has_a_test() -> None:
    assert {p.name for p in EVENTS.glob("*.json")} == TESTED


def test_scheduled_is_a_live_run_that_deletes(mixed: PgSchema) -> None:
    event = load("scheduled.json")
    assert (event["source"], event["detail-type"]) == ("aws.events", "Scheduled Event")
    result = invoke(event)
    assert (result["status"], result["dry_run"]) == ("completed", False)
    assert (result["eligible"], result["deleted"], result["protected"]) == (70, 70, 15)
    assert result["event_id"] == SCHEDULED_EVENT_ID
    assert mixed.key_set() == idents(PROTECTED + FRESH)


def test_scheduled_is_a_dry_run_when_cleanup_dry_run_is_set(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLEANUP_DRY_RUN", "true")
    result = invoke(load("scheduled.json"))
    assert (result["dry_run"], result["eligible"], result["deleted"]) == (True, 70, 0)
    assert mixed.count() == 235


def test_dry_run_measures_and_deletes_nothing(mixed: PgSchema) -> None:
    result = invoke(load("dry-run.json"))
    assert (result["status"], result["dry_run"]) == ("completed", True)
    assert (result["eligible"], result["deleted"], result["protected"]) == (70, 0, 15)
    assert result["before"]["keys"] == 235
    assert result["keys"] == []  # not verbose
    assert mixed.key_set() == idents(OLD + PROTECTED + FRESH)


def test_verbose_lists_the_keys_that_would_go(mixed: PgSchema) -> None:
    result = invoke(load("verbose.json"))
    assert (result["dry_run"], result["deleted"]) == (True, 0)
    listed = {(e["key"]["company_id"], e["key_type"], e["key"]["key_id"]) for e in result["keys"]}
    assert listed == idents(OLD)
    assert result["keys_omitted"] == 0
    assert "secret-" not in json.dumps(result)  # the value column never leaves the database
    assert mixed.count() == 235


def test_live_deletes_exactly_the_stale_unprotected_keys(mixed: PgSchema) -> None:
    result = invoke(load("live.json"))
    assert (result["status"], result["dry_run"], result["deleted"]) == ("completed", False, 70)
    assert result["by_type"]["session"]["deleted"] == 40
    assert result["by_type"]["pre-key"]["deleted"] == 30
    assert result["after"]["keys"] == 165
    assert mixed.key_set() == idents(PROTECTED + FRESH)


def test_live_is_stopped_by_the_safety_guard(mass: PgSchema) -> None:
    result = invoke(load("live.json"))
    assert (result["status"], result["deleted"]) == ("aborted", 0)
    assert "force" in result["reason"]
    assert mass.count() == 100


def test_force_overrides_the_safety_guard(mass: PgSchema) -> None:
    result = invoke(load("force.json"))
    assert (result["status"], result["dry_run"], result["deleted"]) == ("completed", False, 80)
    assert mass.key_set() == idents(MASS_FRESH)


def test_empty_event_is_a_dry_run(mixed: PgSchema) -> None:
    result = invoke({})
    assert (result["dry_run"], result["deleted"]) == (True, 0)
    assert mixed.count() == 235


REPO = Path(__file__).resolve().parents[2]


def test_the_events_readme_replays_the_scheduled_event_with_a_fresh_id(mixed: PgSchema) -> None:
    text = (REPO / "events" / "README.md").read_text("utf-8")
    (command,) = re.findall(r"^(python3 -c .*) > /tmp/scheduled\.json$", text, re.MULTILINE)
    fresh = subprocess.run(
        ["/bin/sh", "-c", command], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    original = json.loads((REPO / "events" / "scheduled.json").read_text())
    replay = json.loads(fresh)
    assert replay["id"] != original["id"]
    assert {k: v for k, v in replay.items() if k != "id"} == {
        k: v for k, v in original.items() if k != "id"
    }
    assert invoke(original)["status"] == "completed"
    again = invoke(original)
    assert (again["status"], again["duplicate"]) == ("skipped", True)
    assert invoke(replay)["duplicate"] is False
