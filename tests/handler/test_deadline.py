"""The Lambda deadline: the margin and the notify reserve give `partial` before it, and the
notifications are still sent.
"""

from __future__ import annotations

import psycopg
import pytest

from handler import app, db
from handler.deleteloop import Progress
from handler.notify.sentry import MESSAGE as SENTRY_RUN_MESSAGE
from tests.support.db import PgSchema
from tests.support.faults import (
    ELIGIBLE,
    LIVE_EVENT,
    ROWS,
    SURVIVORS,
    invoke_handler,
    shown,
    slow_batches,
)
from tests.support.handler import invoke, seed_mixed, set_lambda_env
from tests.support.notify import (
    FakeBot,
    SentryEndpoint,
)

# No Sentry client enters or leaves a test here (another module's test may have left one).
pytestmark = pytest.mark.usefixtures("isolated_sentry", "quiet_fake_servers")


def test_deadline_leaves_the_margin_so_a_short_budget_ends_partial(
    pg: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no more time left than the margin, no batch starts: `partial`, nothing deleted."""
    seed_mixed(pg)
    set_lambda_env(monkeypatch, pg, CLEANUP_DEADLINE_MARGIN_MS="60000")
    result = invoke({"dry_run": False}, timeout_s=60.0)
    assert result["status"] == "partial"
    assert result["deleted"] == 0
    assert result["eligible"] == 70
    assert pg.count() == 235


def test_without_a_margin_the_same_budget_completes(
    pg: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_mixed(pg)
    set_lambda_env(monkeypatch, pg, CLEANUP_DEADLINE_MARGIN_MS="0")
    result = invoke({"dry_run": False}, timeout_s=60.0)
    assert (result["status"], result["deleted"]) == ("completed", 70)


def test_close_deadline_returns_partial_before_it_and_still_notifies(
    notified: PgSchema,
    fault_bot: FakeBot,
    fault_sentry: SentryEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 24 batches of >= 0.25 s each cannot fit in the ~2 s the engine gets here.
    slow_batches(notified, 0.25)
    timeout_s = 5.0
    # The margin covers the notifications' reserve (a smaller one: see the test below).
    margin_ms = int(app.NOTIFY_RESERVE_S * 1000) + 1000
    monkeypatch.setenv("CLEANUP_DEADLINE_MARGIN_MS", str(margin_ms))

    result, elapsed = invoke_handler(LIVE_EVENT, timeout_s=timeout_s)

    assert result["status"] == "partial"
    assert elapsed < timeout_s
    assert result["eligible"] == ELIGIBLE
    assert 0 < result["deleted"] < ELIGIBLE
    assert notified.count() == len(ROWS) - result["deleted"]
    assert notified.key_set() >= SURVIVORS
    (summary,) = fault_bot.texts
    assert "LIVE · partial" in shown(summary)
    (message,) = [e for e in fault_sentry.events() if e.get("message") == SENTRY_RUN_MESSAGE]
    assert message["level"] == "warning"
    assert (message["tags"]["status"], message["tags"]["mode"]) == ("partial", "live")
    assert fault_sentry.checkins() == []  # a run by hand does not check in


def test_close_deadline_with_a_margin_below_the_notify_reserve_still_notifies(
    notified: PgSchema, fault_bot: FakeBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_batches(notified, 0.25)
    timeout_s = 4.0
    monkeypatch.setenv("CLEANUP_DEADLINE_MARGIN_MS", "500")  # accepted by Settings (ge=0)

    result, elapsed = invoke_handler(LIVE_EVENT, timeout_s=timeout_s)

    assert result["status"] == "partial"
    assert elapsed < timeout_s
    assert len(fault_bot.texts) == 1, "the Telegram summary was not sent"
    assert "LIVE · partial" in shown(fault_bot.texts[0])


def test_a_locked_history_table_does_not_carry_the_run_past_the_lambda_timeout(
    notified: PgSchema, fault_bot: FakeBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the loop stops at its deadline, the run's history statements (INSERT, the trend)
    run under the session's lock timeout (2 s each) and statement timeout (300 s), whatever
    time is left: the deadline only stops batches. A history table locked by another session
    (a migration, VACUUM FULL, `init-db` on an upgrade) carries the run past the
    notifications' deadline and past Lambda's own timeout: no summary, no report."""
    slow_batches(notified, 0.25)
    monkeypatch.setenv("CLEANUP_DEADLINE_MARGIN_MS", "500")  # as test_deadline.py's own test
    with notified.connect() as conn:
        db.create_history(conn, None, "keys_cleanup_runs")
    holder = psycopg.connect(notified.dsn)  # its lock stays until it closes

    def lock_history(progress: Progress) -> None:  # once the loop is under way
        if progress.batches == 1:
            holder.execute("LOCK TABLE keys_cleanup_runs IN ACCESS EXCLUSIVE MODE")

    monkeypatch.setattr(app, "_log_progress", lock_history)
    timeout_s = 4.0
    try:
        result, elapsed = invoke_handler(LIVE_EVENT, timeout_s=timeout_s)
    finally:
        holder.close()
    assert result["status"] == "partial"
    assert result["deleted"] > 0
    assert elapsed < timeout_s, (
        f"the handler returned {elapsed:.1f} s into a {timeout_s:.0f} s Lambda"
    )
    assert len(fault_bot.texts) == 1, "the Telegram summary was not sent"
