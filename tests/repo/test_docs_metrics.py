"""docs/operations.md's metrics table names every metric the handler emits.

The emitted names come from two places, so that neither a dynamic name nor a new emitting
function slips by: the EMF blobs the handler prints for a live run, a dry run and a failure,
and every `name="..."` literal given to add_metric or single_metric in the handler's source.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from handler.observability import publish_failure, publish_report
from tests.support.notify import make_report

ROOT = Path(__file__).resolve().parents[2]


OPERATIONS = ROOT / "docs" / "operations.md"


def documented_metrics() -> set[str]:
    text = OPERATIONS.read_text("utf-8")
    table = text.split("| metric | unit | meaning |", 1)[1].split("\n\n", 1)[0]
    names: set[str] = set()
    for row in table.splitlines()[2:]:
        first_cell = row.split("|")[1]
        names |= set(re.findall(r"`(\w+)`", first_cell))
    return names


def emitted_at_run_time(capsys: pytest.CaptureFixture[str]) -> set[str]:
    capsys.readouterr()
    publish_report(make_report())
    publish_report(make_report(dry_run=True, deleted=0))
    publish_failure("live")
    names: set[str] = set()
    for line in capsys.readouterr().out.splitlines():
        if '"_aws"' in line:
            for directive in json.loads(line)["_aws"]["CloudWatchMetrics"]:
                names |= {metric["Name"] for metric in directive["Metrics"]}
    return names


def named_in_source() -> set[str]:
    # add_metric/single_metric literals, and the metrics declared in handler.report.FIGURES.
    pattern = re.compile(r"(?:(?:add_metric|single_metric)\(\s*name=|Metric\()\"(\w+)\"")
    names: set[str] = set()
    for path in (ROOT / "handler").rglob("*.py"):
        names |= set(pattern.findall(path.read_text("utf-8")))
    return names


def test_the_metric_finders_find_metrics() -> None:
    # Guards the checks below: a broken pattern would find nothing and pass.
    assert {"KeysDeleted", "Runs", "PacingWaitMs"} <= named_in_source()
    assert len(documented_metrics()) > 20


def test_every_emitted_metric_is_in_the_operations_metrics_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    emitted = emitted_at_run_time(capsys) | named_in_source()
    assert "KeysAgeOver30d" in emitted
    missing = emitted - documented_metrics()
    assert missing == set(), "metrics missing from docs/operations.md's table"


def test_the_metrics_table_names_no_metric_that_is_never_emitted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stale = documented_metrics() - emitted_at_run_time(capsys) - named_in_source()
    assert stale == set(), "docs/operations.md's table names metrics nobody emits"
