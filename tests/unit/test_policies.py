"""The run's small pure policies (handler/rules.py), without a database: the guard, unmatched key
types, the orphan rule's refusal, top tenants.
"""

from __future__ import annotations

import pytest

from handler import rules
from handler.db import TenantCounts
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
    assert "501 of 1,000 keys (50.1%)" in reason
    assert "CLEANUP_MAX_DELETE_FRACTION=0.5" in reason
    assert "--force" in reason
    assert "Nothing was deleted" in reason


@pytest.mark.parametrize(
    ("eligible", "keys", "limit", "shown"),
    [
        (5_040, 10_000, "0.5", "50.4%"),  # .0% made it "50%": as if at the limit, not above
        (5_001, 10_000, "0.5", "50.01%"),  # .1% would make it "50.0%"
        (500_001, 1_000_000, "0.5", "50.0001%"),
        (1_251, 10_000, "0.125", "12.51%"),
    ],
)
def test_the_guard_never_rounds_the_share_down_to_the_limit_it_is_above(
    eligible: int, keys: int, limit: str, shown: str
) -> None:
    settings = Settings.from_env(
        {"CLEANUP_GUARD_MIN_KEYS": "100", "CLEANUP_MAX_DELETE_FRACTION": limit}
    )
    reason = guard_reason(eligible, keys, settings, dry_run=False)
    assert reason is not None
    assert f"{eligible:,} of {keys:,} keys ({shown}) are eligible, above" in reason


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


def refusal(**overrides: object) -> str | None:
    values: dict[str, object] = {
        "auth_table": "whatsapp_auth",
        "problem": None,
        "has_tenants": True,
        "orphaned_tenants": 1,
        "tenants": 4,
        "max_fraction": 0.5,
    }
    values.update(overrides)
    return rules.orphan_refusal(**values)  # type: ignore[arg-type]


def test_orphan_refusal_policy() -> None:
    assert refusal() is None
    assert refusal(orphaned_tenants=2) is None  # exactly one half: allowed
    assert "3 of 4 tenants with keys (75%)" in (refusal(orphaned_tenants=3) or "")
    assert refusal(orphaned_tenants=4, max_fraction=1.0) is None
    assert "not readable (no such table)" in (refusal(problem="no such table") or "")
    assert "has no tenant rows" in (refusal(has_tenants=False) or "")
    # Nothing with keys: nothing to orphan, nothing to refuse.
    assert refusal(orphaned_tenants=0, tenants=0) is None


def test_top_tenants_policy_ranks_by_keys_then_id() -> None:
    tenants = [
        TenantCounts("b", 5, 1, 0, 0, False),
        TenantCounts("a", 5, 2, 0, 0, False),
        TenantCounts("z", 9, 0, 9, 7, True, confirmed=True),
        TenantCounts(None, 1, 0, 0, 0, True, confirmed=True),
    ]
    applied = rules.top_tenants(tenants, 3, orphans=True)
    assert [(t.tenant, t.eligible, t.orphaned) for t in applied] == [
        ("z", 7, 9),
        ("a", 2, 0),
        ("b", 1, 0),
    ]
    refused = rules.top_tenants(tenants, 1, orphans=False)
    assert [(t.tenant, t.eligible, t.orphaned) for t in refused] == [("z", 0, 0)]
    assert [t.tenant for t in rules.orphaned_tenants(tenants)] == ["z"]
