"""The delete loop: eligible rows page range by page range, each range one short transaction.

The engine (cleanup.py) measures, guards and reports; this module only deletes, at the pace
handler/pacing.py decides, and says how it went.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from psycopg import errors as pg_errors

from handler import db, pacing
from handler.report import Status
from handler.settings import Settings

# Waiting for a row another session holds is what stalls live writers (they queue behind the
# rows this batch already deleted), so a batch waits at most this long before its range is split.
ROW_WAIT_MS = 100
# Below this many milliseconds left, no new batch starts.
MIN_BATCH_BUDGET_MS = 20

# The loop's clock for its pacing (batch times, the WAL budget's refill) and its pauses, in one
# place: tests run the pacing on a virtual clock, where only pauses take time, so what they
# assert does not depend on how fast a loaded machine runs the batches. Deadlines stay on
# time.monotonic (remaining_ms), as the callers set them.
monotonic = time.monotonic
sleep = time.sleep


def margin(measured: int) -> int:
    """How many keys a rule may delete beyond its measured count: max(100, 1%). Keys do not
    become eligible during a run by themselves (the cutoffs are fixed, timestamps only move
    forward), so more than a few past the count means the data changed under the run."""
    return max(100, measured // 100)


@dataclass(frozen=True)
class Measured:
    """What each rule was measured to take; a run deletes at most that plus the margin.

    `others`: eligible keys outside the orphan rule's measured tenants (the age and TTL
    rules). `orphans`: eligible keys of those tenants (the orphan rule, with age and TTL on
    the same keys); None when the rule takes no tenant this run.
    """

    others: int
    orphans: int | None = None


@dataclass(frozen=True)
class Progress:
    pages_done: int
    pages_total: int
    deleted: int
    batches: int


ProgressFn = Callable[[Progress], None]


def remaining_ms(deadline: float | None) -> float:
    return float("inf") if deadline is None else (deadline - time.monotonic()) * 1000


def type_name(key_type: str | None) -> str:
    return "(null)" if key_type is None else key_type


class DeleteLoop:
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
        measured: Measured | None = None,
    ) -> None:
        self.conn, self.target, self.policy, self.now = conn, target, policy, now
        self.measured = measured or Measured(eligible)
        # The auth table the batches read, when the orphan rule takes tenants this run.
        self.auth = policy.orphans if db.applies_orphans(target, policy) else None
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
        self.spent_at = monotonic()  # when the WAL budget was last settled
        self.hidden_noted = False
        self.idle_noted: set[str] = set()  # inactive logical slots already named in a note
        self.replicas = False  # a standby or logical slot was seen at the last reading
        self.status: Status = "completed"
        self.reason: str | None = None
        self.notes: list[str] = []
        self.deleted = 0
        self.orphaned = 0  # of `deleted`, keys of the orphan rule's measured tenants
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
            budget_ms = remaining_ms(self.deadline)
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
            except BoundExceeded as exc:
                self._stop(
                    f"stopped: {exc.rule} would have deleted {exc.would:,} keys, more than the "
                    f"{exc.measured:,} measured plus a margin of {margin(exc.measured):,}; the "
                    "last batch was rolled back. The data changed during the run (a restore, a "
                    "bulk load, a reloaded auth table?): check it; the next run measures again"
                )
                return
            except RowLockWait:
                self.retries += 1
                if hi - lo > 1:
                    mid = (lo + hi) // 2
                    pending += [(mid, hi), (lo, mid)]
                else:
                    self.skipped_pages += 1
                    self.pages_done += 1
                continue
            except (TableLockWait, pg_errors.QueryCanceled) as exc:
                self.retries += 1
                attempts += 1
                if attempts >= self.settings.batch_attempts:
                    what = (
                        f"lock timeout on {exc.table} (is it locked by another session?"
                        + (" is it being reloaded?" if exc.table != self.target.qualified else "")
                        + f" CLEANUP_LOCK_TIMEOUT_MS={self.settings.lock_timeout_ms:,})"
                        if isinstance(exc, TableLockWait)
                        else "statement timeout"
                    )
                    self._stop(
                        f"stopped after {attempts} batches in a row hit the {what} at "
                        f"page {lo:,} of {self.pages_total:,}; the next run continues where "
                        "the data stands"
                    )
                    return
                if isinstance(exc, pg_errors.QueryCanceled) and hi - lo > 1:
                    # Too slow: smaller batches from now on.
                    self.span = pacing.Span(max(1, self.span.pages // 2), self.span.densest)
                    mid = (lo + hi) // 2
                    pending += [(mid, hi), (lo, mid)]
                else:
                    pending.append((lo, hi))
                sleep(min(0.05 * 2**attempts, max(0.0, budget_ms / 4000)))
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
            self._note_idle_slots(state.idle_slots)
            step = pacing.throttle_step(
                state.lags,
                limit_bytes=s.max_replica_lag_bytes,
                attempt=attempt,
                waited_s=self.throttle_wait_s,
                max_wait_s=s.throttle_max_wait_s,
                remaining_s=remaining_ms(self.deadline) / 1000,
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
            sleep(step.wait_s)
            attempt += 1
        return True

    def _note_idle_slots(self, idle: list[pacing.Lag]) -> None:
        """Name each inactive logical slot once: not waited for, but holding WAL back."""
        for slot in idle:
            if slot.name in self.idle_noted:
                continue
            self.idle_noted.add(slot.name)
            self.notes.append(
                f"{slot.name} has no consumer connected and is {slot.bytes:,} bytes of WAL "
                "behind: not waited for (waiting cannot make it catch up); the primary keeps "
                "WAL for it until it is consumed or dropped (pg_drop_replication_slot)"
            )

    def _pace(self, next_page: int) -> None:
        """After a batch: charge its WAL to the budget and pay off any debt with a pause.

        Only the WAL written while the batch ran counts (the insert position before and after
        it): other sessions' WAL during pauses is theirs, and would otherwise slow the run.
        """
        if self.wal.rate <= 0:
            return
        now = monotonic()
        wal = db.wal_insert_position(self.conn) - self.lsn
        self.wal, debt_s = self.wal.spend(wal, now - self.spent_at)
        self.spent_at = now
        if debt_s <= 0:
            return
        pages_left = max(1, self.pages_total - next_page)
        work_s = self.batch_s / self.pages_done * pages_left if self.pages_done else 0.0
        pause = pacing.pause_within_deadline(
            debt_s,
            remaining_s=remaining_ms(self.deadline) / 1000 - MIN_BATCH_BUDGET_MS / 1000,
            work_s=work_s,
            share=self.span.pages / pages_left,
        )
        if pause > 0:
            sleep(pause)
            self.pacing_wait_s += pause

    def _stop(self, reason: str) -> None:
        self.status = "partial"
        self.reason = reason

    def _batch(self, lo: int, hi: int, budget_ms: float) -> None:
        s, conn = self.settings, self.conn
        started = monotonic()
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
            # lock (DDL, VACUUM FULL), worth waiting for and retrying as a whole. So is the
            # auth table's, which the orphan rule's subquery reads (a TRUNCATE and reload in
            # one transaction holds it). Then rows: never wait long for one the application
            # holds.
            row_wait = min(s.lock_timeout_ms, ROW_WAIT_MS)
            try:
                db.lock_for_delete_then_row_wait(
                    conn, self.target, row_wait_ms=None if self.auth else row_wait
                )
            except pg_errors.LockNotAvailable as exc:
                raise TableLockWait(self.target.qualified) from exc
            if self.auth is not None:
                try:
                    db.lock_shared_then_row_wait(conn, self.auth.ident, row_wait_ms=row_wait)
                except pg_errors.LockNotAvailable as exc:
                    raise TableLockWait(self.auth.qualified) from exc
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
                raise RowLockWait from exc
            # Still inside the transaction: past a bound, the batch is rolled back.
            self._check_bounds(result)
        batch_ms = (monotonic() - started) * 1000
        self.max_batch_ms = max(self.max_batch_ms, batch_ms)
        self.max_batch_rows = max(self.max_batch_rows, result.deleted)
        self.batch_s += batch_ms / 1000
        self.span = pacing.next_span(
            self.limits, self.span, pacing.Observed(hi - lo, result.deleted, batch_ms)
        )
        self.batches += 1
        self.pages_done += hi - lo
        self.deleted += result.deleted
        self.orphaned += result.orphaned
        if self.deleted_by_type is not None and result.by_type is not None:
            for key_type, n in result.by_type.items():
                name = type_name(key_type)
                self.deleted_by_type[name] = self.deleted_by_type.get(name, 0) + n
        if self.list_budget:
            self.listing.extend(result.listed[: self.list_budget])
            self.list_budget = max(0, self.list_budget - len(result.listed))
        if self.progress is not None:
            self.progress(Progress(self.pages_done, self.pages_total, self.deleted, self.batches))

    def _check_bounds(self, result: db.BatchResult) -> None:
        m = self.measured
        others = self.deleted - self.orphaned + result.deleted - result.orphaned
        if others > m.others + margin(m.others):
            raise BoundExceeded("the age and TTL rules", m.others, others)
        orphaned = self.orphaned + result.orphaned
        if m.orphans is not None and orphaned > m.orphans + margin(m.orphans):
            raise BoundExceeded("the orphan rule", m.orphans, orphaned)


class RowLockWait(Exception):
    """A batch's DELETE waited too long for a row another transaction holds."""


class TableLockWait(Exception):
    """A batch could not get a table's lock within the lock timeout."""

    def __init__(self, table: str) -> None:
        super().__init__(table)
        self.table = table


class BoundExceeded(Exception):
    """A batch would take a rule past its measured count plus the margin."""

    def __init__(self, rule: str, measured: int, would: int) -> None:
        super().__init__(rule)
        self.rule, self.measured, self.would = rule, measured, would
