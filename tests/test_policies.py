"""The run's small pure policies (handler/rules.py), without a database."""

from __future__ import annotations

import pytest

from handler.rules import guard_reason, unmatched_type_notes
from handler.settings import Settings

GUARD = Settings.from_env({"CLEANUP_GUARD_MIN_KEYS": "100", "CLEANUP_MAX_DELETE_FRACTION": "0.5"})


@pytest.mark.parametrize(
    ("eligible", "keys"),
    [(99, 100), (500, 1000), (0, 0), (100, 201)],
    ids=["below-min-keys", "at-the-fraction", "empty-table", "just-under-half"],
)
def test_the_guard_lets_a_run_through_at_or_below_its_limits(eligible: int, keys: int) -> None:
    assert guard_reason(eligible, keys, GUARD, dry_run=False) is None
    assert guard_reason(eligible, keys, GUARD, dry_run=True) is None


def test_the_guard_stops_a_live_run_above_the_fraction_and_says_how_to_proceed() -> None:
    reason = guard_reason(501, 1000, GUARD, dry_run=False)
    assert reason is not None
    assert "501 of 1,000 keys (50%)" in reason
    assert "CLEANUP_MAX_DELETE_FRACTION=0.5" in reason
    assert "--force" in reason
    assert "Nothing was deleted" in reason


def test_the_guard_in_a_dry_run_says_a_live_run_would_stop() -> None:
    reason = guard_reason(900, 1000, GUARD, dry_run=True)
    assert reason is not None
    assert reason.startswith("safety guard: a live run would stop here: 900 of 1,000 keys")
    assert "--execute --force" in reason


def test_unmatched_types_are_noted_with_the_closest_existing_name() -> None:
    notes = unmatched_type_notes(
        {"CLEANUP_PROTECTED_KEY_TYPES": ["lid-maping", "session"], "CLEANUP_X": ["zzz"]},
        ["session", "lid-mapping", "pre-key"],
    )
    assert notes == [
        "CLEANUP_PROTECTED_KEY_TYPES: key type 'lid-maping' matches no key in the table "
        "(did you mean 'lid-mapping'?)",
        "CLEANUP_X: key type 'zzz' matches no key in the table",
    ]


def test_matching_types_give_no_note() -> None:
    assert unmatched_type_notes({"S": ["pre-key"]}, ["pre-key"]) == []
