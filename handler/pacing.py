"""How fast the delete loop goes: pure functions from what a batch observed to what comes next.

Three questions, three policies, each a small function without I/O (see docs/pacing.md):

- **How many pages the next batch covers** (`next_span`). A batch aims at `batch_rows` deleted
  rows. The first one is a small probe; after each, the span follows the density of eligible
  rows that batch actually found, grows at most `GROWTH`x per batch, and never exceeds the span
  in which the densest pages seen so far would hold more than `ROW_CAP` x `batch_rows` eligible
  rows. That ceiling is what keeps a batch small where a sparse region (fresh rows) ends and a
  dense one (rows all past the cutoff) begins. A batch slower than `target_ms` shrinks the next
  span multiplicatively (AIMD: the additive part is the bounded growth).
- **How long to pause after a batch** (`WalBudget`). A token bucket on the WAL the batches
  write: full speed while the WAL since the last checkpoint stays under most of the
  checkpoint trigger, then at most `rate` bytes per second. A checkpoint forced by WAL volume writes
  its dirty pages at the pace of that WAL, so a run that sprints through gigabytes makes the
  checkpoint sprint too, and the application's commits queue behind the I/O.
- **Whether to wait for replicas** (`throttle_step`). While a standby or logical slot lags by
  more than the limit, wait with exponential backoff; give up once the waits add up to more
  than the allowed total.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from handler.domain import Lag as Lag  # noqa: PLC0414 - re-exported

MAX_SPAN = 100_000
# The first batch covers this fraction of the span that `batch_rows` would need if every row
# of an average page were eligible: small enough that even the densest layout stays in budget.
PROBE_FRACTION = 0.25
# A span may at most double from one batch to the next.
GROWTH = 2.0
# No span may be wide enough for the densest pages seen to hold more than this many
# `batch_rows`. Below the 2x target, leaving room for pages denser than any seen.
ROW_CAP = 1.6
# A batch over its time target shrinks the next span by target/actual, but at most this much.
MAX_SHRINK = 0.25

# Replica-lag backoff: first wait, doubling up to the cap.
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0

# Checkpoint trigger: PostgreSQL starts a checkpoint once the WAL since the last one reaches
# max_wal_size / (1 + checkpoint_completion_target) (CalculateCheckpointSegments in xlog.c).
# The run may write at full speed until the WAL since the last checkpoint reaches this share
# of the trigger: a run that fits (1M rows here: ~410 MiB against ~485 MiB) never waits ...
HEADROOM_SHARE = 0.9
# ... then at most this many times the WAL rate that would never force a checkpoint
# (trigger / checkpoint_timeout). On stock settings that is ~3.8 MB/s: a 4M-row run (~1.6 GB of
# WAL, ~1.1 GB past the headroom) takes ~6 min (bench/), where 1x would take ~10 min, and it
# forces a checkpoint at most every checkpoint_timeout / 2, its writes spread over minutes
# instead of seconds.
RATE_FACTOR = 2.0
# Once the headroom is spent, the bucket refills to at most this many seconds of the rate, so
# the run never sprints again into a checkpoint in progress.
REFILL_S = 10.0
# Without the WAL position of the last checkpoint (pg_control_checkpoint), assume half the
# trigger is left.
UNKNOWN_HEADROOM_SHARE = 0.5


@dataclass(frozen=True)
class Limits:
    """What the policies aim at, fixed for one run."""

    batch_rows: int  # CLEANUP_BATCH_SIZE
    rows_per_page: float  # average rows per heap page, from the measurement
    target_ms: float  # CLEANUP_TARGET_BATCH_MS
    max_span: int = MAX_SPAN


@dataclass(frozen=True)
class Observed:
    """What one batch saw."""

    pages: int
    deleted: int
    ms: float


@dataclass(frozen=True)
class Span:
    """The next batch's page span, and the densest eligible rows per page seen so far."""

    pages: int
    densest: float


def _ceiling(limits: Limits, densest: float) -> int:
    return max(1, min(limits.max_span, math.floor(ROW_CAP * limits.batch_rows / densest)))


def first_span(limits: Limits) -> Span:
    """The probe: a quarter of the span a fully eligible average page layout would need."""
    densest = max(limits.rows_per_page, 1.0)
    full = limits.batch_rows / densest
    return Span(max(1, min(_ceiling(limits, densest), math.floor(full * PROBE_FRACTION))), densest)


def next_span(limits: Limits, span: Span, batch: Observed) -> Span:
    """The span after a batch: toward `batch_rows`, bounded by growth, density and time."""
    density = batch.deleted / batch.pages if batch.pages else 0.0
    densest = max(span.densest, density)
    # The span this batch's density would need; over an empty range, as wide as allowed.
    wanted = limits.batch_rows / density if density else math.inf
    pages = min(wanted, span.pages * GROWTH, _ceiling(limits, densest))
    if batch.ms > limits.target_ms:
        # Over the time target: shrink in proportion, whatever the rows said.
        pages = min(pages, batch.pages * max(MAX_SHRINK, limits.target_ms / batch.ms))
    return Span(max(1, math.floor(pages)), densest)


@dataclass(frozen=True)
class WalBudget:
    """A token bucket on the run's WAL: `credit` bytes may be written now, refilled at `rate`."""

    rate: float  # bytes per second; 0 = unlimited
    burst: float  # bucket size in bytes
    credit: float

    @classmethod
    def start(cls, rate: float, trigger: float, since_checkpoint: float | None) -> WalBudget:
        """A full-speed credit up to the checkpoint trigger's headroom, then `rate` (0: none)."""
        if since_checkpoint is None:
            credit = UNKNOWN_HEADROOM_SHARE * trigger
        else:
            credit = max(0.0, HEADROOM_SHARE * trigger - since_checkpoint)
        return cls(rate=rate, burst=REFILL_S * rate, credit=credit)

    def spend(self, wal_bytes: float, elapsed_s: float) -> tuple[WalBudget, float]:
        """Account for `wal_bytes` written over `elapsed_s`; returns the new bucket and a pause.

        The pause is how long to wait before the next batch so that the bucket is not in
        debt: the run then writes on average no more than `rate` once the burst is spent.
        """
        if self.rate <= 0:
            return self, 0.0
        # The refill stops at the burst, but never takes away a larger starting credit.
        credit = max(self.credit, min(self.burst, self.credit + self.rate * elapsed_s))
        credit -= wal_bytes
        # A debt stays on the books: the pause pays it off, and the refill during the pause
        # (counted in the next elapsed_s) brings the credit back to zero, not above it.
        return WalBudget(self.rate, self.burst, credit), max(0.0, -credit / self.rate)


def checkpoint_trigger(max_wal_size: float, completion_target: float) -> float:
    """WAL bytes after which PostgreSQL forces a checkpoint."""
    return max_wal_size / (1 + completion_target)


def default_wal_rate(trigger: float, checkpoint_timeout_s: float) -> float:
    """Bytes per second: RATE_FACTOR x the rate at which only timed checkpoints would run."""
    return RATE_FACTOR * trigger / max(checkpoint_timeout_s, 1.0)


def pause_within_deadline(
    pause_s: float, *, remaining_s: float, work_s: float, share: float
) -> float:
    """Shorten a pause so that the work left still fits before the deadline.

    `work_s` is the time the remaining batches are expected to take, `share` the part of that
    work the next batch is. The slack before the deadline is spread evenly over the batches
    left, so pacing can slow a run down to the deadline but never past it.
    """
    if math.isinf(remaining_s):
        return pause_s
    slack = max(0.0, remaining_s - work_s)
    return max(0.0, min(pause_s, slack * min(1.0, max(share, 0.0))))


@dataclass(frozen=True)
class ThrottleStep:
    """What to do about replica lag before a batch: go (wait_s 0), wait, or give up."""

    wait_s: float
    stop: str | None = None  # "lag": waited long enough; "deadline": a wait would pass it
    worst: Lag | None = None


def throttle_step(
    lags: list[Lag],
    *,
    limit_bytes: int,
    attempt: int,
    waited_s: float,
    max_wait_s: float,
    remaining_s: float,
) -> ThrottleStep:
    """Before a batch: wait while the largest lag is above the limit, with backoff.

    `attempt` counts the waits since the last batch; `waited_s` is the total waited so far in
    this run. Gives up once another wait would take the total over `max_wait_s`, or when the
    wait would run into the deadline (the caller then stops at the deadline).
    """
    worst = max(lags, key=lambda lag: lag.bytes, default=None)
    if limit_bytes <= 0 or worst is None or worst.bytes <= limit_bytes:
        return ThrottleStep(0.0, worst=worst)
    if waited_s >= max_wait_s:
        return ThrottleStep(0.0, stop="lag", worst=worst)
    wait = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2**attempt, max_wait_s - waited_s)
    if wait >= remaining_s:
        return ThrottleStep(0.0, stop="deadline", worst=worst)
    return ThrottleStep(max(wait, 0.001), worst=worst)
