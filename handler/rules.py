"""A run's policies, as small pure functions: the safety guard, the notes on configured key
types that match no key, whether to apply the orphan rule, and how the measured counts of the
three rules (age, TTL, orphans) add up into the report's figures.

The SQL that applies them lives in handler/db/predicates.py (`eligible_predicate`); see
docs/rules.md.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise

from handler.domain import TenantCounts, TypeCounts
from handler.report import BUCKET_LABELS, TenantStats, TypeStats, share_percent
from handler.settings import Settings, closest


def guard_reason(eligible: int, keys: int, settings: Settings, *, dry_run: bool) -> str | None:
    """Why the safety guard stops (or, in a dry run, would stop) this run; None when it passes.

    Below CLEANUP_GUARD_MIN_KEYS eligible keys the guard never stops a run: on a small table
    any fraction is cheap to lose and to see.
    """
    fraction = eligible / keys if keys else 0.0
    if eligible < settings.guard_min_keys or fraction <= settings.max_delete_fraction:
        return None
    numbers = (
        f"{eligible:,} of {keys:,} keys "
        f"({share_percent(fraction, settings.max_delete_fraction)}) are eligible, above "
        f"CLEANUP_MAX_DELETE_FRACTION={settings.max_delete_fraction:g}"
    )
    if dry_run:
        return (
            f"safety guard: a live run would stop here: {numbers}. Look at the numbers first "
            "(is the application still updating the timestamp column?); if they are right, "
            'run once with --execute --force (event: {"dry_run": false, "force": true}).'
        )
    return (
        f"safety guard: {numbers}. Check that the application still maintains the timestamp "
        'column; if the numbers are right, rerun once with --force (event: "force": true). '
        "Nothing was deleted."
    )


def unmatched_type_notes(
    configured: dict[str, list[str]], existing: list[str], known: Collection[str] = ()
) -> list[str]:
    """A note for each configured key type that names no key in the table.

    Matching stays exact: the note names the closest existing type, it never applies it. A
    name that is none of the `known` types either (Baileys' own, where the table holds them)
    is a typo a live run refuses (handler/checks.py); the note says so, with the closest of
    both.
    """
    notes = []
    for setting, names in configured.items():
        for name in names:
            if name in existing:
                continue
            typo = bool(known) and name not in known
            hint = closest(name, sorted({*existing, *known}) if typo else existing)
            notes.append(
                f"{setting}: key type {name!r} matches no key in the table"
                + (f" (did you mean {hint!r}?)" if hint else "")
                + ("; no key type Baileys writes either: a live run refuses it" if typo else "")
            )
    return notes


# Tenant ids listed in a verbose report: enough to act on, short enough to read.
MAX_ORPHANED_TENANT_IDS = 20


def orphan_refusal(
    *,
    auth_table: str,
    problem: str | None,
    has_tenants: bool,
    orphaned_tenants: int,
    tenants: int,
    max_fraction: float,
) -> str | None:
    """Why the orphan rule is refused for this run (a note; the other rules go on), or None.

    An unreadable or empty auth table, or one that would orphan more than `max_fraction` of the
    tenants with keys, says more about the setting (a wrong table name, a migration under way,
    a missing grant) than about the tenants: acting on it would wipe every tenant's keys.
    """
    if problem is not None:
        return f"orphan rule refused: auth table {auth_table} is not readable ({problem})"
    if not has_tenants:
        return f"orphan rule refused: auth table {auth_table} has no tenant rows"
    share = orphaned_tenants / tenants if tenants else 0.0
    if share > max_fraction:
        return (
            f"orphan rule refused: {orphaned_tenants:,} of {tenants:,} tenants with keys "
            f"({share:.0%}) have no row in {auth_table}, above "
            f"CLEANUP_MAX_ORPHAN_TENANT_FRACTION={max_fraction:g}; is it the right table?"
        )
    return None


def orphaned_tenants(tenants: Sequence[TenantCounts]) -> list[TenantCounts]:
    """The orphan rule's measured set, most keys first: tenants without an auth row, no key
    touched within the grace, and recorded so by the earlier runs (a NULL tenant is nobody's)."""
    found = [t for t in tenants if t.confirmed and t.tenant is not None]
    return sorted(found, key=lambda t: (-t.keys, t.tenant or ""))


def top_tenants(tenants: Sequence[TenantCounts], limit: int, *, orphans: bool) -> list[TenantStats]:
    """Up to `limit` tenants by key count, with their eligible and orphaned keys."""
    ranked = sorted(tenants, key=lambda t: (-t.keys, t.tenant or ""))[:limit]
    return [
        TenantStats(
            tenant=t.tenant,
            keys=t.keys,
            eligible=t.eligible + (t.orphan_extra if orphans else 0),
            orphaned=t.orphaned if orphans else 0,
        )
        for t in ranked
    ]


def buckets(newer: Sequence[int], with_timestamp: int) -> dict[str, int]:
    """Cumulative "newer than 1, 7, 14, 30 days" counts -> the five disjoint age buckets."""
    values = [newer[0], *(b - a for a, b in pairwise(newer))]
    values.append(with_timestamp - newer[-1])
    return dict(zip(BUCKET_LABELS, values, strict=True))


def age_distribution(counts: Sequence[TypeCounts], edges: Sequence[datetime]) -> dict[str, int]:
    """Every key with an in-range timestamp per age bucket."""
    newer = [sum(c.newer_than[edge] for c in counts) for edge in edges]
    return buckets(newer, sum(c.with_timestamp for c in counts))


def expired_by_age(counts: Sequence[TypeCounts], edges: Sequence[datetime]) -> dict[str, int]:
    """The expired keys per age bucket (empty without the TTL rule)."""
    if not any(c.expired_newer_than for c in counts):
        return {}
    newer = [sum(c.expired_newer_than.get(edge, 0) for c in counts) for edge in edges]
    return buckets(newer, sum(c.expired_with_timestamp for c in counts))


@dataclass(frozen=True)
class Totals:
    """The run's figures over every key type: each key counted once in `eligible`."""

    eligible: int
    protected: int
    expired: int
    orphaned: int


def type_stats(c: TypeCounts, retention_days: int | None, *, orphans: bool) -> TypeStats:
    """One key type's row: eligible by any applied rule, and what protection keeps."""
    return TypeStats(
        keys=c.keys,
        eligible=c.eligible + (c.orphan_extra if orphans else 0),
        protected=c.protected - (c.protected_orphaned if orphans else 0),
        retention_days=retention_days,
        expired=c.expired,
        orphaned=c.orphaned if orphans else 0,
        kept=0 if retention_days is None else sum(c.kept.values()),
    )


def totals(counts: Sequence[TypeCounts], *, orphans: bool) -> Totals:
    stats = [type_stats(c, None, orphans=orphans) for c in counts]
    return Totals(
        eligible=sum(t.eligible for t in stats),
        protected=sum(t.protected for t in stats),
        expired=sum(t.expired for t in stats),
        orphaned=sum(t.orphaned for t in stats),
    )
