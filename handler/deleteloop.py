"""The delete loop: eligible rows page range by page range, each range one short transaction.

The engine (cleanup.py) measures, guards and reports; this module only deletes, at the pace
handler/pacing.py decides, and says how it went.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Literal

from psycopg import errors as pg_errors
from psycopg import sql

from handler import db, pacing, resume
from handler.domain import TableName
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


# A batch whose locks took longer than this sets its statement timeout again before the
# DELETE (one more round trip), so that the lock wait and the DELETE together keep within
# the batch's budget.
LOCK_WAIT_RECHECK_MS = 20


def _auth_read(target: db.Target, policy: db.Policy) -> tuple[sql.Composable, str] | None:
    """The auth table each batch's DELETE reads, as (identifier, name): the orphan rule's (its
    NOT EXISTS), or the creds recheck's (no timestamp column). A reload of it in one
    transaction is then waited for as a table lock, not taken for a row conflict."""
    if db.applies_orphans(target, policy) and policy.orphans is not None:
        return policy.orphans.ident, policy.orphans.qualified
    lc = policy.lifecycle
    if lc is not None and lc.recheck is not None and lc.recheck.auth is not None:
        schema, table, _tenant, _creds = lc.recheck.auth
        return sql.Identifier(schema, table), f"{schema}.{table}"
    return None


def margin(measured: int) -> int:
    """How many keys a rule may delete beyond its measured count: max(100, 1%). Keys do not
    become eligible during a run by themselves (the cutoffs are fixed, timestamps only move
    forward; the own sender keys that follow their memory row are counted in), so more than a
    few past the count means the data changed under the run."""
    return max(100, measured // 100)


@dataclass(frozen=True)
class Measured:
    """What each rule was measured to take; a run deletes at most that plus the margin.

    `others`: eligible keys outside the orphan rule's measured tenants (the age and TTL
    rules), with our own sender keys that may follow their memory row within the run.
    `orphans`: eligible keys of those tenants (the orphan rule, with age and TTL on the same
    keys); None when the rule takes no tenant this run.
    """

    others: int
    orphans: int | None = None


@dataclass(frozen=True)
class Progress:
    pages_done: int
    pages_total: int  # the pages this run walks (a resumed run may leave some out)
    deleted: int
    batches: int
    # The batch just done: its relation and pages [first_page, end_page).
    oid: int = 0
    first_page: int = 0
    end_page: int = 0


ProgressFn = Callable[[Progress], None]


def remaining_ms(deadline: float | None) -> float:
    return float("inf") if deadline is None else (deadline - time.monotonic()) * 1000


def type_name(key_type: str | None) -> str:
    return "(null)" if key_type is None else key_type


@dataclass(frozen=True)
class LoopStats:
    """How the delete loop went: its one result, read by the engine and mapped onto the Report
    once (`report_fields`)."""

    status: Status = "completed"
    reason: str | None = None  # why it stopped (status partial)
    notes: tuple[str, ...] = ()
    deleted: int = 0
    orphaned: int = 0  # of `deleted`, keys of the orphan rule's measured tenants
    deleted_by_type: dict[str, int] | None = None  # counted by RETURNING, when asked for
    listing: db.Listing = field(default_factory=list)  # the verbose listing, so far as it goes
    batches: int = 0
    retries: int = 0
    skipped_pages: int = 0
    max_batch_ms: float = 0.0
    max_batch_rows: int = 0
    throttle_waits: int = 0
    throttle_wait_s: float = 0.0
    pacing_wait_s: float = 0.0
    # Per relation (oid), the page the next run starts at (handler/resume.py); the loop fills
    # it whatever the status, the engine records it only for a partial run.
    reached: dict[int, int] = field(default_factory=dict)
    wal_bytes: int = 0

    def report_fields(self) -> dict[str, object]:
        """The Report's fields these figures fill (status and reason included)."""
        return {
            "status": self.status,
            "reason": self.reason,
            "deleted": self.deleted,
            "orphaned_deleted": self.orphaned,
            "batches": self.batches,
            "batch_retries": self.retries,
            "skipped_pages": self.skipped_pages,
            "max_batch_ms": round(self.max_batch_ms),
            "max_batch_rows": self.max_batch_rows,
            "throttle_waits": self.throttle_waits,
            "throttle_wait_ms": round(self.throttle_wait_s * 1000),
            "pacing_wait_ms": round(self.pacing_wait_s * 1000),
            "wal_bytes": self.wal_bytes,
        }


@dataclass
class _Tally:
    """The loop's running figures; frozen into LoopStats when it ends."""

    status: Status = "completed"
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    deleted: int = 0
    orphaned: int = 0
    deleted_by_type: dict[str, int] | None = None
    listing: db.Listing = field(default_factory=list)
    batches: int = 0
    retries: int = 0
    skipped_pages: int = 0
    max_batch_ms: float = 0.0
    max_batch_rows: int = 0
    throttle_waits: int = 0
    throttle_wait_s: float = 0.0
    pacing_wait_s: float = 0.0
    reached: dict[int, int] = field(default_factory=dict)
    wal_bytes: int = 0  # WAL written from each batch's start to its end (server-wide)

    def add(self, result: db.BatchResult, batch_ms: float, list_limit: int) -> None:
        self.batches += 1
        self.max_batch_ms = max(self.max_batch_ms, batch_ms)
        self.max_batch_rows = max(self.max_batch_rows, result.deleted)
        self.deleted += result.deleted
        self.orphaned += result.orphaned
        if self.deleted_by_type is not None and result.by_type is not None:
            for key_type, n in result.by_type.items():
                name = type_name(key_type)
                self.deleted_by_type[name] = self.deleted_by_type.get(name, 0) + n
        if list_limit:
            self.listing.extend(result.listed[:list_limit])

    def freeze(self) -> LoopStats:
        values = {f.name: getattr(self, f.name) for f in fields(LoopStats)}
        values["notes"] = tuple(self.notes)
        if self.deleted_by_type is not None:
            values["deleted_by_type"] = dict(self.deleted_by_type)
        values["listing"] = list(self.listing)
        values["reached"] = dict(self.reached)
        return LoopStats(**values)


class _ReplicaWatch:
    """Before each batch: the standbys' and logical slots' lag, waited for while too far
    behind (handler/pacing.py decides how long), and named in notes where it cannot be."""

    def __init__(
        self, conn: db.Conn, settings: Settings, deadline: float | None, tally: _Tally
    ) -> None:
        self.conn, self.settings, self.deadline, self.tally = conn, settings, deadline, tally
        self.lsn = 0  # WAL insert position read just before the current batch
        self.hidden_noted = False
        self.idle_noted: set[str] = set()  # inactive logical slots already named in a note
        self.replicas = False  # a standby or logical slot was seen at the last reading

    def wait(self) -> str | None:
        """Wait while a replica lags; the reason the run must stop, or None to go on."""
        s, t = self.settings, self.tally
        attempt = 0
        while True:
            state = db.replication_state(self.conn)
            self.replicas = bool(state.lags)
            self.lsn = state.lsn
            if state.hidden_standbys and not self.hidden_noted:
                self.hidden_noted = True
                t.notes.append(
                    f"replay lag of {state.hidden_standbys} streaming standby(s) not watched: "
                    "this role cannot read pg_stat_replication (GRANT pg_monitor TO it)"
                )
            self._note_idle_slots(state.idle_slots)
            step = pacing.throttle_step(
                state.lags,
                limit_bytes=s.max_replica_lag_bytes,
                attempt=attempt,
                waited_s=t.throttle_wait_s,
                max_wait_s=s.throttle_max_wait_s,
                remaining_s=remaining_ms(self.deadline) / 1000,
            )
            if step.stop == "deadline":
                return "stopped at the deadline; the next run continues where the data stands"
            if step.stop is not None and step.worst is not None:
                return (
                    f"stopped: {step.worst.name} is {step.worst.bytes:,} bytes of WAL behind, "
                    f"above CLEANUP_MAX_REPLICA_LAG_BYTES={s.max_replica_lag_bytes:,}, after "
                    f"waiting {t.throttle_wait_s:.1f} s in total for replicas "
                    f"(CLEANUP_THROTTLE_MAX_WAIT_S={s.throttle_max_wait_s:g}); the next run "
                    "continues where the data stands"
                )
            if step.wait_s <= 0:
                return None
            t.throttle_waits += 1
            t.throttle_wait_s += step.wait_s
            db.nudge_standbys(self.conn)
            sleep(step.wait_s)
            attempt += 1

    def _note_idle_slots(self, idle: list[pacing.Lag]) -> None:
        """Name each inactive logical slot once: not waited for, but holding WAL back."""
        for slot in idle:
            if slot.name in self.idle_noted:
                continue
            self.idle_noted.add(slot.name)
            self.tally.notes.append(
                f"{slot.name} has no consumer connected and is {slot.bytes:,} bytes of WAL "
                "behind: not waited for (waiting cannot make it catch up); the primary keeps "
                "WAL for it until it is consumed or dropped (pg_drop_replication_slot)"
            )


class _WalPace:
    """The run's WAL budget (handler/pacing.py): after each batch, its WAL is charged, and a
    debt is paid off with a pause that still lets the run finish before its deadline."""

    def __init__(
        self, conn: db.Conn, settings: Settings, deadline: float | None, tally: _Tally
    ) -> None:
        self.conn, self.deadline, self.tally = conn, deadline, tally
        c = db.checkpoint_settings(conn)
        trigger = pacing.checkpoint_trigger(c.max_wal_size, c.completion_target)
        rate = settings.wal_bytes_per_s
        if rate is None:
            rate = round(pacing.default_wal_rate(trigger, c.timeout_s))
        self.budget = pacing.WalBudget.start(rate, trigger, c.since_checkpoint)
        self.spent_at = monotonic()  # when the budget was last settled

    def pace(self, lsn: int, *, work_s: float, share: float) -> None:
        """Charge the WAL written since `lsn` (read just before the batch: other sessions'
        WAL during pauses is theirs, and would otherwise slow the run); pause off any debt.
        `work_s`: the batches' time still ahead; `share`: the next batch's part of it."""
        wal = db.wal_insert_position(self.conn) - lsn
        self.tally.wal_bytes += max(0, wal)
        if self.budget.rate <= 0:
            return
        now = monotonic()
        self.budget, debt_s = self.budget.spend(wal, now - self.spent_at)
        self.spent_at = now
        if debt_s <= 0:
            return
        pause = pacing.pause_within_deadline(
            debt_s,
            remaining_s=remaining_ms(self.deadline) / 1000 - MIN_BATCH_BUDGET_MS / 1000,
            work_s=work_s,
            share=share,
        )
        if pause > 0:
            sleep(pause)
            self.tally.pacing_wait_s += pause


class DeleteLoop:
    """Delete eligible rows page range by page range, each range one short transaction.

    A range whose DELETE waits too long for a row the application holds is split in two and
    retried; a single page that still conflicts is skipped, and its keys are left for the next
    run. (Skipping by row would need SELECT ... FOR UPDATE SKIP LOCKED, which needs the UPDATE
    privilege; this way SELECT and DELETE are enough.) A table lock that cannot be had within
    the lock timeout, or a batch over its statement timeout, is retried a bounded number of
    times, then the run ends as `partial`. Spans and pauses come from handler/pacing.py.
    `run()` returns the figures, as a LoopStats.
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
        leaves: list[db.Leaf] | None = None,
        verbose: bool = False,
        starts: dict[int, int] | None = None,
        head_eligible: int = 0,
    ) -> None:
        self.conn, self.target, self.policy, self.now = conn, target, policy, now
        # The relations the batches' DELETEs name: the table itself, or a partitioned table's
        # leaves, each walked by its own TID ranges (a ctid is only meaningful in its relation).
        self.leaves = leaves or [db.Leaf(target.oid, target.schema, target.name, pages_total)]
        self.leaf_set = frozenset(leaf.oid for leaf in self.leaves)
        self.rel = target  # the relation of the batch under way
        self.offset = 0  # the pages of the segments done before this one
        # The walk's order: from a resume point (`starts`: relation oid -> page) to the end,
        # then the head only if it holds eligible keys (`head_eligible`, from the same pass).
        first = starts or {}
        self.plan = resume.plan(self.leaves, first, eligible=eligible, head_eligible=head_eligible)
        self.planned = sum(seg.pages for seg in self.plan)
        # Deleted keys per leaf, for the verbose runs' note on a partitioned table.
        self.by_leaf: dict[str, int] | None = (
            dict.fromkeys((f"{x.schema}.{x.name}" for x in self.leaves), 0)
            if verbose and target.partitioned
            else None
        )
        self.measured = measured or Measured(eligible)
        # The auth table the batches read (ident, name): when the orphan rule takes tenants
        # this run, or when each DELETE checks the creds rows again (no timestamp column).
        self.auth = _auth_read(target, policy)
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
        self.tally = _Tally(deleted_by_type={} if count_by_type else None)
        # Where each relation's next walk starts: a tail left out (no eligible key there) counts
        # as walked; a relation not reached keeps its start.
        tails = {seg.leaf.oid for seg in self.plan if not seg.head}
        self.tally.reached = {
            leaf.oid: first.get(leaf.oid, 0)
            if leaf.oid in tails
            else max(first.get(leaf.oid, 0), leaf.pages)
            for leaf in self.leaves
        }
        self.wal = _WalPace(conn, settings, deadline, self.tally)
        self.watch = _ReplicaWatch(conn, settings, deadline, self.tally)
        self.batch_s = 0.0  # time inside batches, to estimate the work left
        self.pages_done = 0
        self.pending: list[tuple[int, int]] = []  # split ranges, processed first (LIFO)
        self.attempts = 0  # batches in a row that hit a table lock or statement timeout

    def run(self) -> LoopStats:
        """Delete until done, stopped (the deadline, timeouts, a bound, a replica) or out of
        pages; the figures of how it went."""
        self._loop()
        if self.by_leaf is not None:
            self.tally.notes.append(
                "deleted per partition: "
                + ", ".join(f"{name} {n:,}" for name, n in self.by_leaf.items())
            )
        return self.tally.freeze()

    def so_far(self) -> LoopStats:
        """The figures up to now: after `run()` raised, what its committed batches did (each
        batch is counted once its transaction committed) and, in `reached`, pages every batch
        before them covered: a relation's start until its walk to the end was done."""
        return self.tally.freeze()

    def _loop(self) -> None:
        t = self.tally
        for seg in self.plan:
            leaf = seg.leaf
            self.rel = (
                replace(
                    self.target,
                    oid=leaf.oid,
                    schema=leaf.schema,
                    name=leaf.name,
                    whole=TableName(self.target.schema, self.target.name),
                )
                if self.target.partitioned
                else self.target
            )
            if not self._leaf(seg):
                return
            if not seg.head:
                t.reached[leaf.oid] = seg.hi
            self.offset += seg.pages
        if t.skipped_pages:
            t.notes.append(
                f"{t.skipped_pages} page(s) skipped: the application held rows there; their "
                "keys are left for the next run"
            )

    def _leaf(self, seg: resume.Segment) -> bool:
        """The batches over one segment of a relation's pages; False: the run must stop (and
        where its next walk starts is recorded)."""
        t = self.tally
        next_page = seg.lo
        while self.eligible and (self.pending or next_page < seg.hi):
            if not self._throttled():
                return self._stopped_at(seg, next_page)
            budget_ms = remaining_ms(self.deadline)
            if budget_ms < max(MIN_BATCH_BUDGET_MS, t.max_batch_ms * 2):
                self._stop("stopped at the deadline; the next run continues where the data stands")
                return self._stopped_at(seg, next_page)
            if self.pending:
                lo, hi = self.pending.pop()
            else:
                lo, hi = next_page, min(seg.hi, next_page + self.span.pages)
                next_page = hi
            outcome = self._attempt(lo, hi, budget_ms)
            if outcome == "stop":
                return self._stopped_at(seg, min(lo, next_page))
            if outcome == "done":
                self.attempts = 0
                self._pace(self.offset + next_page - seg.lo)
        return True

    def _stopped_at(self, seg: resume.Segment, page: int) -> Literal[False]:
        """The loop stops in `seg` with every page before `page` done but the ranges still
        pending: the next run starts at the first page not done."""
        self.tally.reached[seg.leaf.oid] = min([page, *(lo for lo, _ in self.pending)])
        return False

    def _attempt(self, lo: int, hi: int, budget_ms: float) -> Literal["done", "retry", "stop"]:
        """One batch over pages [lo, hi): done, to be retried (split or whole), or the loop
        must stop (reason set)."""
        t = self.tally
        try:
            self._batch(lo, hi, budget_ms)
        except BoundExceeded as exc:
            self._stop(
                f"stopped: {exc.rule} would have deleted {exc.would:,} keys, more than the "
                f"{exc.measured:,} measured plus a margin of {margin(exc.measured):,}; the "
                "last batch was rolled back. The data changed during the run (a restore, a "
                "bulk load, a reloaded auth table?): check it; the next run measures again"
            )
            return "stop"
        except RowLockWait:
            t.retries += 1
            if hi - lo > 1:
                mid = (lo + hi) // 2
                self.pending += [(mid, hi), (lo, mid)]
            else:
                t.skipped_pages += 1
                self.pages_done += 1
            return "retry"
        except (TableLockWait, pg_errors.QueryCanceled) as exc:
            return self._timed_out(exc, lo, hi, budget_ms)
        except PartitionsChanged as exc:
            self._stop(
                f"stopped: the partitions of {self.target.qualified} changed during the run "
                f"({exc}); nothing outside the measured partitions was deleted, and the next "
                "run measures again"
            )
            return "stop"
        return "done"

    def _timed_out(
        self, exc: TableLockWait | pg_errors.QueryCanceled, lo: int, hi: int, budget_ms: float
    ) -> Literal["retry", "stop"]:
        """A batch hit a table-lock or statement timeout: retried, up to CLEANUP_BATCH_ATTEMPTS
        in a row (a slow one in halves, and smaller batches from then on)."""
        self.tally.retries += 1
        self.attempts += 1
        if self.attempts >= self.settings.batch_attempts:
            what = (
                f"lock timeout on {exc.table} (is it locked by another session?"
                + (" is it being reloaded?" if exc.table != self.target.qualified else "")
                + f" CLEANUP_LOCK_TIMEOUT_MS={self.settings.lock_timeout_ms:,})"
                if isinstance(exc, TableLockWait)
                else "statement timeout"
            )
            self._stop(
                f"stopped after {self.attempts} batches in a row hit the {what} at "
                f"page {lo:,} of {self.rel.qualified}; the next run continues where "
                "the data stands"
            )
            return "stop"
        if isinstance(exc, pg_errors.QueryCanceled) and hi - lo > 1:
            # Too slow: smaller batches from now on.
            self.span = pacing.Span(max(1, self.span.pages // 2), self.span.densest)
            mid = (lo + hi) // 2
            self.pending += [(mid, hi), (lo, mid)]
        else:
            self.pending.append((lo, hi))
        sleep(min(0.05 * 2**self.attempts, max(0.0, budget_ms / 4000)))
        return "retry"

    def _throttled(self) -> bool:
        """Before a batch: wait while a replica lags. False: the run must stop (reason set)."""
        reason = self.watch.wait()
        if reason is not None:
            self._stop(reason)
        return reason is None

    def _pace(self, next_page: int) -> None:
        """After a batch: its WAL charged to the budget, any debt paid off with a pause."""
        pages_left = max(1, self.planned - next_page)
        self.wal.pace(
            self.watch.lsn,
            work_s=self.batch_s / self.pages_done * pages_left if self.pages_done else 0.0,
            share=self.span.pages / pages_left,
        )

    def _stop(self, reason: str) -> None:
        self.tally.status = "partial"
        self.tally.reason = reason

    def _batch(self, lo: int, hi: int, budget_ms: float) -> None:
        started = monotonic()
        with self.conn.transaction():
            self._same_partitions(self._lock(budget_ms))
            try:
                result = db.delete_range(
                    self.conn,
                    self.rel,
                    self.policy,
                    first_page=lo,
                    end_page=hi,
                    count_by_type=self.count_by_type,
                    list_limit=self.list_budget,
                    now=self.now,
                )
            except pg_errors.UndefinedTable as exc:
                # A leaf dropped (or detached and renamed) though the tree still listed it.
                raise PartitionsChanged(f"partition {self.rel.qualified} is gone") from exc
            except (pg_errors.LockNotAvailable, pg_errors.DeadlockDetected) as exc:
                # A deadlock with an application transaction is a row conflict too: PostgreSQL
                # rolled this batch back, so split the range as for a long wait.
                raise RowLockWait from exc
            # Still inside the transaction: past a bound, the batch is rolled back.
            self._check_bounds(result)
        batch_ms = (monotonic() - started) * 1000
        self.batch_s += batch_ms / 1000
        self.span = pacing.next_span(
            self.limits, self.span, pacing.Observed(hi - lo, result.deleted, batch_ms)
        )
        self.pages_done += hi - lo
        if self.by_leaf is not None:
            self.by_leaf[self.rel.qualified] += result.deleted
        t = self.tally
        t.add(result, batch_ms, self.list_budget)
        if self.list_budget:
            self.list_budget = max(0, self.list_budget - len(result.listed))
        if self.progress is not None:
            self.progress(
                Progress(self.pages_done, self.planned, t.deleted, t.batches, self.rel.oid, lo, hi)
            )

    def _lock(self, budget_ms: float) -> frozenset[int] | None:
        """A batch's settings and locks, inside its transaction; a partitioned target's leaves
        as the catalog has them under its lock (else None). The statement timeout holds for each
        statement: after a lock wait, the DELETE gets only what is left of the batch's budget."""
        statement_ms = int(min(self.settings.batch_timeout_ms, budget_ms))
        started = monotonic()
        leaves = self._settings_and_locks(statement_ms)
        waited_ms = (monotonic() - started) * 1000
        if waited_ms > LOCK_WAIT_RECHECK_MS:
            db.set_local(self.conn, statement_timeout=f"{max(1, int(statement_ms - waited_ms))}ms")
        return leaves

    def _settings_and_locks(self, statement_ms: int) -> frozenset[int] | None:
        s, conn = self.settings, self.conn
        # Losing the last batches to a crash only means the next run redoes them, so there is
        # no need to wait for each commit's WAL flush. With replicas attached, though, WAL left
        # in WAL buffers cannot be sent, and the lag the throttle reads would not shrink until
        # the WAL writer's next round: then flush, locally only (a synchronous standby's wait
        # is what the throttle bounds, not the commit).
        # One round trip for the three settings, one for the lock, the leaf list (partitioned)
        # and the row timeout: at ~250 batches per million rows, each round trip saved is ~3 %
        # of the loop.
        db.set_local(
            conn,
            synchronous_commit="local" if self.watch.replicas else "off",
            statement_timeout=f"{max(1, statement_ms)}ms",
            lock_timeout=f"{max(1, s.lock_timeout_ms)}ms",
        )
        # The table lock first, with the full lock timeout: a conflict here is a table lock
        # (DDL, VACUUM FULL), worth waiting for and retrying as a whole. So is the auth table's,
        # which the orphan rule's subquery reads (a TRUNCATE and reload in one transaction holds
        # it). Then rows: never wait long for one the application holds.
        row_wait = min(s.lock_timeout_ms, ROW_WAIT_MS)
        try:
            leaves = db.lock_for_delete_then_row_wait(
                conn, self.target, row_wait_ms=None if self.auth else row_wait
            )
        except pg_errors.LockNotAvailable as exc:
            raise TableLockWait(self.target.qualified) from exc
        if self.auth is not None:
            ident, name = self.auth
            try:
                db.lock_shared_then_row_wait(conn, ident, row_wait_ms=row_wait)
            except pg_errors.LockNotAvailable as exc:
                raise TableLockWait(name) from exc
        return leaves

    def _same_partitions(self, now: frozenset[int] | None) -> None:
        """Inside the batch, under the parent's lock (which DETACH and DROP of a partition, at
        any depth, wait for): the leaves read then are still those measured, else
        PartitionsChanged. `now`: None for a plain table."""
        if now is None:
            return
        if now != self.leaf_set:
            gone, new = len(self.leaf_set - now), len(now - self.leaf_set)
            raise PartitionsChanged(f"{gone} partition(s) detached or dropped, {new} attached")

    def _check_bounds(self, result: db.BatchResult) -> None:
        m, t = self.measured, self.tally
        others = t.deleted - t.orphaned + result.deleted - result.orphaned
        if others > m.others + margin(m.others):
            raise BoundExceeded("the age and TTL rules", m.others, others)
        orphaned = t.orphaned + result.orphaned
        if m.orphans is not None and orphaned > m.orphans + margin(m.orphans):
            raise BoundExceeded("the orphan rule", m.orphans, orphaned)


class PartitionsChanged(Exception):
    """A partition was attached, detached or dropped since the run measured."""


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
