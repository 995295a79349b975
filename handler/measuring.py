"""The measuring step's result as the engine hands it on: typed, and mapped onto the Report once.

The engine (cleanup.py) takes the measurement (handler.db), applies the rules
(handler/rules.py) and gets a MeasuredRun; the guard, the dry run and the delete loop read
it, and `report_fields()` fills the Report's measured figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime

from psycopg import errors as pg_errors

from handler import db, lifecycle, rules
from handler.deleteloop import type_name
from handler.orphans import OrphanRun
from handler.report import KeptKeys, OrphanRule, TableStats, TenantStats, TypeStats
from handler.settings import BAILEYS_KEY_TYPES, DEFAULT_PROTECTED_KEY_TYPES, Settings


@dataclass(frozen=True)
class RuleFigures:
    """The report's TTL, orphan and tenant figures (field names as in the Report)."""

    expires_column: str | None
    expired: int
    expired_by_age: dict[str, int]
    auth_table: str | None
    orphan_rule: OrphanRule
    orphan_grace_days: int | None
    orphaned: int
    orphaned_tenants: int
    orphan_candidates: int
    orphaned_tenant_ids: list[str]
    top_tenants: list[TenantStats]


@dataclass(frozen=True)
class MeasuredRun:
    """What the measuring pass found, under the rules, before anything is deleted."""

    policy: db.Policy
    now: datetime  # the database clock's reading the cutoffs come from
    sizes: db.Sizes  # before the run, with the heap's pages
    before: TableStats
    total: rules.Totals
    by_type: dict[str, TypeStats]  # per key type; {} without a usable key-type column
    age_distribution: dict[str, int]
    no_timestamp: int
    out_of_range_timestamps: int
    oldest: datetime | None
    newest: datetime | None
    kept: list[KeptKeys]
    rules: RuleFigures
    # A partitioned table's leaves with their pages, read with the sizes (before the pass).
    leaves: list[db.Leaf] | None = None
    # Resuming a drain (handler/resume.py): each relation's first page, and the eligible keys
    # the pass counted before those pages.
    starts: dict[int, int] | None = None
    head_eligible: int = 0
    # Our own sender keys kept by their group's memory row: where that row is itself due, a
    # batch may delete it and a later batch the key, in the same run (docs/key-lifecycle.md).
    # An upper bound of those (telling them apart would read every memory row's heap).
    follows: int = 0

    @property
    def eligible(self) -> int:
        return self.total.eligible

    def report_fields(self) -> dict[str, object]:
        """The Report's measured figures (by_type apart: a live run adds what it deleted)."""
        return {
            "cutoff": self.policy.cutoff,
            "started_at": self.now,
            "eligible": self.total.eligible,
            "protected": self.total.protected,
            "before": self.before,
            "age_distribution": self.age_distribution,
            "no_timestamp": self.no_timestamp,
            "out_of_range_timestamps": self.out_of_range_timestamps,
            "oldest": self.oldest,
            "newest": self.newest,
            "kept": self.kept,
        } | {f.name: getattr(self.rules, f.name) for f in fields(self.rules)}


def table_stats(sizes: db.Sizes, keys: int) -> TableStats:
    return TableStats(
        keys=keys,
        table_bytes=sizes.table_bytes,
        index_bytes=sizes.index_bytes,
        total_bytes=sizes.total_bytes,
    )


def kept(counts: list[db.TypeCounts], policy: db.Policy) -> list[KeptKeys]:
    """What the key lifecycle kept of the aged (or expired) keys, per type and reason."""
    result = []
    for reason, (key_type, why) in lifecycle.KEEP_REASONS.items():
        n = sum(c.kept.get(reason, 0) for c in counts if c.key_type not in policy.protected)
        if n:
            result.append(KeptKeys(key_type=key_type, keys=n, reason=why))
    return result


@dataclass(frozen=True)
class Retention:
    """Each key type's retention in days, as the run applies it."""

    settings: Settings
    days: int  # the run's retention (--retention-days, else CLEANUP_RETENTION_DAYS)
    policy: db.Policy

    def of(self, key_type: str | None) -> int | None:
        """A type's retention in days; None for a protected type, and for a key of no known
        type in the encoded layout (never deleted). A NULL type column: the default."""
        if key_type is None and self.settings.layout == "encoded":
            return None
        if key_type is not None and key_type in self.policy.protected:
            return None
        if key_type is not None and key_type in self.policy.type_cutoffs:
            return self.settings.type_retention_days[key_type]
        return self.days


def type_figures(
    settings: Settings,
    target: db.Target,
    counts: list[db.TypeCounts],
    retention: Retention,
    *,
    orphans: bool,
    holds_types: Callable[[db.Target, list[str | None]], bool],
    notes: list[str],
) -> dict[str, TypeStats]:
    """The per-type figures; {} without a key-type column, or one that plainly holds no key
    types (`holds_types` notes why). Configured types that match no key get a note too."""
    s = settings
    if not target.has_key_types:
        return {}
    types = [c.key_type for c in counts]
    keys = sum(c.keys for c in counts)
    # Encoded: the types are parsed from the keys, spelt as Baileys spells them by construction.
    if keys and target.encoded is None and not holds_types(target, types):
        return {}  # not key types
    unknown = sum(c.keys for c in counts if c.key_type is None)
    if target.encoded is not None and unknown:
        notes.append(
            f"{unknown:,} key{'' if unknown == 1 else 's'} of no known Baileys type kept "
            f"(creds rows among them): the key column ({target.encoded.key_column}) does not start "
            "with a type Baileys writes followed by '-'"
        )
    if keys:
        extra = [t for t in s.extra_protected_key_types if t not in DEFAULT_PROTECTED_KEY_TYPES]
        notes.extend(
            rules.unmatched_type_notes(
                {
                    "CLEANUP_PROTECTED_KEY_TYPES": extra,
                    "CLEANUP_TYPE_RETENTION_DAYS": list(s.type_retention_days),
                },
                [t for t in types if t is not None],
                BAILEYS_KEY_TYPES,
            )
        )
    return {
        type_name(c.key_type): rules.type_stats(c, retention.of(c.key_type), orphans=orphans)
        for c in counts
    }


def rule_figures(
    settings: Settings,
    target: db.Target,
    measured: db.Measurement,
    total: rules.Totals,
    bucket_edges: list[datetime],
    orphan_run: OrphanRun,
    *,
    verbose: bool,
) -> RuleFigures:
    """The report's TTL, orphan and tenant figures."""
    s, o = settings, orphan_run
    ids = [t.tenant for t in o.orphaned if t.tenant is not None]
    return RuleFigures(
        expires_column=target.expires_column,
        expired=total.expired,
        expired_by_age=rules.expired_by_age(measured.types, bucket_edges),
        auth_table=o.auth.qualified if o.auth else s.auth_table,
        orphan_rule=o.state,
        orphan_grace_days=s.orphan_grace_days if s.orphan_rule else None,
        orphaned=total.orphaned,
        orphaned_tenants=len(ids),
        orphan_candidates=o.candidate_count,
        orphaned_tenant_ids=ids[: rules.MAX_ORPHANED_TENANT_IDS] if verbose else [],
        top_tenants=rules.top_tenants(measured.tenants, s.top_tenants, orphans=o.applied),
    )


def after_stats(
    conn: db.Conn, target: db.Target, before: TableStats, deleted: int, *, notes: list[str]
) -> TableStats | None:
    """Sizes after a live run, measured again. Keys are not recounted: the first pass over a
    table just after a mass DELETE visits every dead row and sets its hint bits, which cost
    2.4 s at 1M rows and 11 s at 4M in bench/ and stalled the application's writers.
    keys_counted=False says the figure is before - deleted."""
    try:
        return table_stats(db.sizes(conn, target), before.keys - deleted).model_copy(
            update={"keys_counted": False}
        )
    except (pg_errors.LockNotAvailable, pg_errors.QueryCanceled):
        notes.append("after-run measurement timed out; sizes after the run are unknown")
        return None


def measured_run(
    measured: db.Measurement,
    policy: db.Policy,
    now: datetime,
    sizes: db.Sizes,
    *,
    target: db.Target,
    settings: Settings,
    retention_days: int,
    bucket_edges: list[datetime],
    orphan_run: OrphanRun,
    verbose: bool,
    holds_types: Callable[[db.Target, list[str | None]], bool],
    notes: list[str],
) -> MeasuredRun:
    """The measuring pass's counts under the rules: the figures over every key type, per type
    and per rule."""
    counts = measured.types
    orphans = db.applies_orphans(target, policy)
    total = rules.totals(counts, orphans=orphans)
    head = sum(c.head_eligible + (c.head_orphan_extra if orphans else 0) for c in counts)
    by_type = type_figures(
        settings,
        target,
        counts,
        Retention(settings, retention_days, policy),
        orphans=orphans,
        holds_types=holds_types,
        notes=notes,
    )
    return MeasuredRun(
        policy=policy,
        now=now,
        sizes=sizes,
        before=table_stats(sizes, sum(c.keys for c in counts)),
        total=total,
        by_type=by_type,
        age_distribution=rules.age_distribution(counts, bucket_edges),
        # Without a timestamp column no key has one: not "never deleted" (the pre-key window and
        # the orphan rule need none), said in a note instead.
        no_timestamp=sum(c.keys - c.with_timestamp - c.out_of_range for c in counts)
        if target.timestamp_column is not None
        else 0,
        out_of_range_timestamps=sum(c.out_of_range for c in counts),
        oldest=min((c.oldest for c in counts if c.oldest), default=None),
        newest=max((c.newest for c in counts if c.newest), default=None),
        kept=kept(counts, policy),
        follows=sum(
            c.kept.get("own_sender_key", 0) for c in counts if c.key_type not in policy.protected
        ),
        rules=rule_figures(
            settings, target, measured, total, bucket_edges, orphan_run, verbose=verbose
        ),
        head_eligible=head,
    )
