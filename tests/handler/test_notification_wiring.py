"""The handler's notifications: a failed run alerts and still raises, a live run sends the
summary, the schedule checks in to Sentry Crons.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pytest_httpserver import HTTPServer

from handler.settings import ConfigError
from tests.support.db import PgSchema
from tests.support.handler import invoke, scheduled_event
from tests.support.notify import CHAT_ID, TOKEN, FakeBot, SentryEndpoint, reset_sentry


@pytest.fixture
def bot(httpserver: HTTPServer) -> FakeBot:
    return FakeBot(httpserver).install()


def _telegram(monkeypatch: pytest.MonkeyPatch, bot: FakeBot) -> None:
    monkeypatch.setenv("TELEGRAM_API_URL", bot.api_url)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", CHAT_ID)


def test_failed_run_alerts_telegram_and_still_raises(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, bot: FakeBot
) -> None:
    _telegram(monkeypatch, bot)
    monkeypatch.setenv("CLEANUP_TABLE", "no_such_table")
    with pytest.raises(ConfigError, match="no_such_table"):
        invoke({"dry_run": False})
    assert len(bot.texts) == 1
    assert "no_such_table" in bot.texts[0]


def test_live_run_sends_the_telegram_summary(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, bot: FakeBot
) -> None:
    _telegram(monkeypatch, bot)
    result = invoke({"dry_run": False})
    assert result["deleted"] == 70
    assert len(bot.texts) == 1
    assert "70" in bot.texts[0]


@pytest.fixture
def sentry_endpoint(httpserver: HTTPServer) -> Iterator[SentryEndpoint]:
    reset_sentry()
    yield SentryEndpoint(httpserver).install()
    reset_sentry()


def test_scheduled_run_checks_in_to_sentry_crons(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, sentry_endpoint: SentryEndpoint
) -> None:
    monkeypatch.setenv("SENTRY_DSN", sentry_endpoint.dsn)
    invoke(scheduled_event())
    statuses = [c["status"] for c in sentry_endpoint.checkins()]
    assert statuses == ["in_progress", "ok"]
    messages = [
        e.get("message") or e.get("logentry", {}).get("message") for e in sentry_endpoint.events()
    ]
    assert "WhatsApp session keys cleanup completed" in messages


@pytest.mark.parametrize("api_url", ["api.telegram.org", "htps://api.telegram.org"])
def test_a_broken_telegram_api_url_stops_a_live_run_before_it_deletes(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, api_url: str
) -> None:
    """Accepted, the live run deleted and then the alert failed: the failure went unsaid."""
    monkeypatch.setenv("TELEGRAM_API_URL", api_url)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", CHAT_ID)
    before = mixed.key_set()
    with pytest.raises(ConfigError, match="TELEGRAM_API_URL") as info:
        invoke({"dry_run": False})
    assert TOKEN not in str(info.value)
    assert mixed.key_set() == before


def test_a_run_refused_for_its_settings_alerts_telegram_and_still_raises(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, bot: FakeBot
) -> None:
    _telegram(monkeypatch, bot)
    monkeypatch.setenv("SENTRY_ENVIRONMENT", "staging")
    monkeypatch.setenv("CLEANUP_RETENTION_DAYS", "zero")
    with pytest.raises(ConfigError, match="CLEANUP_RETENTION_DAYS"):
        invoke(scheduled_event())
    (alert,) = bot.texts
    assert "failed" in alert
    assert "CLEANUP_RETENTION_DAYS" in alert
    assert "staging" in alert
    assert "nothing was deleted" in alert  # no table, no batches: the run never began
    assert "zero" not in alert  # a bad value is never echoed (it may be a secret)


def test_a_run_refused_for_its_database_url_alerts_without_the_password(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, bot: FakeBot
) -> None:
    password = "pw@canary_3e9b1d"  # an unencoded '@': the URL is refused at load
    _telegram(monkeypatch, bot)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://cleanup:{password}@127.0.0.1:1/app")
    with pytest.raises(ConfigError, match="DATABASE_URL") as info:
        invoke({"dry_run": False})
    (alert,) = bot.texts
    assert "DATABASE_URL" in alert
    for text in (alert, str(info.value)):
        assert "canary_3e9b1d" not in text
        assert TOKEN not in text


@pytest.mark.parametrize(
    ("env", "event"),
    [
        ({"CLEANUP_RETENTON_DAYS": "90"}, scheduled_event()),  # check_flags refusal (15f3e74)
        ({}, {**scheduled_event(), "dry_run": True}),  # unknown top-level key (61b4956)
    ],
    ids=["misspelt-variable", "unknown-event-key"],
)
def test_a_live_run_refused_before_it_starts_is_not_alerted_as_having_deleted(
    mixed: PgSchema,
    monkeypatch: pytest.MonkeyPatch,
    bot: FakeBot,
    env: dict[str, str],
    event: dict[str, object],
) -> None:
    """A live run refused for a misspelt setting or a bad event never touched the table: its
    alert must say nothing was deleted (as the bad-settings alert does since 0a9bd14), not that
    "batches committed before the failure stay deleted; the next run picks up the rest"."""
    _telegram(monkeypatch, bot)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    before = mixed.key_set()
    with pytest.raises(ConfigError):
        invoke(event)
    assert mixed.key_set() == before
    (alert,) = bot.texts
    assert "stay deleted" not in alert, alert
    assert "nothing was deleted" in alert.lower(), alert
