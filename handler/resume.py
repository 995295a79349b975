"""Resuming a drain: where a partial run's delete loop stopped, and the next run's order.

A run stopped by its deadline records, per relation it deletes from (the table, or each leaf
partition), its oid, its storage file (relfilenode) and the page the loop reached. The next run
starts there, goes to the end, and then walks the head (the pages before it) only when its
measuring pass counted eligible keys there; likewise it skips the tail when every eligible key
is in the head. So the pages an earlier run cleaned are read once per run (by the measuring
pass), not twice. A resume point only changes the order and skips what this run's own pass
proved empty: it never changes which keys are eligible. See docs/engine.md#resuming-a-drain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import TypeAdapter, ValidationError

from handler import db
from handler.report import Drain, ResumePoint

_POINTS = TypeAdapter(list[ResumePoint])


@dataclass(frozen=True)
class Segment:
    """Pages [lo, hi) of one relation, walked in one go; `head`: pages an earlier run walked."""

    leaf: db.Leaf
    lo: int
    hi: int
    head: bool = False

    @property
    def pages(self) -> int:
        return self.hi - self.lo


def read_drain(raw: object) -> tuple[Drain | None, str | None]:
    """The last run's drain as recorded in its report; None and why when it cannot be used."""
    if raw is None:
        return None, None
    try:
        return Drain.model_validate(raw), None
    except ValidationError as exc:
        return None, f"its recorded drain is not valid ({exc.error_count()} error(s))"


def starts(points: Sequence[object], leaves: Sequence[db.Leaf]) -> tuple[dict[int, int], list[str]]:
    """Each relation's first page this run, from the last run's resume points, and why any
    point was ignored. A point counts only for one of this run's relations, with the same
    storage file (a VACUUM FULL, CLUSTER or TRUNCATE gives a new one) and a page within it;
    every other relation starts at page 0."""
    try:
        valid = _POINTS.validate_python(list(points))
    except ValidationError as exc:
        return {}, [f"resume point not valid ({exc.error_count()} error(s)): starting at page 0"]
    by_oid = {leaf.oid: leaf for leaf in leaves}
    result: dict[int, int] = {}
    ignored: list[str] = []
    for point in valid:
        leaf = by_oid.get(point.oid)
        if leaf is None:
            ignored.append(f"resume point of relation {point.oid} ignored: not this run's table")
        elif point.relfilenode != leaf.relfilenode:
            ignored.append(
                f"resume point of {leaf.schema}.{leaf.name} ignored: its storage was rewritten "
                "(VACUUM FULL, CLUSTER or TRUNCATE); starting at page 0"
            )
        elif point.block > leaf.pages:
            ignored.append(
                f"resume point of {leaf.schema}.{leaf.name} ignored: page {point.block:,} is past "
                f"its {leaf.pages:,} pages; starting at page 0"
            )
        elif point.block:
            result[leaf.oid] = point.block
    return result, ignored


def plan(
    leaves: Sequence[db.Leaf], first: Mapping[int, int], *, eligible: int, head_eligible: int
) -> list[Segment]:
    """The order of the walk: each relation from its first page to its end (the tail), then the
    heads; a part whose eligible keys the measuring pass counted as 0 is left out."""
    tails = [
        Segment(leaf, first.get(leaf.oid, 0), leaf.pages)
        for leaf in leaves
        if eligible > head_eligible and first.get(leaf.oid, 0) < leaf.pages
    ]
    heads = [
        Segment(leaf, 0, first[leaf.oid], head=True)
        for leaf in leaves
        if head_eligible > 0 and first.get(leaf.oid, 0) > 0
    ]
    return tails + heads


def points(leaves: Sequence[db.Leaf], reached: Mapping[int, int]) -> list[ResumePoint]:
    """The resume points a partial (or failed) run records: per relation, the page the next
    run starts at."""
    return [
        ResumePoint(oid=leaf.oid, relfilenode=leaf.relfilenode, block=reached[leaf.oid])
        for leaf in leaves
        if reached.get(leaf.oid, 0) > 0
    ]
