"""The stalled-runs alarm (issue 17 item 6) watches the metric the handler emits, as it emits it.

The engine side (runs stuck partial counting up, Telegram ❌) runs against a real standby in
tests/engine/test_replica_lag.py.
"""

from __future__ import annotations

import pytest

from handler.report import STALLED_ALERT_RUNS
from tests.support.template import STACK, Stack, _emitted


def test_the_stalled_runs_alarm_watches_the_metric_the_handler_emits(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stack = Stack()
    emitted = _emitted(capsys)
    name = stack.prop("StalledRunsAlarm", "MetricName")
    assert name == "StalledRuns"
    assert name in emitted
    dims = {
        d["Name"]: stack.resolve(d["Value"]) for d in stack.prop("StalledRunsAlarm", "Dimensions")
    }
    assert dims == {"service": STACK, "mode": "live"}
    assert frozenset(dims) in emitted[name]
    assert stack.prop("StalledRunsAlarm", "Threshold") == STALLED_ALERT_RUNS
    assert stack.prop("StalledRunsAlarm", "ComparisonOperator") == "GreaterThanOrEqualToThreshold"
    assert stack.prop("StalledRunsAlarm", "TreatMissingData") == "notBreaching"
