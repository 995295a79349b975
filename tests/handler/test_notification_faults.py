"""Telegram or Sentry down, slow or failing: the run completes within its deadline, deletes the
same rows, and the failure is logged.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from handler import app, notify
from handler.notify import html
from handler.notify.sentry import MESSAGE as SENTRY_RUN_MESSAGE
from tests.support.db import PgSchema
from tests.support.faults import (
    ELIGIBLE,
    LIVE_EVENT,
    SURVIVORS,
    SilentServer,
    closed_port,
    invoke_handler,
    notify_env,
    sentry_dsn,
    shown,
)
from tests.support.notify import (
    CHAT_ID,
    DSN_KEY,
    SERVER_ERROR,
    TOKEN,
    FakeBot,
    SentryEndpoint,
    _closed_port,
    capture_logs,
    find_log,
    make_report,
    make_settings,
    reset_sentry,
    too_many_requests,
)

# No Sentry client enters or leaves a test here (another module's test may have left one).
pytestmark = pytest.mark.usefixtures("isolated_sentry", "quiet_fake_servers")


# The notification-fault runs get a 4.5-second Lambda: the notifications' share ends
# NOTIFY_RESERVE_S (2 s) before it, and the run must be back before the context's end. Short
# enough that Telegram's full retry schedule (0.5 + 1 + 2 s of backoff) would overrun it, and
# long enough that the engine's 1.5 s (less NOTIFY_MIN_BUDGET_S) finish its 200 keys on a
# loaded 2-core machine (at 3.5 s it ended `partial` under CI's four workers).
FAULT_TIMEOUT_S = 4.5


@pytest.mark.parametrize(
    "fault", ["telegram-down", "telegram-slow", "telegram-429", "sentry-down", "sentry-hung"]
)
def test_notification_faults_change_neither_the_deadline_nor_the_deletions(
    fault: str,
    fault_seeded: PgSchema,
    fault_bot: FakeBot,
    fault_sentry: SentryEndpoint,
    silent: SilentServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    telegram_url, dsn = fault_bot.api_url, sentry_dsn(fault_sentry.server.port)
    if fault == "telegram-down":
        telegram_url = f"http://127.0.0.1:{closed_port()}"
    elif fault == "telegram-slow":
        # Each request hangs for 10 s, longer than the whole Lambda budget; the default
        # TELEGRAM_TIMEOUT_S (10 s) stays, so only the deadline can cut it short.
        fault_bot.stall = threading.Event()
    elif fault == "telegram-429":
        # Waiting out each retry_after would take three times the whole Lambda budget.
        fault_bot.script = [too_many_requests(retry_after=2)]
    elif fault == "sentry-down":
        dsn = sentry_dsn(closed_port())
    else:
        dsn = sentry_dsn(silent.port)
    notify_env(monkeypatch, telegram_url=telegram_url, dsn=dsn)
    monkeypatch.setenv("CLEANUP_DEADLINE_MARGIN_MS", "500")

    with capture_logs() as lines:
        result, elapsed = invoke_handler(LIVE_EVENT, timeout_s=FAULT_TIMEOUT_S)

    assert elapsed < FAULT_TIMEOUT_S
    assert (result["status"], result["deleted"]) == ("completed", ELIGIBLE)
    assert fault_seeded.key_set() == SURVIVORS
    if fault in {"sentry-down", "sentry-hung"}:
        (summary,) = fault_bot.texts
        assert "LIVE · completed" in shown(summary)
        return
    (failed,) = find_log(lines(), "notification failed")
    assert (failed["channel"], failed["kind"]) == ("telegram", "summary")
    if fault != "telegram-down":
        assert fault_bot.requests, "the fault was never reached"
    # Sentry still got the run.
    assert [e for e in fault_sentry.events() if e.get("message") == SENTRY_RUN_MESSAGE]


def test_hung_sentry_does_not_cost_the_telegram_summary(
    fault_seeded: PgSchema,
    fault_bot: FakeBot,
    silent: SilentServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notify_env(monkeypatch, telegram_url=fault_bot.api_url, dsn=sentry_dsn(silent.port))
    # The engine is done in well under a second; the notifications own the rest, until
    # NOTIFY_RESERVE_S before the end.
    timeout_s = app.NOTIFY_RESERVE_S + 2.0
    monkeypatch.setenv("CLEANUP_DEADLINE_MARGIN_MS", str(int(app.NOTIFY_RESERVE_S * 1000)))

    result, elapsed = invoke_handler(LIVE_EVENT, timeout_s=timeout_s)

    assert (result["status"], elapsed < timeout_s) == ("completed", True)
    assert len(fault_bot.texts) == 1, "the Telegram summary was not sent"
    assert "LIVE · completed" in shown(fault_bot.texts[0])


def test_failed_telegram_is_logged_and_reported_to_sentry(
    sentry: SentryEndpoint, bot: FakeBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("handler.notify.telegram.BACKOFF_S", (0.05,))
    bot.script = [SERVER_ERROR]
    settings = make_settings(
        sentry_dsn=sentry.dsn,
        telegram_bot_token=TOKEN,
        telegram_chat_id=CHAT_ID,
        telegram_api_url=bot.api_url,
    )
    with capture_logs() as lines:
        notify.after_run(make_report(), settings, deadline=time.monotonic() + 10)

    (failed,) = find_log(lines(), "notification failed")
    assert failed["channel"] == "telegram"
    messages = {e["message"]: e for e in sentry.events()}
    report = messages["telegram notification failed"]
    assert report["level"] == "warning"
    assert report["tags"]["channel"] == "telegram"
    assert report["tags"]["kind"] == "summary"
    assert "HTTP 500" in report["contexts"]["notification"]["problem"]
    assert "WhatsApp session keys cleanup completed" in messages  # the run's own message too


def test_unreachable_sentry_does_not_stop_telegram(bot: FakeBot) -> None:
    settings = make_settings(
        sentry_dsn=f"http://{DSN_KEY}@127.0.0.1:{_closed_port()}/1",
        telegram_bot_token=TOKEN,
        telegram_chat_id=CHAT_ID,
        telegram_api_url=bot.api_url,
    )
    try:
        with notify.cron_monitor(settings):
            pass
        notify.after_run(make_report(), settings, deadline=time.monotonic() + 10)
        notify.on_failure(RuntimeError("x"), settings, deadline=time.monotonic() + 10, mode="live")
    finally:
        reset_sentry()

    assert len(bot.requests) == 2


def test_after_run_never_raises_even_when_rendering_breaks(
    bot: FakeBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> str:
        raise RuntimeError(f"renderer bug near {TOKEN}")

    monkeypatch.setattr(html, "render_summary", broken)
    settings = make_settings(
        telegram_bot_token=TOKEN, telegram_chat_id=CHAT_ID, telegram_api_url=bot.api_url
    )
    with capture_logs() as lines:
        notify.after_run(make_report(), settings, deadline=None)

    (logged,) = find_log(lines(), "notification error")
    assert logged["where"] == "after_run"
    assert logged["error"] == "RuntimeError: renderer bug near [redacted]"
    assert bot.requests == []


def test_on_failure_never_raises_even_when_rendering_breaks(
    bot: FakeBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> str:
        raise RuntimeError("renderer bug")

    monkeypatch.setattr(html, "render_failure", broken)
    settings = make_settings(
        telegram_bot_token=TOKEN, telegram_chat_id=CHAT_ID, telegram_api_url=bot.api_url
    )
    with capture_logs() as lines:
        notify.on_failure(ValueError("the run's error"), settings, deadline=None, mode="live")

    (logged,) = find_log(lines(), "notification error")
    assert logged["where"] == "on_failure"
