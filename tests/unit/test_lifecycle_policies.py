"""The key lifecycle's pure policies (handler/lifecycle.py), without a database."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handler.lifecycle import Creds, build, jid_user, parse_creds, prekey_window
from handler.settings import INITIAL_PREKEY_COUNT


@pytest.mark.parametrize(
    ("jid", "user"),
    [
        ("5511999:12@s.whatsapp.net", "5511999"),
        ("5511999@s.whatsapp.net", "5511999"),
        ("100000000001:3@lid", "100000000001"),
        ("100000000001_1:3@lid", "100000000001"),
        ("no-at-sign", None),
        ("@s.whatsapp.net", None),
        (None, None),
        (42, None),
    ],
)
def test_jid_user_is_the_part_baileys_puts_in_signal_addresses(jid: object, user: str) -> None:
    assert jid_user(jid) == user


def test_creds_are_read_from_an_object_json_text_or_a_json_string_holding_it() -> None:
    value = {
        "nextPreKeyId": 813,
        "firstUnuploadedPreKeyId": 813,
        "me": {"id": "5511:2@s.whatsapp.net", "lid": "900:2@lid"},
    }
    expected = Creds(813, 813, ("5511", "900"))
    assert parse_creds(value) == expected
    assert parse_creds(json.dumps(value)) == expected
    assert parse_creds(json.dumps(json.dumps(value))) == expected
    # Counters as decimal text (some adapters stringify numbers), and no `me` yet.
    assert parse_creds({"nextPreKeyId": "9", "firstUnuploadedPreKeyId": "4"}) == Creds(9, 4, ())


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("{not json", "creds are not JSON"),
        ("[1, 2]", "creds are not a JSON object"),
        (None, "creds are not a JSON object"),
        ({}, "creds have no pre-key counters"),
        ({"nextPreKeyId": 5}, "creds have no pre-key counters"),
        ({"nextPreKeyId": True, "firstUnuploadedPreKeyId": 1}, "creds have no pre-key counters"),
        ({"nextPreKeyId": 0, "firstUnuploadedPreKeyId": 0}, "creds have no pre-key counters"),
        ({"nextPreKeyId": -5, "firstUnuploadedPreKeyId": 1}, "creds have no pre-key counters"),
        ({"nextPreKeyId": 1.5, "firstUnuploadedPreKeyId": 1}, "creds have no pre-key counters"),
        ({"nextPreKeyId": 5, "firstUnuploadedPreKeyId": 9}, "creds counters are inconsistent"),
    ],
)
def test_creds_that_cannot_be_read_say_why(raw: object, problem: str) -> None:
    assert parse_creds(raw) == problem


def test_the_window_keeps_the_unuploaded_the_newest_and_the_newest_uploaded() -> None:
    lo, hi = prekey_window(Creds(2101, 2001, ()), 1000)
    assert (lo, hi) == (1001, 2100)


@given(
    uploaded=st.integers(min_value=1, max_value=10**7),
    pending=st.integers(min_value=0, max_value=2000),
    window=st.integers(min_value=INITIAL_PREKEY_COUNT, max_value=10**5),
)
def test_the_window_always_holds_the_last_full_upload_and_the_newest_id(
    uploaded: int, pending: int, window: int
) -> None:
    creds = Creds(uploaded + pending + 1, uploaded + 1, ())
    lo, hi = prekey_window(creds, window)
    assert hi == creds.next_prekey_id - 1  # the newest id, checked at login
    # Every id of the last 812-key upload and every id not yet uploaded is kept.
    assert lo <= max(1, creds.first_unuploaded_prekey_id - INITIAL_PREKEY_COUNT)
    assert hi >= creds.first_unuploaded_prekey_id - 1


def test_build_counts_the_tenants_whose_creds_cannot_be_read() -> None:
    rows: list[tuple[str | None, object]] = [
        ("a", {"nextPreKeyId": 11, "firstUnuploadedPreKeyId": 11, "me": {"id": "1:1@s"}}),
        ("b", "{"),
        ("c", {}),
        ("d", {}),
        (None, {"nextPreKeyId": 2, "firstUnuploadedPreKeyId": 2}),
    ]
    facts, problems = build(rows, window=1000, prekey_age_only=False)
    assert facts.windows == {"a": (-989, 10)}
    assert facts.own_users == {"a": ("1",)}
    assert problems == {"creds are not JSON": 1, "creds have no pre-key counters": 2}


@pytest.mark.parametrize(
    "counters",
    [{}, {"nextPreKeyId": 10, "firstUnuploadedPreKeyId": 30}],
    ids=["no-counters", "inconsistent"],
)
def test_own_users_are_read_when_the_counters_are_unusable(counters: dict[str, int]) -> None:
    """Unusable counters keep the tenant's pre-keys (no window), but `me` still names the
    account's own devices: their sessions stay."""
    creds = {**counters, "me": {"id": "5511:2@s.whatsapp.net", "lid": "900:2@lid"}}
    facts, problems = build([("a", creds)], window=1000, prekey_age_only=False)
    assert facts.windows == {}
    assert facts.own_users == {"a": ("5511", "900")}
    assert sum(problems.values()) == 1
