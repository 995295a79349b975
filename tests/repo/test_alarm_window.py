"""The "no successful run" alarm fits the schedule: its window is the schedule's longest gap
between two runs plus an hour, within CloudWatch's limits, and schedules it cannot watch are
refused at deploy.

template.yaml derives the window through conditions on the crontab's weekday field; here a
small crontab parser walks three weeks of the schedule and measures the longest gap, and each
schedule's resolved template is compared with it.
"""

from __future__ import annotations

import itertools
import math
from datetime import datetime, timedelta

import pytest

from tests.support.template import Stack

DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


# CloudWatch: Period x EvaluationPeriods at most 7 days for periods of an hour or more.
MAX_RANGE_S = 7 * 86400


MARGIN_H = 1


def _field(text: str, low: int, high: int, names: list[str] | None = None) -> set[int]:
    values: set[int] = set()
    for item in text.split(","):
        part, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if part == "*":
            start, end = low, high
        else:
            first, _, last = part.partition("-")
            start = names.index(first) if names else int(first)
            end = (names.index(last) if names else int(last)) if last else start
        values |= set(range(start, end + 1, step))
    return values


def longest_gap_hours(crontab: str) -> float:
    """The longest time between two consecutive runs of a `m h * * dow` crontab, in hours."""
    minute, hour, dom, month, dow = crontab.split(" ")
    assert (dom, month) == ("*", "*")
    minutes, hours = _field(minute, 0, 59), _field(hour, 0, 23)
    weekdays = _field(dow, 0, 6, DAYS) if dow != "*" else set(range(7))
    start = datetime(2026, 1, 4)  # a Sunday
    runs = [
        start + timedelta(days=d, hours=h, minutes=m)
        for d in range(21)
        if d % 7 in weekdays
        for h in sorted(hours)
        for m in sorted(minutes)
    ]
    return max((b - a).total_seconds() / 3600 for a, b in itertools.pairwise(runs))


def _alarm(crontab: str) -> dict[str, object]:
    alarm: dict[str, object] = Stack(Schedule=crontab).prop("NoSuccessfulRunAlarm")
    return alarm


def _window_hours(alarm: dict[str, object]) -> int:
    periods = {m["MetricStat"]["Period"] for m in alarm["Metrics"] if "MetricStat" in m}  # type: ignore[attr-defined,index]
    assert periods == {3600}
    assert alarm["DatapointsToAlarm"] == alarm["EvaluationPeriods"]
    evaluation = alarm["EvaluationPeriods"]
    assert isinstance(evaluation, int)
    assert 3600 * evaluation <= MAX_RANGE_S, "beyond what CloudWatch accepts"
    assert f"last {evaluation} hours" in str(alarm["AlarmDescription"])
    return evaluation


@pytest.mark.parametrize(
    ("crontab", "gap_h", "window_h"),
    [
        ("0 3 * * *", 24, 25),  # the default
        ("30 2 * * MON-FRI", 72, 73),  # the Schedule parameter's own example
        ("15 1 * * SAT,SUN", 144, 145),
        ("0 4 * * MON,WED,FRI", 72, 73),
        ("0 */6 * * *", 6, 25),
        ("0 * * * *", 1, 25),
        ("0 3 * * MON-SAT", 48, 49),
        ("0 3 * * SUN-THU", 72, 73),
        ("0 3,15 * * TUE,FRI", 84, 97),
        ("0 3 * * MON,THU", 96, 97),
        ("0 3 * * SUN-SAT", 24, 25),
    ],
)
def test_the_alarm_window_is_the_longest_gap_plus_an_hour(
    crontab: str, gap_h: int, window_h: int
) -> None:
    assert longest_gap_hours(crontab) == gap_h
    assert _window_hours(_alarm(crontab)) == window_h


def _weekday_fields() -> list[str]:
    """Every weekday field the Schedule pattern accepts, up to the order of the names."""
    fields = ["*"]
    for size in range(2, 8):
        fields += [",".join(c) for c in itertools.combinations(DAYS, size)]
    ranges = [f"{a}-{b}" for a, b in itertools.combinations(DAYS, 2)]
    fields += ranges
    fields += [f"{r},{d}" for r in ranges for d in DAYS if d not in r]
    fields += [f"{d},{r}" for r in ranges[:6] for d in DAYS[3:]]
    return fields


def test_every_accepted_weekday_field_gets_a_window_that_covers_its_gap() -> None:
    checked = 0
    for dow in _weekday_fields():
        crontab = f"0 3 * * {dow}"
        gap = longest_gap_hours(crontab)
        window = _window_hours(_alarm(crontab))
        # Never fires between two healthy runs; with one run a day, exactly gap + 1 hour.
        assert window == min(math.ceil(gap) + MARGIN_H, 168), crontab
        checked += 1
    assert checked > 200


@pytest.mark.parametrize(
    "crontab",
    [
        "0 3 1,15 * *",  # twice a month: 408 h between the 15th and the 1st
        "0 3 1 * *",  # monthly
        "0 3 */2 * *",  # every other day of the month
        "0 3 * 1-6 *",  # half of the year
        "0 3 * * MON",  # weekly: 168 h plus a margin is past CloudWatch's 7 days
        "0 3 * * MON-WED,FRI-SAT",  # two ranges: the template reads at most one
        "0 3 * * FRI-MON",  # a range round the week end
        "0 3 * * MON-MON",
    ],
)
def test_schedules_the_alarm_cannot_watch_are_refused(crontab: str) -> None:
    with pytest.raises(ValueError, match="Schedule"):
        Stack(Schedule=crontab)
