"""The resume plan (handler/resume.py): which recorded points count, and the walk's order."""

from __future__ import annotations

from handler import db, resume
from handler.report import Drain, ResumePoint

A = db.Leaf(oid=10, schema="s", name="a", pages=100, relfilenode=1000)
B = db.Leaf(oid=11, schema="s", name="b", pages=50, relfilenode=1100)


def _point(leaf: db.Leaf, block: int, relfilenode: int | None = None) -> dict[str, int]:
    return {"oid": leaf.oid, "relfilenode": relfilenode or leaf.relfilenode, "block": block}


def test_a_point_counts_only_for_the_same_storage_and_a_page_within_it() -> None:
    starts, ignored = resume.starts([_point(A, 40), _point(B, 20, relfilenode=999)], [A, B])
    assert starts == {A.oid: 40}
    assert len(ignored) == 1
    assert "rewritten" in ignored[0]

    starts, ignored = resume.starts([_point(A, 101), {"oid": 7, "relfilenode": 1, "block": 1}], [A])
    assert starts == {}
    assert len(ignored) == 2

    starts, ignored = resume.starts([{"oid": A.oid, "relfilenode": 1000, "block": "x"}], [A])
    assert starts == {}
    assert ignored


def test_the_tail_first_then_the_head_only_when_it_holds_eligible_keys() -> None:
    first = {A.oid: 40}
    walk = resume.plan([A, B], first, eligible=10, head_eligible=0)
    assert [(s.leaf.oid, s.lo, s.hi, s.head) for s in walk] == [
        (10, 40, 100, False),
        (11, 0, 50, False),
    ]

    walk = resume.plan([A, B], first, eligible=10, head_eligible=3)
    assert [(s.leaf.oid, s.lo, s.hi, s.head) for s in walk] == [
        (10, 40, 100, False),
        (11, 0, 50, False),
        (10, 0, 40, True),
    ]

    # Every eligible key in the head: the tails are left out.
    walk = resume.plan([A, B], first, eligible=3, head_eligible=3)
    assert [(s.leaf.oid, s.lo, s.hi) for s in walk] == [(10, 0, 40)]

    assert resume.plan([A, B], {}, eligible=0, head_eligible=0) == []


def test_the_points_recorded_leave_out_relations_at_page_0() -> None:
    assert resume.points([A, B], {A.oid: 100, B.oid: 0}) == [
        ResumePoint(oid=A.oid, relfilenode=A.relfilenode, block=100)
    ]


def test_a_malformed_drain_is_not_used() -> None:
    assert resume.read_drain(None) == (None, None)
    drain, problem = resume.read_drain({"runs": "many"})
    assert drain is None
    assert problem is not None
    drain, problem = resume.read_drain({"runs": 2, "deleted": 5, "resume": []})
    assert drain == Drain(runs=2, deleted=5)
    assert problem is None
