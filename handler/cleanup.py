"""The job itself: resolve the target, lock, measure, guard, delete in batches, measure, report.

It knows nothing about Lambda, Sentry or Telegram. It takes settings, flags and a deadline and
returns a Report; every entry point is a thin shell around `run_cleanup`. Its parts: the
checks (checks.py), the auth table (authtable.py), the orphan rule (orphans.py), the measured
figures (measuring.py), the delete loop (deleteloop.py), VACUUM (vacuum.py) and the run
history (history.py).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from datetime import UTC, datetime

import psycopg

from handler import db, resume, rules
from handler.authtable import find_auth, read_lifecycle
from handler.checks import TargetChecks, resolve
from handler.deleteloop import DeleteLoop, LoopStats, Measured, ProgressFn, remaining_ms
from handler.errors import CleanupError as CleanupError  # noqa: PLC0414 - re-exported
from handler.errors import refused
from handler.history import History, failed_row
from handler.measuring import MeasuredRun, after_stats, measured_run
from handler.orphans import OrphanRun
from handler.report import (
    BUCKET_DAYS,
    Drain,
    KeyEntry,
    Report,
    TypeStats,
    reclaimable_estimate,
)
from handler.settings import (
    ConfigError,
    Flags,
    Settings,
    check_database_url,
)
from handler.vacuum import vacuum

_log = logging.getLogger(__name__)

# However close the deadline, the statements after the loop get at least this long each.
POST_LOOP_MIN_MS = 100


class _Run:
    """State of one run. Private: `run_cleanup` is the interface."""

    def __init__(
        self,
        settings: Settings,
        flags: Flags,
        deadline: float | None,
        progress: ProgressFn | None,
        event_id: str | None,
        conn: db.Conn,
        *,
        started: float,
    ) -> None:
        self.event_id = event_id
        self.settings = settings
        self.flags = flags
        self.deadline = deadline
        self.progress = progress
        self.retention_days = flags.retention_days or settings.retention_days
        self.started = started
        self.notes: list[str] = list(settings.config_warnings)
        self.live_run_would_fail = False
        self.checks = TargetChecks(settings, flags, self.notes)
        self.history = History(conn, settings, self.notes)
        self.orphans = OrphanRun(settings, flags, self.history, self.notes)
        self.drain: Drain | None = None  # the drain this run continues (handler/resume.py)
        # What a failed run's history row says (`_record_failure`): the measurement, the loop.
        self.measured: MeasuredRun | None = None
        self.loop: DeleteLoop | None = None
        self.failure_note: str | None = None  # why a failed run's row could not be recorded

    def _base(self, target: db.Target | None) -> dict[str, object]:
        s = self.settings
        overrides = dict(s.type_retention_days) if s.has_key_types else {}
        return {
            "event_id": self.event_id,
            "dry_run": self.flags.dry_run,
            "table": target.qualified if target else s.table,
            "timestamp_column": s.timestamp_column,
            "key_type_column": s.key_type_column if s.layout == "columns" else None,
            "retention_days": self.retention_days,
            "retention_overrides": overrides,
            "protected_types": list(s.protected_key_types) if s.has_key_types else [],
        }

    def _report(self, target: db.Target, **fields: object) -> Report:
        return Report.model_validate(
            {
                **self._base(target),
                **fields,
                "notes": list(self.notes),
                "live_run_would_fail": self.live_run_would_fail,
                "duration_ms": int((time.monotonic() - self.started) * 1000),
            }
        )

    def execute(self, conn: db.Conn) -> Report:
        s = self.settings
        if db.server_version(conn) < db.MIN_SERVER_VERSION:
            raise ConfigError(
                "PostgreSQL 14 or newer is required (batches walk the table by TID range)"
            )
        db.set_timeouts(conn, statement_ms=s.statement_timeout_ms, lock_ms=s.lock_timeout_ms)
        target = resolve(conn, s)
        self.live_run_would_fail = self.checks.all(conn, target)
        if not db.try_lock(conn, target):
            return self._report(
                target,
                status="skipped",
                reason="another cleanup run holds the lock on this table; nothing was touched",
            )
        try:
            return self._under_lock(conn, target)
        finally:
            if not conn.closed and not conn.broken:
                db.unlock(conn, target)

    def _under_lock(self, conn: db.Conn, target: db.Target) -> Report:
        """The run with the table's lock held: a duplicate event is acknowledged, else the run,
        then the history's part (stalls, the record, the trend)."""
        s = self.settings
        history = s.history_enabled and not self.flags.dry_run
        if history and self.event_id is not None:
            done_at = self.history.completed_before(self.event_id, target.qualified)
            if done_at is not None:
                return self._report(
                    target,
                    status="skipped",
                    duplicate=True,
                    reason=(
                        f"event {self.event_id} already completed at "
                        f"{done_at.isoformat(timespec='seconds')}; not run again"
                    ),
                )
        try:
            report = self._locked(conn, target)
            report = self.history.count_stalls(report, readable=history)
            report = self.history.record(report, self.orphans.candidates) if history else report
        except Exception as exc:
            # A refusal (a setting found wrong under the lock, such as a misspelt key type)
            # deleted nothing and is no failed run: like one refused before the lock, no row.
            if history and not refused(exc):
                self._record_failure(conn, target, exc)
            raise
        return self.history.with_trend(report) if s.history_enabled else report

    def _cap_timeouts(self, conn: db.Conn) -> None:
        """After the loop, the run's last statements (the sizes, the history and its trend)
        get at most what is left before the deadline, each: the deadline stops batches, and a
        table another session locks (the history table during a migration) must not carry the
        run past it, and past the notifications' own deadline. A statement cut short is a note,
        as any failure of these steps is."""
        left = remaining_ms(self.deadline)
        if math.isinf(left):
            return
        ms = max(POST_LOOP_MIN_MS, int(left))
        s = self.settings
        db.set_timeouts(
            conn,
            statement_ms=min(s.statement_timeout_ms, ms),
            lock_ms=min(s.lock_timeout_ms, ms),
        )

    def _record_failure(self, conn: db.Conn, target: db.Target, exc: Exception) -> None:
        """A live run raised under the table's lock: record a `failed` row with what is known
        (the keys its committed batches deleted, the error's type, the drain carried on), over
        this run's connection or, when that one is broken, a fresh one (bounded by the connect
        timeout). Failing to record never replaces the run's error: it becomes
        `failure_note`, logged with it."""
        try:
            row = self._failed_row(target, type(exc).__name__)
            if not conn.closed and not conn.broken:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.rollback()
                self.history.record_failed(row)
                return
            s = self.settings
            with open_database(s) as fresh:
                db.set_timeouts(
                    fresh, statement_ms=s.statement_timeout_ms, lock_ms=s.lock_timeout_ms
                )
                History(fresh, s, []).record_failed(row)
        except Exception as problem:  # the run's own error goes on, whatever this was
            # A CleanupError's message holds no secret (open_database); others: the type only.
            why = str(problem) if isinstance(problem, CleanupError) else type(problem).__name__
            self.failure_note = f"run history not recorded for this failed run ({why})"
            _log.warning(self.failure_note)

    def _failed_row(self, target: db.Target, error: str) -> db.HistoryRow:
        """The failed run's row: what its loop's committed batches deleted, and, when the loop
        ran, the drain carried on (a drain counts the runs that ran the loop: a run that failed
        before it records none, and the next run continues the earlier drain). Where the next
        run starts: the start of the segment the loop was in when it failed, the end of those
        it finished (`so_far().reached`), never a page past one not done; the next run's
        measuring pass decides as always whether the pages before that start are walked."""
        m = self.measured
        stats = self.loop.so_far() if self.loop is not None else None
        deleted = stats.deleted if stats else 0
        drain = self._drain(m, stats, stopped=True) if stats is not None and m is not None else None
        return failed_row(
            event_id=self.event_id,
            table=target.qualified,
            started_at=m.now if m else datetime.now(UTC),
            error=error,
            eligible=m.eligible if m else None,
            deleted=deleted,
            batches=stats.batches if stats else 0,
            drain=drain,
            duration_ms=int((time.monotonic() - self.started) * 1000),
        )

    def _policy(
        self, conn: db.Conn, target: db.Target
    ) -> tuple[db.Policy, datetime, dict[int, datetime]]:
        """The cutoffs, bucket edges and the TTL's "now", all from one reading of the database
        clock; and the orphan rule when its auth table is usable."""
        s = self.settings
        overrides = dict(s.type_retention_days) if s.has_key_types else {}
        days = [self.retention_days, *BUCKET_DAYS, *overrides.values(), s.orphan_grace_days]
        now, edges = db.clock(conn, days)
        self.orphans.auth = find_auth(conn, s, target)
        policy = db.Policy(
            cutoff=edges[self.retention_days],
            protected=tuple(s.protected_key_types) if s.has_key_types else (),
            type_cutoffs={t: edges[d] for t, d in overrides.items()},
            expires_now=now if target.expires_column else None,
            orphans=self.orphans.rule(conn, target, edges[s.orphan_grace_days], now),
            lifecycle=read_lifecycle(
                conn,
                s,
                target,
                self.orphans.auth,
                auth_locked=self.orphans.auth_locked,
                notes=self.notes,
            ),
        )
        return policy, now, edges

    def _measure(self, conn: db.Conn, target: db.Target) -> MeasuredRun:
        """The measuring step: cutoffs, sizes, the measuring pass, the orphan rule's share
        check, and the figures under the rules."""
        policy, now, edges = self._policy(conn, target)
        sizes = db.sizes(conn, target)
        # Every row old at the pass lies in these pages of its leaf: read before the pass.
        leaves = db.leaves(conn, target)
        starts = self._starts(target, leaves)
        measured, policy = self.orphans.measure(
            conn, target, list(edges.values()), policy, heads=starts
        )
        policy = self.orphans.check_share(policy, measured.tenants)
        run = measured_run(
            measured,
            policy,
            now,
            sizes,
            target=target,
            settings=self.settings,
            retention_days=self.retention_days,
            bucket_edges=[edges[d] for d in BUCKET_DAYS],
            orphan_run=self.orphans,
            verbose=self.flags.verbose,
            holds_types=self.checks.type_column_holds_types,
            notes=self.notes,
        )
        if starts and self.flags.verbose:
            self.notes.append(
                "resuming where the last run stopped: "
                + ", ".join(
                    f"{leaf.schema}.{leaf.name} at page {starts[leaf.oid]:,} of {leaf.pages:,}"
                    for leaf in leaves
                    if leaf.oid in starts
                )
                + f"; {run.head_eligible:,} eligible keys before those pages"
            )
        return replace(run, leaves=leaves, starts=starts)

    def _starts(self, target: db.Target, leaves: list[db.Leaf]) -> dict[int, int]:
        """Where each relation's walk starts: at the last run's resume point when it ended
        partial (a live run with the history on), else page 0. Why a point is not used is a
        note in verbose runs."""
        if self.flags.dry_run or not self.settings.history_enabled:
            return {}
        self.drain, problem = self.history.drain(target.qualified)
        ignored = [problem] if problem else []
        starts: dict[int, int] = {}
        if self.drain is not None:
            starts, ignored = resume.starts(self.drain.resume, leaves)
        if ignored and self.flags.verbose:
            self.notes.extend(ignored)
        return starts

    def _locked(self, conn: db.Conn, target: db.Target) -> Report:
        flags = self.flags
        m = self.measured = self._measure(conn, target)
        eligible, keys = m.eligible, m.before.keys
        guard = (
            None
            if flags.force
            else rules.guard_reason(eligible, keys, self.settings, dry_run=flags.dry_run)
        )
        if guard is not None and (m.total.expired or m.total.orphaned):
            self.notes.append(
                f"the guard counts every rule together: of the {eligible:,} eligible keys, "
                f"{m.total.expired:,} are expired (TTL) and {m.total.orphaned:,} orphaned; a key "
                "eligible by several rules counts once"
            )
        if guard is not None and not flags.dry_run:
            return self._report(
                target,
                status="aborted",
                reason=guard,
                guard_triggered=True,
                by_type=m.by_type,
                **m.report_fields(),
            )
        if flags.dry_run:
            return self._dry_run(conn, target, m, guard)
        return self._delete(conn, target, m)

    def _dry_run(
        self, conn: db.Conn, target: db.Target, m: MeasuredRun, guard: str | None
    ) -> Report:
        s, flags = self.settings, self.flags
        listing: db.Listing = []
        if flags.verbose and s.verbose_limit and m.eligible:
            listing = db.list_eligible(conn, target, m.policy, m.now, s.verbose_limit)
        return self._report(
            target,
            status="completed",
            reason=guard,
            guard_triggered=guard is not None,
            by_type=m.by_type,
            # What a live run would make reusable: the eligible keys at the average size.
            reclaimable_bytes=reclaimable_estimate(m.sizes.table_bytes, m.before.keys, m.eligible),
            keys=[_entry(target, item) for item in listing],
            keys_omitted=max(0, m.eligible - len(listing)) if flags.verbose else 0,
            **m.report_fields(),
        )

    def _delete(self, conn: db.Conn, target: db.Target, m: MeasuredRun) -> Report:
        s, flags = self.settings, self.flags
        # Each rule deletes at most what it was measured to take (plus a margin): the orphan
        # rule's tenants' eligible keys, and the others', with the own sender keys that may
        # follow their memory row in this run.
        of_orphans = sum(t.eligible + t.orphan_extra for t in self.orphans.orphaned)
        others = m.eligible - of_orphans + m.follows
        applied = db.applies_orphans(target, m.policy)
        self.loop = DeleteLoop(
            conn,
            target,
            m.policy,
            m.now,
            measured=Measured(others, of_orphans) if applied else Measured(others),
            settings=s,
            deadline=self.deadline,
            pages_total=m.sizes.pages,
            keys=m.before.keys,
            eligible=m.eligible,
            list_limit=s.verbose_limit if flags.verbose else 0,
            # The verbose listing needs RETURNING anyway; the counts per type then come free.
            # Without it they follow from the measurement, unless own sender keys may follow
            # their memory row (`_deleted_by_type`): then, for a run of a day's size, RETURNING
            # counts them (about 1.33x a batch's time, docs/engine.md).
            count_by_type=target.has_key_types
            and (flags.verbose or 0 < m.follows <= COUNT_FOLLOWS_MAX - m.eligible),
            progress=self.progress,
            leaves=m.leaves,
            verbose=flags.verbose,
            starts=m.starts,
            head_eligible=m.head_eligible,
        )
        stats = self.loop.run()
        self.notes.extend(stats.notes)
        drain = self._drained(m, stats)
        deleted_by_type = _deleted_by_type(stats, m.by_type, m.eligible, m.follows)
        if m.by_type and deleted_by_type is None:
            self.notes.append(
                "per-type split of the deleted keys not counted: "
                + _gap(m.eligible, stats.deleted, m.follows)
            )
        vacuumed = flags.vacuum and vacuum(
            conn, target, s, status=stats.status, deadline=self.deadline, notes=self.notes
        )
        self._cap_timeouts(conn)
        after = after_stats(conn, target, m.before, stats.deleted, notes=self.notes)
        return self._report(
            target,
            **m.report_fields(),
            **stats.report_fields(),
            after=after,
            by_type={
                k: v.model_copy(
                    update={
                        "deleted": None if deleted_by_type is None else deleted_by_type.get(k, 0)
                    }
                )
                for k, v in m.by_type.items()
            },
            # Unknown, not 0, when the sizes after the run could not be measured.
            released_bytes=(m.before.total_bytes - after.total_bytes) if after else None,
            # An estimate: the deleted keys at the table's average stored size per key (heap
            # and TOAST, as pg_table_size counts them).
            reclaimable_bytes=reclaimable_estimate(
                m.before.table_bytes, m.before.keys, stats.deleted
            ),
            vacuumed=vacuumed,
            keys=[_entry(target, item) for item in stats.listing],
            keys_omitted=max(0, stats.deleted - len(stats.listing)) if flags.verbose else 0,
            remaining=_remaining(m.eligible, stats, rechecked=_rechecks_creds(m.policy)),
            drain=drain,
        )

    def _drained(self, m: MeasuredRun, stats: LoopStats) -> Drain:
        """This run's part of the drain: the runs and keys since the last completed run, and
        where the next run starts when this one stopped."""
        partial = stats.status == "partial"
        if partial and not self.settings.history_enabled:
            self.notes.append(
                "no run history (CLEANUP_HISTORY=false): the next run starts at page 0"
            )
        return self._drain(m, stats, stopped=partial)

    def _drain(self, m: MeasuredRun, stats: LoopStats, *, stopped: bool) -> Drain:
        """The drain this run continues, with its loop's figures added, and the resume points
        when it `stopped` before the end (partial, or failed)."""
        earlier = self.drain
        return Drain(
            runs=earlier.runs + 1 if earlier else 1,
            deleted=(earlier.deleted if earlier else 0) + stats.deleted,
            since=earlier.since if earlier and earlier.since else m.now,
            resume=resume.points(m.leaves or [], stats.reached) if stopped else [],
        )


def _rechecks_creds(policy: db.Policy) -> bool:
    """True when each DELETE checks the creds rows again (no timestamp column): a pre-key may
    then be kept for this run only, its session's creds having changed, and stays eligible."""
    return policy.lifecycle is not None and policy.lifecycle.recheck is not None


def _remaining(eligible: int, stats: LoopStats, *, rechecked: bool = False) -> int:
    """The backlog: eligible keys left for a later run.

    A loop that completed without skipping a page walked every page that could hold an
    eligible key (a resumed run leaves out only what its own measuring pass counted empty), and
    keys do not become eligible during a run (fixed cutoffs, timestamps only move forward):
    none is left. The measured keys it did not delete were refreshed or removed by the
    application, and are no backlog. Otherwise (stopped, pages skipped for a row lock, or
    pre-keys kept for this run by the creds recheck: `rechecked`) the measured keys not deleted
    are the estimate: some may have been refreshed meanwhile.
    """
    if stats.status == "completed" and not stats.skipped_pages and not rechecked:
        return 0
    return max(0, eligible - stats.deleted)


# Up to this many keys to delete (eligible and following), a run whose own sender keys may
# follow their memory row counts its deletions per type by RETURNING (`_deleted_by_type`).
COUNT_FOLLOWS_MAX = 100_000


def _deleted_by_type(
    stats: LoopStats, by_type: dict[str, TypeStats], eligible: int, follows: int = 0
) -> dict[str, int] | None:
    """Deleted keys per type, or None where they were not counted and cannot be known.

    Counted by RETURNING when the loop asked for it. Otherwise they follow exactly from the
    measurement when every key the run could delete was deleted. Timestamps only move forward
    (Baileys' trigger sets updated_at = NOW()), so the run can delete no key outside the
    measured eligible set and the `follows` own sender keys (kept by their group's memory row,
    deleted once a batch has deleted it): equal totals then mean equal sets, type by type. With
    `follows`, a total of `eligible` alone could be some of them and not some eligible keys.
    """
    if stats.deleted_by_type is not None:
        return stats.deleted_by_type
    if stats.deleted != eligible + follows:
        return None
    counts = {name: t.eligible for name, t in by_type.items()}
    if follows:
        counts["sender-key"] = counts.get("sender-key", 0) + follows
    return counts


def _gap(eligible: int, deleted: int, follows: int = 0) -> str:
    """Why the deleted keys differ from the eligible ones measured, in counts that are never
    negative: fewer (refreshed, removed by the application, left for the next run) or more
    (keys that became eligible during the run)."""
    verbose = " (run with --verbose to count each type)"
    ours = (
        f"; up to {follows:,} of our own sender keys could follow their group's memory row "
        "within the run"
        if follows
        else ""
    )
    if deleted < eligible:
        return (
            f"{eligible - deleted:,} of the {eligible:,} eligible keys were not deleted: "
            "refreshed or removed by the application during the run, or left for the next run"
            + ours
            + verbose
        )
    if deleted == eligible:
        return (
            f"as many keys were deleted as were eligible ({eligible:,}), but not necessarily the "
            "same ones" + ours + verbose
        )
    return (
        f"{deleted - eligible:,} more keys were deleted than were eligible when measured "
        f"({eligible:,}): keys that became eligible during the run, such as our own sender keys "
        "after their group's memory row, or ones written with an old timestamp" + verbose
    )


def _entry(target: db.Target, item: tuple[list[str | None], str | None, float | None]) -> KeyEntry:
    values, key_type, age = item
    return KeyEntry(
        key=dict(zip(db.key_columns(target), values, strict=True)),
        key_type=key_type,
        age_days=None if age is None else round(age, 2),
    )


def open_database(settings: Settings) -> db.Conn:
    """Check DATABASE_URL, then connect: the one way every command (a run, init-db, history)
    opens its connection. --database-url and model_copy bypass the settings validator, so the
    URL is checked here again: a raw `@` in the password is refused before libpq can print
    the rest of it as a host name."""
    if settings.database_url is None:
        raise ConfigError(
            "no database: set DATABASE_URL or DATABASE_SECRET_ARN (or pass --database-url)"
        )
    dsn = settings.database_url.get_secret_value()
    if not dsn.strip():  # libpq would read it as its PG* variables and defaults
        raise ConfigError("the database URL is empty: set DATABASE_URL or pass --database-url")
    check_database_url(dsn)
    try:
        return db.connect(dsn, connect_timeout_s=settings.connect_timeout_s)
    except db.DatabaseError as exc:
        raise CleanupError(str(exc)) from None


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
    settings.check_flags(flags)
    started = time.monotonic()  # the run's duration counts the connection too
    conn = open_database(settings)
    run = _Run(settings, flags, deadline, progress, event_id, conn, started=started)
    dsn = settings.database_url.get_secret_value() if settings.database_url else None
    try:
        with conn:
            report = run.execute(conn)
    except psycopg.Error as exc:
        detail = db.redact(str(exc).strip().splitlines()[0] if str(exc).strip() else "", dsn)
        also = f"; {run.failure_note}" if run.failure_note else ""
        raise CleanupError(f"database error ({type(exc).__name__}): {detail}{also}") from None
    except Exception as exc:
        if run.failure_note:
            exc.add_note(run.failure_note)
        raise
    return report
