"""The pacing policies as pure functions (handler/pacing.py): span, WAL budget, replica-lag
throttle.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handler import pacing
from handler.pacing import Lag, Limits, Observed, Span, WalBudget

LIMITS = Limits(batch_rows=2500, rows_per_page=20.0, target_ms=50.0)


def drive(limits: Limits, densities: list[float], ms: float = 5.0) -> list[int]:
    """Run the span policy over pages of the given eligible densities; rows per batch."""
    span = pacing.first_span(limits)
    page, rows = 0, []
    while page < len(densities):
        pages = densities[page : page + span.pages]
        deleted = round(sum(pages))
        rows.append(deleted)
        span = pacing.next_span(limits, span, Observed(len(pages), deleted, ms))
        page += len(pages)
    return rows


def test_first_span_is_a_small_probe() -> None:
    span = pacing.first_span(LIMITS)
    # A fully eligible average page layout would need 125 pages for 2,500 rows.
    assert span.pages == 31
    assert span.densest == 20.0


def test_span_follows_the_observed_density() -> None:
    span = Span(100, 20.0)
    after = pacing.next_span(LIMITS, span, Observed(pages=100, deleted=1000, ms=5))
    # 10 rows per page: 250 pages would hold 2,500, but a span at most doubles.
    assert after.pages == 200
    again = pacing.next_span(LIMITS, after, Observed(pages=200, deleted=2000, ms=5))
    assert again.pages == 200  # the ceiling: 1.6 x 2,500 rows at 20 rows per page


def test_span_shrinks_at_once_when_batches_get_denser() -> None:
    span = Span(200, 20.0)
    after = pacing.next_span(LIMITS, span, Observed(pages=200, deleted=8000, ms=5))
    assert after.pages == 62  # 2,500 rows at 40 per page
    assert after.densest == 40.0


def test_empty_ranges_grow_the_span_only_up_to_the_density_ceiling() -> None:
    span = pacing.first_span(LIMITS)
    for _ in range(30):
        span = pacing.next_span(LIMITS, span, Observed(span.pages, 0, 1))
    assert span.pages == math.floor(pacing.ROW_CAP * 2500 / 20)


def test_slow_batch_shrinks_the_span_multiplicatively() -> None:
    span = Span(200, 20.0)
    after = pacing.next_span(LIMITS, span, Observed(pages=200, deleted=2000, ms=100))
    assert after.pages == 100  # half: the batch took twice its target
    floor = pacing.next_span(LIMITS, span, Observed(pages=200, deleted=2000, ms=10_000))
    assert floor.pages == 50  # never below a quarter in one step


@pytest.mark.parametrize(
    ("layout", "densities"),
    [
        ("scattered", [10.0] * 5000),
        ("head", [20.0] * 500 + [0.0] * 4500),
        ("tail", [0.0] * 4500 + [20.0] * 500),
        ("islands", ([0.0] * 300 + [20.0] * 20) * 15),
        ("denser than average", [0.0] * 2000 + [24.0] * 500),
    ],
)
def test_no_batch_deletes_more_than_twice_the_batch_size(
    layout: str, densities: list[float]
) -> None:
    rows = drive(LIMITS, densities)
    assert max(rows) <= 2 * LIMITS.batch_rows, layout
    assert sum(rows) == round(sum(densities))


@given(
    st.lists(st.sampled_from([0.0, 1.0, 5.0, 10.0, 20.0]), min_size=1, max_size=60),
    st.integers(min_value=1, max_value=80),
)
def test_no_batch_exceeds_twice_the_batch_size_on_any_layout(
    blocks: list[float], block_pages: int
) -> None:
    densities = [d for d in blocks for _ in range(block_pages)]
    rows = drive(Limits(batch_rows=100, rows_per_page=20.0, target_ms=50), densities)
    assert max(rows) <= 200


def test_wal_budget_allows_the_burst_then_the_rate() -> None:
    budget = WalBudget(rate=1000.0, burst=5000.0, credit=5000.0)
    budget, pause = budget.spend(4000, elapsed_s=0.0)
    assert pause == 0.0
    budget, pause = budget.spend(3000, elapsed_s=0.0)
    assert pause == pytest.approx(2.0)  # 2,000 bytes in debt at 1,000 bytes/s
    # The pause refills exactly the debt: a further 1,000 bytes cost one more second.
    budget, pause = budget.spend(1000, elapsed_s=2.0)
    assert pause == pytest.approx(1.0)


def test_wal_budget_refills_no_higher_than_the_burst() -> None:
    budget = WalBudget(rate=1000.0, burst=5000.0, credit=0.0)
    budget, pause = budget.spend(0, elapsed_s=3600)
    assert budget.credit == 5000.0
    assert pause == 0.0


def test_wal_budget_keeps_a_starting_credit_above_the_burst() -> None:
    budget = WalBudget(rate=1000.0, burst=5000.0, credit=50_000.0)
    budget, pause = budget.spend(40_000, elapsed_s=1)
    assert budget.credit == 10_000.0
    assert pause == 0.0


def test_unlimited_wal_budget_never_pauses() -> None:
    budget = WalBudget.start(0, trigger=1e9, since_checkpoint=0)
    assert budget.spend(10**12, elapsed_s=0)[1] == 0.0


def test_wal_budget_from_stock_server_settings() -> None:
    # max_wal_size 1 GB, checkpoint_completion_target 0.9, checkpoint_timeout 5 min.
    trigger = pacing.checkpoint_trigger(1 << 30, 0.9)
    assert trigger == pytest.approx((1 << 30) / 1.9)  # ~565 MB
    rate = pacing.default_wal_rate(trigger, 300)
    assert rate == pytest.approx(2 * trigger / 300)  # ~3.8 MB/s
    budget = WalBudget.start(rate, trigger, since_checkpoint=10 << 20)
    # Full speed up to 90% of the trigger: a 1M-row run (~400 MB of WAL here) never waits.
    assert budget.credit == pytest.approx(0.9 * trigger - (10 << 20))
    assert budget.credit > 400e6
    # A 4M-row run's ~1.6 GB of WAL fits well inside the Lambda's 15 minutes.
    assert (1.6e9 - budget.credit) / rate < 600


def test_wal_budget_without_checkpoint_position_assumes_half_the_headroom() -> None:
    budget = WalBudget.start(1000.0, trigger=1e9, since_checkpoint=None)
    assert budget.credit == 0.5e9


def test_wal_budget_after_the_trigger_starts_at_the_rate() -> None:
    budget = WalBudget.start(1000.0, trigger=1e9, since_checkpoint=2e9)
    assert budget.credit == 0.0
    assert budget.spend(500, elapsed_s=0)[1] == pytest.approx(0.5)


def test_pause_is_shortened_to_fit_the_deadline() -> None:
    assert pacing.pause_within_deadline(5.0, remaining_s=math.inf, work_s=1, share=0.1) == 5.0
    # 100 s left, 60 s of work: 40 s of slack, this batch is a tenth of the work.
    assert pacing.pause_within_deadline(5.0, remaining_s=100, work_s=60, share=0.1) == 4.0
    assert pacing.pause_within_deadline(5.0, remaining_s=50, work_s=60, share=0.1) == 0.0


def test_throttle_goes_when_every_replica_is_within_the_limit() -> None:
    lags = [Lag("standby a", 10), Lag("logical slot b", 100)]
    step = pacing.throttle_step(
        lags, limit_bytes=100, attempt=0, waited_s=0, max_wait_s=10, remaining_s=100
    )
    assert step.wait_s == 0
    assert step.stop is None
    assert step.worst == Lag("logical slot b", 100)


def test_throttle_backs_off_exponentially_up_to_the_cap() -> None:
    lags = [Lag("standby a", 1000)]
    waits = [
        pacing.throttle_step(
            lags, limit_bytes=100, attempt=n, waited_s=0, max_wait_s=1000, remaining_s=1e9
        ).wait_s
        for n in range(8)
    ]
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


def test_throttle_gives_up_once_the_waits_add_up_and_names_the_worst() -> None:
    lags = [Lag("standby a", 1000), Lag("logical slot b", 5000)]
    last = pacing.throttle_step(
        lags, limit_bytes=100, attempt=9, waited_s=9.5, max_wait_s=10, remaining_s=1e9
    )
    assert last.wait_s == pytest.approx(0.5)  # the last wait stops at the total
    done = pacing.throttle_step(
        lags, limit_bytes=100, attempt=10, waited_s=10, max_wait_s=10, remaining_s=1e9
    )
    assert done.stop == "lag"
    assert done.worst == Lag("logical slot b", 5000)


def test_throttle_deadline_wins_over_waiting() -> None:
    step = pacing.throttle_step(
        [Lag("standby a", 1000)],
        limit_bytes=100,
        attempt=3,
        waited_s=0,
        max_wait_s=1000,
        remaining_s=0.5,
    )
    assert step.stop == "deadline"


def test_throttle_limit_zero_does_not_watch() -> None:
    step = pacing.throttle_step(
        [Lag("standby a", 10**12)],
        limit_bytes=0,
        attempt=0,
        waited_s=0,
        max_wait_s=10,
        remaining_s=100,
    )
    assert step.wait_s == 0
    assert step.stop is None
