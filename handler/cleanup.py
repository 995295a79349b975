"""The job itself: resolve the target, lock, measure, guard, delete in batches, measure, report.

It knows nothing about Lambda, Sentry or Telegram. It takes settings, flags and a deadline and
returns a Report; every entry point is a thin shell around `run_cleanup`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import psycopg
from psycopg import errors as pg_errors

from handler import db, pacing, rules
from handler.report import (
    BUCKET_LABELS,
    TREND_RUNS,
    KeyEntry,
    OrphanRule,
    Report,
    Status,
    TableStats,
    TrendPoint,
    TypeStats,
    reclaimable_estimate,
)
from handler.settings import (
    DEFAULT_PROTECTED_KEY_TYPES,
    ConfigError,
    Flags,
    Settings,
    check_database_url,
    closest,
)

# Waiting for a row another session holds is what stalls live writers (they queue behind the
# rows this batch already deleted), so a batch waits at most this long before its range is split.
ROW_WAIT_MS = 100
# Below this many milliseconds left, no new batch starts.
MIN_BATCH_BUDGET_MS = 20
# VACUUM is skipped with less time than this left: started, it would only be cancelled.
MIN_VACUUM_BUDGET_MS = 10_000


# How an unreadable auth table is described in the refusal note.
_AUTH_PROBLEMS: dict[type[Exception], str] = {
    pg_errors.UndefinedTable: "no such table",
    pg_errors.InsufficientPrivilege: "permission denied: grant SELECT on it to the job's role",
    pg_errors.UndefinedColumn: "it has no tenant column (CLEANUP_TENANT_COLUMN)",
    pg_errors.UndefinedFunction: "its tenant column cannot be compared with the key table's",
}


class CleanupError(RuntimeError):
    """The run failed. The message is safe to log: no DSN, password or key value."""


@dataclass(frozen=True)
class Progress:
    pages_done: int
    pages_total: int
    deleted: int
    batches: int


ProgressFn = Callable[[Progress], None]


def _remaining_ms(deadline: float | None) -> float:
    return float("inf") if deadline is None else (deadline - time.monotonic()) * 1000


def _table_stats(sizes: db.Sizes, keys: int) -> TableStats:
    return TableStats(
        keys=keys,
        table_bytes=sizes.table_bytes,
        index_bytes=sizes.index_bytes,
        total_bytes=sizes.total_bytes,
    )


def guard_reason(eligible: int, keys: int, settings: Settings, *, dry_run: bool) -> str | None:
    """Why the safety guard stops (or, in a dry run, would stop) this run; None when it passes.

    Below CLEANUP_GUARD_MIN_KEYS eligible keys the guard never stops a run: on a small table
    any fraction is cheap to lose and to see.
    """
    fraction = eligible / keys if keys else 0.0
    if eligible < settings.guard_min_keys or fraction <= settings.max_delete_fraction:
        return None
    numbers = (
        f"{eligible:,} of {keys:,} keys ({fraction:.0%}) are eligible, above "
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


def unmatched_type_notes(configured: dict[str, list[str]], existing: list[str]) -> list[str]:
    """A note for each configured key type that names no key in the table.

    Matching stays exact: the note names the closest existing type, it never applies it.
    """
    notes = []
    for setting, names in configured.items():
        for name in names:
            if name in existing:
                continue
            hint = closest(name, existing)
            notes.append(
                f"{setting}: key type {name!r} matches no key in the table"
                + (f" (did you mean {hint!r}?)" if hint else "")
            )
    return notes


def _age_distribution(counts: list[db.TypeCounts], edges: list[datetime]) -> dict[str, int]:
    """Cumulative "newer than 1, 7, 14, 30 days" counts -> the five disjoint buckets."""
    newer = [sum(c.newer_than[edge] for c in counts) for edge in edges]
    with_ts = sum(c.with_timestamp for c in counts)
    values = [newer[0], newer[1] - newer[0], newer[2] - newer[1], newer[3] - newer[2]]
    values.append(with_ts - newer[3])
    return dict(zip(BUCKET_LABELS, values, strict=True))


class _Run:
    """State of one run. Private: `run_cleanup` is the interface."""

    def __init__(
        self,
        settings: Settings,
        flags: Flags,
        deadline: float | None,
        progress: ProgressFn | None,
        event_id: str | None,
    ) -> None:
        self.event_id = event_id
        self.settings = settings
        self.flags = flags
        self.deadline = deadline
        self.progress = progress
        self.retention_days = flags.retention_days or settings.retention_days
        self.started = time.monotonic()
        self.notes: list[str] = list(settings.config_warnings)
        self.orphan_rule: OrphanRule = "off"
        self.orphaned: list[db.TenantCounts] = []

    def _base(self, target: db.Target | None) -> dict[str, object]:
        s = self.settings
        overrides = dict(s.type_retention_days) if s.key_type_column else {}
        return {
            "event_id": self.event_id,
            "dry_run": self.flags.dry_run,
            "table": target.qualified if target else s.table,
            "timestamp_column": s.timestamp_column,
            "key_type_column": s.key_type_column,
            "retention_days": self.retention_days,
            "retention_overrides": overrides,
            "protected_types": list(s.protected_key_types) if s.key_type_column else [],
        }

    def _duration_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def _report(self, **fields: object) -> Report:
        return Report.model_validate(
            {**fields, "notes": list(self.notes), "duration_ms": self._duration_ms()}
        )

    def execute(self, conn: db.Conn) -> Report:
        s = self.settings
        if db.server_version(conn) < db.MIN_SERVER_VERSION:
            raise ConfigError(
                "PostgreSQL 14 or newer is required (batches walk the table by TID range)"
            )
        db.set_timeouts(conn, statement_ms=s.statement_timeout_ms, lock_ms=s.lock_timeout_ms)
        schema, name = s.table_parts
        try:
            target = db.resolve_target(
                conn,
                schema,
                name,
                s.timestamp_column,
                s.key_type_column,
                s.timestamp_timezone,
                expires_column=s.expires_column,
                tenant_column=s.tenant_column,
            )
        except (LookupError, TypeError) as exc:
            raise ConfigError(str(exc)) from None
        self._check_rule_columns(target)
        self._check_timezone(target)

        if not db.try_lock(conn, target):
            return self._report(
                status="skipped",
                reason="another cleanup run holds the lock on this table; nothing was touched",
                **self._base(target),
            )
        try:
            history = s.history_enabled and not self.flags.dry_run
            if history and self.event_id is not None:
                done_at = self._completed_before(conn, target)
                if done_at is not None:
                    return self._report(
                        status="skipped",
                        duplicate=True,
                        reason=(
                            f"event {self.event_id} already completed at "
                            f"{done_at.isoformat(timespec='seconds')}; not run again"
                        ),
                        **self._base(target),
                    )
            report = self._locked(conn, target)
            report = self._record(conn, report) if history else report
            return self._with_trend(conn, report) if s.history_enabled else report
        finally:
            if not conn.closed and not conn.broken:
                db.unlock(conn, target)

    def _check_rule_columns(self, target: db.Target) -> None:
        s = self.settings
        if s.auth_table is not None and target.tenant_column is None:
            raise ConfigError(
                f"column {s.tenant_column} does not exist in {target.qualified}: the orphan rule "
                "(CLEANUP_AUTH_TABLE) needs CLEANUP_TENANT_COLUMN in both tables"
            )
        if (
            "expires_column" in s.model_fields_set
            and s.expires_column
            and not target.expires_column
        ):
            self.notes.append(
                f"CLEANUP_EXPIRES_COLUMN={s.expires_column}: no such column in "
                f"{target.qualified}; the TTL rule is off"
            )

    def _check_timezone(self, target: db.Target) -> None:
        """A `timestamp` column's zone must be known before anything is deleted by it."""
        zone = self.settings.timestamp_timezone
        naive = target.naive_timestamp or target.naive_expires
        column = f"{target.qualified}.{target.timestamp_column}"
        if not target.naive_timestamp and target.naive_expires:
            column = f"{target.qualified}.{target.expires_column}"
        if naive and zone is None:
            if not self.flags.dry_run:
                raise ConfigError(
                    f"column {column} is timestamp without time zone: set "
                    "CLEANUP_TIMESTAMP_TIMEZONE to the zone the application writes it in "
                    "(UTC if it writes UTC); a live run will not guess"
                )
            self.notes.append(
                f"column {column} is timestamp without time zone and CLEANUP_TIMESTAMP_TIMEZONE "
                "is not set: this dry run read it as UTC; a live run refuses until it is set"
            )
        elif not naive and zone is not None:
            self.notes.append(
                f"CLEANUP_TIMESTAMP_TIMEZONE={zone} not used: column {column} is timestamp with "
                "time zone"
            )

    def _completed_before(self, conn: db.Conn, target: db.Target) -> datetime | None:
        """When this event already completed, from the run history; None if not, or unknown.

        History is a side channel: a role that cannot read it gets a note, and the run goes on
        (the advisory lock still keeps two deliveries from running at once).
        """
        schema, name = self.settings.history_table_parts
        if self.event_id is None:
            return None
        try:
            if not db.history_exists(conn, schema, name):
                return None
            return db.completed_run_for_event(conn, schema, name, self.event_id, target.qualified)
        except psycopg.Error as exc:
            if conn.broken:
                raise
            self.notes.append(
                f"run history not readable ({type(exc).__name__}): a repeated delivery of this "
                "event is not recognised; see keys-cleanup init-db for the grants"
            )
            return None

    def _record(self, conn: db.Conn, report: Report) -> Report:
        """Add the run to the history table, creating it when the role may.

        History is a side channel: failing to write it is a note on the report, never a failed
        run (the rows are already deleted).
        """
        schema, name = self.settings.history_table_parts
        try:
            if not db.history_exists(conn, schema, name):
                db.create_history(conn, schema, name)
            db.insert_history(conn, schema, name, history_row(report))
        except psycopg.Error as exc:
            if conn.broken:
                raise
            note = f"run history not recorded ({type(exc).__name__}; see keys-cleanup init-db)"
            return report.model_copy(update={"notes": [*report.notes, note]})
        return report

    def _with_trend(self, conn: db.Conn, report: Report) -> Report:
        """The last recorded runs' keys and sizes (this one included when recorded). Like
        recording, a side channel: a failed read is a note on the report, never a failure."""
        schema, name = self.settings.history_table_parts
        try:
            if not db.history_exists(conn, schema, name):
                return report
            points = db.recent_runs(conn, schema, name, report.table, TREND_RUNS)
        except psycopg.Error as exc:
            if conn.broken:
                raise
            note = f"run history not read ({type(exc).__name__}); no trend this run"
            return report.model_copy(update={"notes": [*report.notes, note]})
        trend = [
            TrendPoint(finished_at=p.finished_at, keys=p.keys, total_bytes=p.total_bytes)
            for p in points
        ]
        return report.model_copy(update={"trend": trend})

    def _policy(
        self, conn: db.Conn, target: db.Target
    ) -> tuple[db.Policy, datetime, dict[int, datetime]]:
        """The cutoffs, bucket edges and the TTL's "now", all from one reading of the database
        clock; and the orphan rule when its auth table is usable."""
        s = self.settings
        overrides = dict(s.type_retention_days) if s.key_type_column else {}
        days = [self.retention_days, *db.BUCKET_DAYS, *overrides.values(), s.orphan_grace_days]
        now, edges = db.clock(conn, days)
        policy = db.Policy(
            cutoff=edges[self.retention_days],
            protected=tuple(s.protected_key_types) if s.key_type_column else (),
            type_cutoffs={t: edges[d] for t, d in overrides.items()},
            expires_now=now if target.expires_column else None,
            orphans=self._orphan_rule(conn, target, edges[s.orphan_grace_days]),
        )
        return policy, now, edges

    def _retention_for(self, key_type: str | None, policy: db.Policy) -> int | None:
        """A type's retention in days; None for a protected type. A NULL type: the default."""
        if key_type is not None and key_type in policy.protected:
            return None
        if key_type is not None and key_type in policy.type_cutoffs:
            return self.settings.type_retention_days[key_type]
        return self.retention_days

    def _orphan_rule(self, conn: db.Conn, target: db.Target, cutoff: datetime) -> db.Orphans | None:
        """The orphan rule, or None when it is off or its auth table is refused (with a note).

        An auth table that cannot be read is a note, never a failed run: the age and TTL rules
        do not need it.
        """
        s = self.settings
        parts = s.auth_table_parts
        if parts is None or s.auth_table is None:
            return None
        orphans = db.Orphans(parts[0], parts[1], cutoff)
        problem, has_tenants = None, False
        try:
            has_tenants = db.auth_has_tenants(conn, target, orphans)
        except psycopg.Error as exc:
            if conn.broken:
                raise
            problem = _AUTH_PROBLEMS.get(type(exc), type(exc).__name__)
        refusal = rules.orphan_refusal(
            auth_table=s.auth_table,
            problem=problem,
            has_tenants=has_tenants,
            orphaned_tenants=0,
            tenants=0,
            max_fraction=s.max_orphan_tenant_fraction,
        )
        if refusal is not None:
            self.notes.append(refusal)
            self.orphan_rule = "refused"
            return None
        return orphans

    def _check_orphan_share(self, policy: db.Policy, tenants: list[db.TenantCounts]) -> db.Policy:
        """The policy without the orphan rule when it would orphan too many tenants."""
        self.orphaned = rules.orphaned_tenants(tenants)
        if policy.orphans is None or self.settings.auth_table is None:
            return policy
        refusal = rules.orphan_refusal(
            auth_table=self.settings.auth_table,
            problem=None,
            has_tenants=True,
            orphaned_tenants=len(self.orphaned),
            tenants=sum(1 for t in tenants if t.tenant is not None),
            max_fraction=self.settings.max_orphan_tenant_fraction,
        )
        if refusal is not None:
            would = sum(t.orphaned for t in self.orphaned)
            self.notes.append(f"{refusal} It would have taken {would:,} keys.")
            self.orphan_rule = "refused"
            return replace(policy, orphans=None)
        self.orphan_rule = "applied"
        return policy

    def _rule_fields(
        self,
        target: db.Target,
        measured: db.Measurement,
        total: rules.Totals,
        bucket_edges: list[datetime],
    ) -> dict[str, object]:
        """The report's TTL, orphan and tenant figures."""
        s, applied = self.settings, self.orphan_rule == "applied"
        ids = [t.tenant for t in self.orphaned if t.tenant is not None]
        return {
            "expires_column": target.expires_column,
            "expired": total.expired,
            "expired_by_age": rules.expired_by_age(measured.types, bucket_edges),
            "auth_table": s.auth_table,
            "orphan_rule": self.orphan_rule,
            "orphan_grace_days": s.orphan_grace_days if s.auth_table else None,
            "orphaned": total.orphaned,
            "orphaned_tenants": len(ids),
            "orphaned_tenant_ids": ids[: rules.MAX_ORPHANED_TENANT_IDS]
            if self.flags.verbose
            else [],
            "top_tenants": rules.top_tenants(measured.tenants, s.top_tenants, orphans=applied),
        }

    def _locked(self, conn: db.Conn, target: db.Target) -> Report:
        s, flags = self.settings, self.flags
        policy, now, edges = self._policy(conn, target)
        before_sizes = db.sizes(conn, target)
        measured = db.measure(
            conn,
            target,
            list(edges.values()),
            policy,
            by_tenant=s.top_tenants > 0 or policy.orphans is not None,
        )
        counts = measured.types
        policy = self._check_orphan_share(policy, measured.tenants)
        orphans = db.applies_orphans(target, policy)
        by_type = {
            _type_name(c.key_type): rules.type_stats(
                c, self._retention_for(c.key_type, policy), orphans=orphans
            )
            for c in counts
        }
        keys = sum(c.keys for c in counts)
        total = rules.totals(counts, orphans=orphans)
        eligible, protected = total.eligible, total.protected
        if target.key_type_column is None:
            by_type = {}
        elif keys:
            self.notes.extend(
                unmatched_type_notes(
                    {
                        "CLEANUP_PROTECTED_KEY_TYPES": [
                            t
                            for t in s.extra_protected_key_types
                            if t not in DEFAULT_PROTECTED_KEY_TYPES
                        ],
                        "CLEANUP_TYPE_RETENTION_DAYS": list(s.type_retention_days),
                    },
                    [c.key_type for c in counts if c.key_type is not None],
                )
            )
        oldest = min((c.oldest for c in counts if c.oldest), default=None)
        newest = max((c.newest for c in counts if c.newest), default=None)
        fields: dict[str, object] = self._base(target) | {
            "cutoff": policy.cutoff,
            "started_at": now,
            "eligible": eligible,
            "protected": protected,
            "before": _table_stats(before_sizes, keys),
            "age_distribution": _age_distribution(counts, [edges[d] for d in db.BUCKET_DAYS]),
            "no_timestamp": sum(c.keys - c.with_timestamp - c.out_of_range for c in counts),
            "out_of_range_timestamps": sum(c.out_of_range for c in counts),
            "oldest": oldest,
            "newest": newest,
            **self._rule_fields(target, measured, total, [edges[d] for d in db.BUCKET_DAYS]),
        }

        guard = None if flags.force else guard_reason(eligible, keys, s, dry_run=flags.dry_run)
        if guard is not None and (total.expired or total.orphaned):
            self.notes.append(
                f"the guard counts every rule together: of the {eligible:,} eligible keys, "
                f"{total.expired:,} are expired (TTL) and {total.orphaned:,} orphaned; a key "
                "eligible by several rules counts once"
            )
        if guard is not None and not flags.dry_run:
            return self._report(
                status="aborted", reason=guard, guard_triggered=True, by_type=by_type, **fields
            )

        if flags.dry_run:
            listing: db.Listing = []
            if flags.verbose and s.verbose_limit and eligible:
                listing = db.list_eligible(conn, target, policy, now, s.verbose_limit)
            return self._report(
                status="completed",
                reason=guard,
                guard_triggered=guard is not None,
                by_type=by_type,
                # What a live run would make reusable: the eligible keys at the average size.
                reclaimable_bytes=reclaimable_estimate(before_sizes.table_bytes, keys, eligible),
                keys=[_entry(target, item) for item in listing],
                keys_omitted=max(0, eligible - len(listing)) if flags.verbose else 0,
                **fields,
            )

        return self._delete(conn, target, policy, now, before_sizes, eligible, by_type, fields)

    def _delete(
        self,
        conn: db.Conn,
        target: db.Target,
        policy: db.Policy,
        now: datetime,
        before_sizes: db.Sizes,
        eligible: int,
        by_type: dict[str, TypeStats],
        fields: dict[str, object],
    ) -> Report:
        s, flags = self.settings, self.flags
        before = fields["before"]
        if not isinstance(before, TableStats):  # pragma: no cover - set by _locked
            raise TypeError("before-run measurement missing")
        loop = _DeleteLoop(
            conn,
            target,
            policy,
            now,
            settings=s,
            deadline=self.deadline,
            pages_total=before_sizes.pages,
            keys=before.keys,
            eligible=eligible,
            list_limit=s.verbose_limit if flags.verbose else 0,
            # The verbose listing needs RETURNING anyway; the counts per type then come free.
            count_by_type=flags.verbose and target.key_type_column is not None,
            progress=self.progress,
        )
        loop.run()
        status: Status = loop.status
        listing = loop.listing
        deleted = loop.deleted
        self.notes.extend(loop.notes)
        deleted_by_type = self._deleted_by_type(loop, by_type, eligible)
        if by_type and deleted_by_type is None:
            self.notes.append(
                f"per-type split of the deleted keys not counted: {eligible - deleted:,} "
                "eligible keys were refreshed or removed by the application during the run, "
                "or left for the next run (run with --verbose to count each type)"
            )
        vacuumed = flags.vacuum and self._vacuum(conn, target, status)
        after: TableStats | None = None
        try:
            # Sizes are measured again. Keys are not recounted: the first pass over a table
            # just after a mass DELETE visits every dead row and sets its hint bits, which cost
            # 2.4 s at 1M rows and 11 s at 4M in bench/ and stalled the application's writers.
            # keys_counted=False says the figure is before - deleted.
            after = _table_stats(db.sizes(conn, target), before.keys - deleted).model_copy(
                update={"keys_counted": False}
            )
        except (pg_errors.LockNotAvailable, pg_errors.QueryCanceled):
            self.notes.append("after-run measurement timed out; sizes after the run are unknown")
        final_by_type = {
            k: v.model_copy(
                update={"deleted": None if deleted_by_type is None else deleted_by_type.get(k, 0)}
            )
            for k, v in by_type.items()
        }
        return self._report(
            status=status,
            reason=loop.reason,
            deleted=deleted,
            after=after,
            by_type=final_by_type,
            released_bytes=(before.total_bytes - after.total_bytes) if after else 0,
            # An estimate: the deleted keys at the table's average stored size per key (heap
            # and TOAST, as pg_table_size counts them).
            reclaimable_bytes=reclaimable_estimate(before.table_bytes, before.keys, deleted),
            vacuumed=vacuumed,
            batches=loop.batches,
            batch_retries=loop.retries,
            skipped_pages=loop.skipped_pages,
            max_batch_ms=round(loop.max_batch_ms),
            max_batch_rows=loop.max_batch_rows,
            throttle_waits=loop.throttle_waits,
            throttle_wait_ms=round(loop.throttle_wait_s * 1000),
            pacing_wait_ms=round(loop.pacing_wait_s * 1000),
            keys=[_entry(target, item) for item in listing],
            keys_omitted=max(0, deleted - len(listing)) if flags.verbose else 0,
            **fields,
        )

    def _vacuum(self, conn: db.Conn, target: db.Target, status: Status) -> bool:
        """VACUUM (ANALYZE) after a completed run; True when it ran on the table.

        VACUUM is a courtesy: the rows are already deleted, and autovacuum reclaims the space
        anyway. Any trouble with it (its lock held by another VACUUM, CREATE INDEX
        CONCURRENTLY or an anti-wraparound autovacuum; the deadline; a permission) is a note,
        never a failed run, which would lose the history row and trigger a retry.
        """
        s = self.settings
        if status != "completed":
            self.notes.append("VACUUM skipped: the run did not complete")
            return False
        remaining = _remaining_ms(self.deadline)
        if remaining < MIN_VACUUM_BUDGET_MS:
            self.notes.append(
                f"VACUUM skipped: {max(0, remaining) / 1000:.1f} s left before the deadline"
            )
            return False
        try:
            db.set_timeouts(
                conn,
                statement_ms=int(min(s.statement_timeout_ms, remaining)),
                lock_ms=s.lock_timeout_ms,
            )
            skipped = [n for n in db.vacuum_analyze(conn, target) if "skipping" in n]
        except pg_errors.LockNotAvailable:
            self.notes.append(
                "VACUUM not done: another session holds its lock (a VACUUM, CREATE INDEX "
                "CONCURRENTLY or anti-wraparound autovacuum); autovacuum reclaims the space"
            )
            return False
        except pg_errors.QueryCanceled:
            self.notes.append(
                "VACUUM not finished: cancelled at its time limit (the deadline, or "
                "CLEANUP_STATEMENT_TIMEOUT_MS); autovacuum reclaims the space"
            )
            return False
        except psycopg.Error as exc:
            if conn.broken:
                raise
            self.notes.append(f"VACUUM failed ({type(exc).__name__}); the deletions stand")
            return False
        finally:
            if not conn.broken:
                # The session's own timeouts again, for the after-run measurement and history.
                db.set_timeouts(
                    conn, statement_ms=s.statement_timeout_ms, lock_ms=s.lock_timeout_ms
                )
        self.notes.extend(skipped)
        return not skipped

    @staticmethod
    def _deleted_by_type(
        loop: _DeleteLoop, by_type: dict[str, TypeStats], eligible: int
    ) -> dict[str, int] | None:
        """Deleted keys per type, or None where they were not counted and cannot be known.

        Counted by RETURNING when the loop asked for it. Otherwise they follow exactly from the
        measurement when every eligible key was deleted: timestamps only move forward (Baileys'
        trigger sets updated_at = NOW()), so no key outside the measured eligible set can have
        been deleted, and equal totals mean equal sets, type by type.
        """
        if loop.deleted_by_type is not None:
            return loop.deleted_by_type
        if loop.deleted == eligible:
            return {name: stats.eligible for name, stats in by_type.items()}
        return None


class _DeleteLoop:
    """Delete eligible rows page range by page range, each range one short transaction.

    A range whose DELETE waits too long for a row the application holds is split in two and
    retried; a single page that still conflicts is skipped, and its keys are left for the next
    run. (Skipping by row would need SELECT ... FOR UPDATE SKIP LOCKED, which needs the UPDATE
    privilege; this way SELECT and DELETE are enough.) A table lock that cannot be had within
    the lock timeout, or a batch over its statement timeout, is retried a bounded number of
    times, then the run ends as `partial`. Spans and pauses come from handler/pacing.py.
    """

    def __init__(
        self,
        conn: db.Conn,
        target: db.Target,
        policy: db.Policy,
        now: datetime,
        *,
        settings: Settings,
        deadline: float | None,
        pages_total: int,
        keys: int,
        eligible: int,
        list_limit: int,
        count_by_type: bool,
        progress: ProgressFn | None,
    ) -> None:
        self.conn, self.target, self.policy, self.now = conn, target, policy, now
        self.count_by_type = count_by_type
        self.settings = settings
        self.deadline = deadline
        # Every row that was old when we measured lies in the first `pages_total` pages: rows
        # written later are fresh, wherever they land.
        self.pages_total = pages_total
        self.eligible = eligible
        self.list_budget = list_limit
        self.progress = progress
        self.limits = pacing.Limits(
            batch_rows=settings.batch_size,
            rows_per_page=keys / pages_total if pages_total else 1.0,
            target_ms=settings.target_batch_ms,
        )
        self.span = pacing.first_span(self.limits)
        self.wal = self._wal_budget()
        self.lsn = 0  # WAL insert position read just before the current batch
        self.spent_at = time.monotonic()  # when the WAL budget was last settled
        self.hidden_noted = False
        self.replicas = False  # a standby or logical slot was seen at the last reading
        self.status: Status = "completed"
        self.reason: str | None = None
        self.notes: list[str] = []
        self.deleted = 0
        self.deleted_by_type: dict[str, int] | None = {} if count_by_type else None
        self.listing: db.Listing = []
        self.batches = 0
        self.retries = 0
        self.skipped_pages = 0
        self.max_batch_ms = 0.0
        self.max_batch_rows = 0
        self.batch_s = 0.0  # time inside batches, to estimate the work left
        self.throttle_waits = 0
        self.throttle_wait_s = 0.0
        self.pacing_wait_s = 0.0
        self.pages_done = 0

    def _wal_budget(self) -> pacing.WalBudget:
        c = db.checkpoint_settings(self.conn)
        trigger = pacing.checkpoint_trigger(c.max_wal_size, c.completion_target)
        rate = self.settings.wal_bytes_per_s
        if rate is None:
            rate = round(pacing.default_wal_rate(trigger, c.timeout_s))
        return pacing.WalBudget.start(rate, trigger, c.since_checkpoint)

    def run(self) -> None:
        next_page = 0
        pending: list[tuple[int, int]] = []  # split ranges, processed first (LIFO)
        attempts = 0
        while self.eligible and (pending or next_page < self.pages_total):
            if not self._throttled():
                return
            budget_ms = _remaining_ms(self.deadline)
            if budget_ms < max(MIN_BATCH_BUDGET_MS, self.max_batch_ms * 2):
                self._stop("stopped at the deadline; the next run continues where the data stands")
                return
            if pending:
                lo, hi = pending.pop()
            else:
                lo, hi = next_page, min(self.pages_total, next_page + self.span.pages)
                next_page = hi
            try:
                self._batch(lo, hi, budget_ms)
            except _RowLockWait:
                self.retries += 1
                if hi - lo > 1:
                    mid = (lo + hi) // 2
                    pending += [(mid, hi), (lo, mid)]
                else:
                    self.skipped_pages += 1
                    self.pages_done += 1
                continue
            except (pg_errors.LockNotAvailable, pg_errors.QueryCanceled) as exc:
                self.retries += 1
                attempts += 1
                if attempts >= self.settings.batch_attempts:
                    what = "lock" if isinstance(exc, pg_errors.LockNotAvailable) else "statement"
                    self._stop(
                        f"stopped after {attempts} batches in a row hit the {what} timeout at "
                        f"page {lo:,} of {self.pages_total:,} (is the table locked by another "
                        "session?); the next run continues where the data stands"
                    )
                    return
                if isinstance(exc, pg_errors.QueryCanceled) and hi - lo > 1:
                    # Too slow: smaller batches from now on.
                    self.span = pacing.Span(max(1, self.span.pages // 2), self.span.densest)
                    mid = (lo + hi) // 2
                    pending += [(mid, hi), (lo, mid)]
                else:
                    pending.append((lo, hi))
                time.sleep(min(0.05 * 2**attempts, max(0.0, budget_ms / 4000)))
                continue
            attempts = 0
            self._pace(next_page)
        if self.skipped_pages:
            self.notes.append(
                f"{self.skipped_pages} page(s) skipped: the application held rows there; their "
                "keys are left for the next run"
            )

    def _throttled(self) -> bool:
        """Before a batch: wait while a replica lags. False: the run must stop (reason set)."""
        s = self.settings
        attempt = 0
        while True:
            state = db.replication_state(self.conn)
            self.replicas = bool(state.lags)
            self.lsn = state.lsn
            if state.hidden_standbys and not self.hidden_noted:
                self.hidden_noted = True
                self.notes.append(
                    f"replay lag of {state.hidden_standbys} streaming standby(s) not watched: "
                    "this role cannot read pg_stat_replication (GRANT pg_monitor TO it)"
                )
            step = pacing.throttle_step(
                state.lags,
                limit_bytes=s.max_replica_lag_bytes,
                attempt=attempt,
                waited_s=self.throttle_wait_s,
                max_wait_s=s.throttle_max_wait_s,
                remaining_s=_remaining_ms(self.deadline) / 1000,
            )
            if step.stop == "deadline":
                self._stop("stopped at the deadline; the next run continues where the data stands")
                return False
            if step.stop is not None and step.worst is not None:
                self._stop(
                    f"stopped: {step.worst.name} is {step.worst.bytes:,} bytes of WAL behind, "
                    f"above CLEANUP_MAX_REPLICA_LAG_BYTES={s.max_replica_lag_bytes:,}, after "
                    f"waiting {self.throttle_wait_s:.1f} s in total for replicas "
                    f"(CLEANUP_THROTTLE_MAX_WAIT_S={s.throttle_max_wait_s:g}); the next run "
                    "continues where the data stands"
                )
                return False
            if step.wait_s <= 0:
                break
            self.throttle_waits += 1
            self.throttle_wait_s += step.wait_s
            db.nudge_standbys(self.conn)
            time.sleep(step.wait_s)
            attempt += 1
        return True

    def _pace(self, next_page: int) -> None:
        """After a batch: charge its WAL to the budget and pay off any debt with a pause.

        Only the WAL written while the batch ran counts (the insert position before and after
        it): other sessions' WAL during pauses is theirs, and would otherwise slow the run.
        """
        if self.wal.rate <= 0:
            return
        now = time.monotonic()
        wal = db.wal_insert_position(self.conn) - self.lsn
        self.wal, debt_s = self.wal.spend(wal, now - self.spent_at)
        self.spent_at = now
        if debt_s <= 0:
            return
        pages_left = max(1, self.pages_total - next_page)
        work_s = self.batch_s / self.pages_done * pages_left if self.pages_done else 0.0
        pause = pacing.pause_within_deadline(
            debt_s,
            remaining_s=_remaining_ms(self.deadline) / 1000 - MIN_BATCH_BUDGET_MS / 1000,
            work_s=work_s,
            share=self.span.pages / pages_left,
        )
        if pause > 0:
            time.sleep(pause)
            self.pacing_wait_s += pause

    def _stop(self, reason: str) -> None:
        self.status = "partial"
        self.reason = reason

    def _batch(self, lo: int, hi: int, budget_ms: float) -> None:
        s, conn = self.settings, self.conn
        started = time.monotonic()
        with conn.transaction():
            # Losing the last batches to a crash only means the next run redoes them, so
            # there is no need to wait for each commit's WAL flush. With replicas attached,
            # though, WAL left in WAL buffers cannot be sent, and the lag the throttle reads
            # would not shrink until the WAL writer's next round: then flush, locally only
            # (a synchronous standby's wait is what the throttle bounds, not the commit).
            statement_ms = int(min(s.batch_timeout_ms, budget_ms))
            # One round trip for the three settings, one for the lock and the row timeout: at
            # ~250 batches per million rows, each round trip saved is ~3 % of the loop.
            db.set_local(
                conn,
                synchronous_commit="local" if self.replicas else "off",
                statement_timeout=f"{max(1, statement_ms)}ms",
                lock_timeout=f"{max(1, s.lock_timeout_ms)}ms",
            )
            # The table lock first, with the full lock timeout: a conflict here is a table
            # lock (DDL, VACUUM FULL), worth waiting for and retrying as a whole. Then rows:
            # never wait long for one the application holds.
            db.lock_for_delete_then_row_wait(
                conn, self.target, row_wait_ms=min(s.lock_timeout_ms, ROW_WAIT_MS)
            )
            try:
                result = db.delete_range(
                    conn,
                    self.target,
                    self.policy,
                    first_page=lo,
                    end_page=hi,
                    count_by_type=self.count_by_type,
                    list_limit=self.list_budget,
                    now=self.now,
                )
            except (pg_errors.LockNotAvailable, pg_errors.DeadlockDetected) as exc:
                # A deadlock with an application transaction is a row conflict too: PostgreSQL
                # rolled this batch back, so split the range as for a long wait.
                raise _RowLockWait from exc
        batch_ms = (time.monotonic() - started) * 1000
        self.max_batch_ms = max(self.max_batch_ms, batch_ms)
        self.max_batch_rows = max(self.max_batch_rows, result.deleted)
        self.batch_s += batch_ms / 1000
        self.span = pacing.next_span(
            self.limits, self.span, pacing.Observed(hi - lo, result.deleted, batch_ms)
        )
        self.batches += 1
        self.pages_done += hi - lo
        self.deleted += result.deleted
        if self.deleted_by_type is not None and result.by_type is not None:
            for key_type, n in result.by_type.items():
                name = _type_name(key_type)
                self.deleted_by_type[name] = self.deleted_by_type.get(name, 0) + n
        if self.list_budget:
            self.listing.extend(result.listed[: self.list_budget])
            self.list_budget = max(0, self.list_budget - len(result.listed))
        if self.progress is not None:
            self.progress(Progress(self.pages_done, self.pages_total, self.deleted, self.batches))


class _RowLockWait(Exception):
    """A batch's DELETE waited too long for a row another transaction holds."""


def history_row(report: Report) -> db.HistoryRow:
    return db.HistoryRow(
        event_id=report.event_id,
        target_table=report.table,
        started_at=report.started_at or datetime.now(UTC),
        status=report.status,
        keys_before=report.before.keys if report.before else None,
        keys_after=report.after.keys if report.after else None,
        total_bytes_before=report.before.total_bytes if report.before else None,
        total_bytes_after=report.after.total_bytes if report.after else None,
        eligible=report.eligible,
        deleted=report.deleted,
        duration_ms=report.duration_ms,
        report_json=report.model_dump_json(),
    )


def _type_name(key_type: str | None) -> str:
    return "(null)" if key_type is None else key_type


def _entry(target: db.Target, item: tuple[list[str | None], str | None, float | None]) -> KeyEntry:
    values, key_type, age = item
    return KeyEntry(
        key=dict(zip(db.key_columns(target), values, strict=True)),
        key_type=key_type,
        age_days=None if age is None else round(age, 2),
    )


def run_cleanup(
    settings: Settings,
    flags: Flags,
    *,
    deadline: float | None = None,
    progress: ProgressFn | None = None,
    event_id: str | None = None,
) -> Report:
    """Run the job once and return its Report.

    `deadline` is a `time.monotonic()` instant: no batch starts that could not finish before it,
    and the report then says `partial`. Raises ConfigError for a bad target or settings and
    CleanupError for database failures; neither message holds a secret.
    """
    if settings.database_url is None:
        raise ConfigError("DATABASE_URL is not set (or pass --database-url)")
    settings.check_flags(flags)
    dsn = settings.database_url.get_secret_value()
    check_database_url(dsn)  # --database-url and model_copy bypass the settings validator
    run = _Run(settings, flags, deadline, progress, event_id)
    try:
        conn = db.connect(dsn, connect_timeout_s=settings.connect_timeout_s)
    except db.DatabaseError as exc:
        raise CleanupError(str(exc)) from None
    try:
        with conn:
            report = run.execute(conn)
    except psycopg.Error as exc:
        detail = db.redact(str(exc).strip().splitlines()[0] if str(exc).strip() else "", dsn)
        raise CleanupError(f"database error ({type(exc).__name__}): {detail}") from None
    return report
