"""bench --through-vacuum's pure parts (bench/vacuumtail.py): when the tail after a variant may
end, the stretches a vacuum ran, and the writer's writes split by both."""

from __future__ import annotations

import pytest

from bench.vacuumtail import intervals, over_threshold, phases, settled


def test_a_leaf_past_its_threshold_is_over() -> None:
    # (oid, n_dead_tup, threshold, autovacuum_count): autovacuum runs when dead > threshold
    assert not over_threshold([(1, 800_050, 800_050.0, 0)])
    assert over_threshold([(1, 10, 50.0, 0), (2, 800_051, 800_050.0, 0)])
    assert not over_threshold([])


@pytest.mark.parametrize(
    ("vacuuming", "over", "waited_s", "expected"),
    [
        (False, False, 6.0, True),
        (False, False, 1.0, False),  # the deleting session's statistics may not be in yet
        (True, False, 60.0, False),  # a vacuum of the table still running
        (False, True, 60.0, False),  # dead rows past the threshold: one is due
    ],
)
def test_the_tail_ends_only_when_no_vacuum_runs_or_is_due(
    vacuuming: bool, over: bool, waited_s: float, expected: bool
) -> None:
    assert settled(vacuuming=vacuuming, over=over, waited_s=waited_s, min_s=5.0) is expected


def test_vacuum_stretches_from_samples() -> None:
    samples = [(0.0, False), (1.0, True), (2.0, True), (3.0, False), (4.0, True)]
    assert intervals(samples, end=9.0) == [(1.0, 3.0), (4.0, 9.0)]
    assert intervals([(0.0, False)], end=1.0) == []


def _op(t: float, ms: float) -> list[object]:
    return [t, ms / 1000, "new", "", 1, t, "insert"]


def test_writes_split_by_deletes_tail_and_vacuum() -> None:
    ops = [
        _op(9.0, 500),  # idle baseline: in neither stretch
        _op(10.0, 2),  # deletes' first write
        _op(12.0, 60),  # deletes, vacuum running (11-13)
        _op(20.0, 3),  # exactly at the deletes' end: counted in the deletes
        _op(25.0, 200),  # after, vacuum running (24-40)
        _op(30.0, 1_400),
        _op(45.0, 4),  # after, no vacuum
        _op(61.0, 9_000),  # after the tail's end: in neither
    ]
    got = phases(ops, (10.0, 20.0), 60.0, [(11.0, 13.0), (24.0, 40.0)])
    assert got["deletes"]["ops"] == 3
    assert got["deletes"]["max_ms"] == 60
    assert got["deletes"]["slow"] == 1
    assert got["deletes"]["over_150_ms"] == 0
    assert got["deletes, vacuum running"]["ops"] == 1
    assert got["deletes, vacuum running"]["seconds"] == 2.0
    assert got["deletes, no vacuum"]["ops"] == 2
    assert got["deletes, no vacuum"]["seconds"] == 8.0
    assert got["after"]["ops"] == 3
    assert got["after"]["seconds"] == 40.0
    assert got["after, vacuum running"]["ops"] == 2
    assert got["after, vacuum running"]["max_ms"] == 1_400
    assert got["after, vacuum running"]["over_150_ms"] == 2
    assert got["after, vacuum running"]["seconds"] == 16.0
    assert got["after, no vacuum"]["max_ms"] == 4
