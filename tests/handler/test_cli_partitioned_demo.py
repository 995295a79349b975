"""`keys-cleanup --demo --partitions N`: the reference key table partitioned by hash of
company_id, cleaned live leaf by leaf."""

from __future__ import annotations

import pytest

from handler.cli import EXIT_OK, main
from tests.support.demo import run_demo_json


def test_the_partitioned_demo_deletes_what_the_plain_one_does() -> None:
    plain = run_demo_json("--demo-rows", "6000")
    partitioned = run_demo_json("--demo-rows", "6000", "--partitions", "4")
    assert partitioned["status"] == "completed"
    assert partitioned["deleted"] > 0
    # The same seed: the same keys, the same eligible ones, the same deletions.
    for figure in ("eligible", "deleted", "protected"):
        assert partitioned[figure] == plain[figure], figure


@pytest.mark.parametrize(
    "argv",
    [
        ["--partitions", "4"],
        ["--demo", "--partitions", "1"],
        ["--demo", "--layout", "encoded", "--partitions", "4"],
    ],
)
def test_partitions_outside_the_reference_demo_are_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) != EXIT_OK
    assert "--partitions takes 2..64 and goes with --demo" in capsys.readouterr().err
