"""Invocation events: strict parsing into flags, and fuzzed events that are either a valid run or
the one validation error, deleting only when valid and live.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handler.app import Request, lambda_handler, parse_event
from handler.local import LocalContext
from handler.settings import ConfigError, Settings
from tests.support.db import KeyRow, PgSchema
from tests.support.handler import (
    FRESH,
    OLD,
    PROTECTED,
    SCHEDULED_EVENT_ID,
    idents,
    invoke,
    scheduled_event,
    seed_mixed,
    set_lambda_env,
)


def test_empty_event_is_a_dry_run() -> None:
    request = parse_event({}, Settings.from_env({}))
    assert request.flags.dry_run is True
    assert (request.scheduled, request.event_id) == (False, None)


def test_scheduled_event_is_live_and_carries_its_id() -> None:
    request = parse_event(scheduled_event(), Settings.from_env({}))
    assert request.flags.dry_run is False
    assert (request.scheduled, request.event_id) == (True, SCHEDULED_EVENT_ID)


def test_scheduled_event_is_dry_when_cleanup_dry_run_is_set() -> None:
    settings = Settings.from_env({"CLEANUP_DRY_RUN": "true"})
    assert parse_event(scheduled_event(), settings).flags.dry_run is True
    # The environment's safety switch wins over a detail asking for a live run.
    assert parse_event(scheduled_event(dry_run=False), settings).flags.dry_run is True


def test_scheduled_event_takes_flags_from_its_detail() -> None:
    request = parse_event(
        scheduled_event(dry_run=True, retention_days=45, verbose=True), Settings.from_env({})
    )
    flags = request.flags
    assert (flags.dry_run, flags.retention_days, flags.verbose) == (True, 45, True)


BAD_EVENTS = [
    pytest.param({"dryrun": False}, "dryrun", id="unknown-key"),
    pytest.param({"dry_run": "false"}, "dry_run", id="string-for-bool"),
    pytest.param({"dry_run": 0}, "dry_run", id="int-for-bool"),
    pytest.param({"dry_run": False, "retention_days": 0}, "retention_days", id="retention-0"),
    pytest.param({"dry_run": False, "retention_days": -5}, "retention_days", id="negative"),
    pytest.param({"dry_run": False, "retention_days": 10**9}, "retention_days", id="huge"),
    pytest.param({"dry_run": False, "retention_days": "30"}, "retention_days", id="str-days"),
    pytest.param({"dry_run": False, "retention_days": 30.5}, "retention_days", id="float-days"),
    pytest.param({"dry_run": False, "verbose": None}, "verbose", id="null-flag"),
    pytest.param([{"dry_run": False}], "expected a JSON object", id="list"),
    pytest.param("live", "expected a JSON object", id="string"),
    pytest.param(None, "expected a JSON object", id="null"),
    pytest.param({"dry_run": False, "nested": {"dry_run": False}}, "nested", id="nested-junk"),
]


@pytest.mark.parametrize(("event", "field"), BAD_EVENTS)
def test_bad_event_fails_naming_the_field_and_deletes_nothing(
    mixed: PgSchema, event: Any, field: str
) -> None:
    before = mixed.key_set()
    with pytest.raises(ConfigError, match="invalid flags") as info:
        invoke(event)
    assert field in str(info.value)
    assert mixed.key_set() == before


@pytest.mark.parametrize(
    ("detail", "field"),
    [
        pytest.param({"dry_run": "no"}, "dry_run", id="string-for-bool"),
        pytest.param({"dryrun": True}, "dryrun", id="unknown-key"),
        pytest.param(None, "expected a JSON object", id="null-detail"),
    ],
)
def test_bad_scheduled_detail_fails_and_deletes_nothing(
    mixed: PgSchema, detail: Any, field: str
) -> None:
    event = scheduled_event()
    event["detail"] = detail
    before = mixed.key_set()
    with pytest.raises(ConfigError, match="scheduled event's detail") as info:
        invoke(event)
    assert field in str(info.value)
    assert mixed.key_set() == before


@pytest.mark.parametrize(
    "extra",
    [{"dry_run": True}, {"detial": {"dry_run": True}}],
    ids=["dry_run-beside-detail", "misspelt-detail"],
)
def test_a_scheduled_events_unknown_top_level_key_is_refused_naming_it(
    mixed: PgSchema, extra: dict[str, Any]
) -> None:
    """`"dry_run": true` put beside the detail, or a detail misspelt: refused, not a live run."""
    event = scheduled_event()
    event.update(extra)
    before = mixed.key_set()
    with pytest.raises(ConfigError, match="invalid event") as info:
        invoke(event)
    assert repr(next(iter(extra))) in str(info.value)
    assert mixed.key_set() == before


def test_a_replayed_scheduled_event_is_accepted(mixed: PgSchema) -> None:
    """EventBridge adds `replay-name` to an event replayed from an archive: part of the
    envelope, not an unknown key. The replay runs like the schedule (here a dry run)."""
    event = scheduled_event(dry_run=True)
    event["replay-name"] = "after-the-outage"
    before = mixed.key_set()
    result = invoke(event)
    assert result["status"] == "completed"
    assert mixed.key_set() == before


def test_other_eventbridge_events_are_refused(mixed: PgSchema) -> None:
    event = scheduled_event()
    event["detail-type"] = "EC2 Instance State-change Notification"
    before = mixed.key_set()
    with pytest.raises(ConfigError, match="not a scheduled event"):
        invoke(event)
    assert mixed.key_set() == before


def test_retention_below_the_minimum_is_refused_even_from_an_event(
    pg: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_mixed(pg)
    set_lambda_env(monkeypatch, pg, CLEANUP_MIN_RETENTION_DAYS="40", CLEANUP_RETENTION_DAYS="60")
    before = pg.key_set()
    with pytest.raises(ConfigError, match="CLEANUP_MIN_RETENTION_DAYS") as info:
        invoke({"dry_run": False, "retention_days": 35, "force": True})
    assert "retention_days" in str(info.value)
    assert pg.key_set() == before
    with pytest.raises(ConfigError, match="CLEANUP_MIN_RETENTION_DAYS"):
        invoke(scheduled_event(retention_days=35))
    assert pg.key_set() == before


def test_retention_from_the_event_reaches_the_engine(mixed: PgSchema) -> None:
    # 50 days: the 60-day sessions go, the 45-day pre-keys stay.
    result = invoke({"dry_run": False, "retention_days": 50})
    assert (result["retention_days"], result["deleted"]) == (50, 40)
    assert mixed.key_set() == idents(OLD[40:] + PROTECTED + FRESH)


def test_bad_settings_fail_naming_the_variable(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLEANUP_BATCH_SIZE", "lots")
    with pytest.raises(ConfigError, match="CLEANUP_BATCH_SIZE"):
        invoke({"dry_run": False})
    assert mixed.count() == 235


FLAG_NAMES = ["dry_run", "verbose", "retention_days", "force", "vacuum"]


NEAR_MISSES = ["dryrun", "dry-run", "Dry_run", "DRY_RUN", "retention", "retentionDays", "forced"]


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["true", "false", "0", "1", "30", "", "null", "yes"])
)


junk = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


flag_objects = st.dictionaries(
    st.sampled_from(FLAG_NAMES + NEAR_MISSES) | st.text(max_size=10), junk, max_size=6
)


valid_flag_values = st.fixed_dictionaries(
    {},
    optional={
        "dry_run": st.booleans(),
        "verbose": st.booleans(),
        "retention_days": st.integers(min_value=-5, max_value=4000),
        "force": st.booleans(),
        "vacuum": st.booleans(),
    },
)


def deeply_nested(depth: int) -> Any:
    value: Any = {"dry_run": False}
    for _ in range(depth):
        value = {"detail": value}
    return value


scheduled = st.builds(
    lambda detail, extra: {
        "version": "0",
        "id": "fuzz-event",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "detail": detail,
        **extra,
    },
    detail=flag_objects | valid_flag_values | junk,
    # Envelope keys, and flags or a detail put where EventBridge has none: refused.
    extra=st.dictionaries(
        st.sampled_from(["time", "region", "resources", "account", "dry_run", "detial"]),
        junk,
        max_size=2,
    ),
)


events = (
    flag_objects
    | valid_flag_values
    | junk
    | scheduled
    | st.builds(deeply_nested, st.integers(min_value=1, max_value=200))
    | st.builds(lambda n: {"dry_run": True, "padding": "x" * n}, st.integers(0, 300_000))
    | st.builds(lambda n: {"dry_run": False, "verbose": [0] * n}, st.integers(0, 50_000))
)


SETTINGS = Settings.from_env(
    {"DATABASE_URL": "postgresql://unused", "CLEANUP_MIN_RETENTION_DAYS": "7"}
)


ENVELOPE = {"version", "id", "detail-type", "source", "account", "time", "region", "resources"}
ENVELOPE |= {"detail"}


def is_valid_live_request(event: object) -> bool:
    """The independent oracle: what must be true of an event for it to delete."""
    if not isinstance(event, Mapping):
        return False
    if event.get("source") == "aws.events" and event.get("detail-type") == "Scheduled Event":
        if not set(event) <= ENVELOPE:
            return False
        flags = event.get("detail", {})
        live_by_default = True
    else:
        flags = event
        live_by_default = False
    if not isinstance(flags, Mapping) or not set(flags) <= set(FLAG_NAMES):
        return False
    for name in ("dry_run", "verbose", "force", "vacuum"):
        if name in flags and type(flags[name]) is not bool:
            return False
    days = flags.get("retention_days")
    if days is not None and (type(days) is not int or not 7 <= days <= 3650):
        return False
    if "dry_run" in flags:
        return flags["dry_run"] is False
    return live_by_default


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=events)
def test_every_event_is_a_valid_run_or_the_validation_error(event: object) -> None:
    outcome = _parse(event)  # any exception but ConfigError fails the test here
    if isinstance(outcome, ConfigError):
        assert str(outcome).startswith(("invalid flags", "invalid event"))
        assert not is_valid_live_request(event)
    else:
        assert (not outcome.flags.dry_run) == is_valid_live_request(event)


def _parse(event: object) -> Request | ConfigError:
    try:
        return parse_event(event, SETTINGS)
    except ConfigError as exc:
        return exc


KEYS = [KeyRow("c", "session", f"k{i}", 40 if i % 4 == 0 else 3) for i in range(40)]


@pytest.fixture
def handler_env(pg: PgSchema, monkeypatch: pytest.MonkeyPatch) -> PgSchema:
    pg.create_reference_table()
    pg.use_env(monkeypatch, CLEANUP_MIN_RETENTION_DAYS="7", CLEANUP_HISTORY="false")
    return pg


def refill(pg: PgSchema) -> None:
    """The same 40 keys, 10 of them 40 days old, before every example."""
    with pg.connect() as conn:
        conn.execute("TRUNCATE whatsapp_keys")
    pg.insert_keys(KEYS)


def test_fuzzed_events_delete_only_when_valid_and_live(handler_env: PgSchema) -> None:
    # Hypothesis drives an inner function, so that each example starts from a full table
    # (refill) while the schema fixture is set up once: a fixture shared across examples would
    # let the first live example delete the old keys, after which "nothing deleted" holds
    # whatever the handler does.
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(event=events)
    def example(event: Any) -> None:
        refill(handler_env)
        check_deletes_only_when_valid_and_live(handler_env, event)

    example()


def check_deletes_only_when_valid_and_live(pg: PgSchema, event: Any) -> None:
    assert pg.count() == len(KEYS)
    try:
        result = lambda_handler(event, cast(LambdaContext, LocalContext(timeout_s=120)))
    except ConfigError:
        assert pg.count() == len(KEYS)
        return
    if not is_valid_live_request(event) or result["status"] != "completed":
        assert result["deleted"] == 0
        assert pg.count() == len(KEYS)
    else:
        assert pg.count() == len(KEYS) - result["deleted"]
