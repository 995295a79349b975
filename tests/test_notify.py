"""The notify API end to end: secrets from SSM / Secrets Manager (moto), canaries that must not
leak into any log line or Sentry event, and the promise that notifications never fail a run."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import sentry_sdk
from moto import mock_aws
from notify_support import (
    CHAT_ID,
    DB_PASSWORD,
    DSN_KEY,
    KEY_CANARY,
    SERVER_ERROR,
    TOKEN,
    FakeBot,
    SentryEndpoint,
    capture_logs,
    find_log,
    key_listing,
    make_report,
    make_settings,
    reset_sentry,
)
from pytest_httpserver import HTTPServer

from handler import notify
from handler.notify import html
from handler.secrets import PROVIDERS

REGION = "eu-west-1"


# No Sentry client enters or leaves a test here (another module's test may have left one).
pytestmark = pytest.mark.usefixtures("isolated_sentry")


@pytest.fixture
def bot(httpserver: HTTPServer) -> FakeBot:
    return FakeBot(httpserver).install()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    PROVIDERS.reset()
    with mock_aws():
        yield
    PROVIDERS.reset()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- secrets from SSM and Secrets Manager ------------------------------------------------------


@pytest.mark.usefixtures("aws")
def test_dsn_from_secrets_manager_and_token_from_ssm(sentry: SentryEndpoint, bot: FakeBot) -> None:
    arn = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="keys-cleanup/sentry-dsn", SecretString=sentry.dsn
    )["ARN"]
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name="/keys-cleanup/telegram-token", Value=TOKEN, Type="SecureString"
    )
    settings = make_settings(
        sentry_dsn_parameter=arn,
        telegram_bot_token_parameter="/keys-cleanup/telegram-token",
        telegram_chat_id=CHAT_ID,
        telegram_api_url=bot.api_url,
    )

    notify.init(settings)
    notify.after_run(make_report(), settings, deadline=time.monotonic() + 10)

    assert sentry_sdk.is_initialized()
    assert [e["message"] for e in sentry.events()] == ["WhatsApp session keys cleanup completed"]
    assert bot.paths == [f"/bot{TOKEN}/sendMessage"]


@pytest.mark.usefixtures("aws")
def test_dsn_from_ssm_and_token_from_secrets_manager(sentry: SentryEndpoint, bot: FakeBot) -> None:
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name="/keys-cleanup/sentry-dsn", Value=sentry.dsn, Type="SecureString"
    )
    arn = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="keys-cleanup/telegram-token", SecretString=TOKEN
    )["ARN"]
    settings = make_settings(
        sentry_dsn_parameter="/keys-cleanup/sentry-dsn",
        telegram_bot_token_parameter=arn,
        telegram_chat_id=CHAT_ID,
        telegram_api_url=bot.api_url,
    )

    with notify.cron_monitor(settings):
        pass
    notify.after_run(make_report(), settings, deadline=time.monotonic() + 10)

    assert [c["status"] for c in sentry.checkins()] == ["in_progress", "ok"]
    assert bot.paths == [f"/bot{TOKEN}/sendMessage"]


@pytest.mark.usefixtures("aws")
def test_parameter_wins_over_the_environment(bot: FakeBot) -> None:
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name="/keys-cleanup/telegram-token", Value=TOKEN, Type="SecureString"
    )
    settings = make_settings(
        telegram_bot_token="111:stale-token-from-env",
        telegram_bot_token_parameter="/keys-cleanup/telegram-token",
        telegram_chat_id=CHAT_ID,
        telegram_api_url=bot.api_url,
    )
    notify.after_run(make_report(), settings, deadline=None)

    assert bot.paths == [f"/bot{TOKEN}/sendMessage"]


@pytest.mark.usefixtures("aws")
def test_unreadable_parameters_are_logged_and_the_run_goes_on(bot: FakeBot) -> None:
    settings = make_settings(
        sentry_dsn_parameter="/keys-cleanup/missing-dsn",
        telegram_bot_token_parameter="arn:aws:secretsmanager:eu-west-1:123456789012:secret:nope",
        telegram_chat_id=CHAT_ID,
        telegram_api_url=bot.api_url,
    )
    with capture_logs() as lines:
        notify.init(settings)
        notify.after_run(make_report(), settings, deadline=None)

    assert not sentry_sdk.is_initialized()
    disabled = find_log(lines(), "sentry disabled")
    assert disabled
    assert {line["reason"] for line in disabled} == {"dsn unreadable"}
    (failed,) = find_log(lines(), "notification failed")
    assert failed["channel"] == "telegram"
    assert failed["error"].startswith("GetParameterError: ")
    assert bot.requests == []


# --- a failed notification ---------------------------------------------------------------------


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
        notify.on_failure(RuntimeError("x"), settings, deadline=time.monotonic() + 10)
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
        notify.on_failure(ValueError("the run's error"), settings, deadline=None)

    (logged,) = find_log(lines(), "notification error")
    assert logged["where"] == "on_failure"


# --- canaries ----------------------------------------------------------------------------------


def test_no_secret_or_key_value_in_any_log_line_or_sentry_event(
    sentry: SentryEndpoint, bot: FakeBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole notify flow with canaries for the token, the DSN key, the database password and
    key identifiers; every log line at DEBUG (ours as JSON, every library's) is captured."""
    monkeypatch.setattr("handler.notify.telegram.BACKOFF_S", (0.05,))
    database_url = f"postgresql://cleanup:{DB_PASSWORD}@db.internal:5432/app"
    settings = make_settings(
        sentry_dsn=sentry.dsn,
        database_url=database_url,
        telegram_bot_token=TOKEN,
        telegram_chat_id=CHAT_ID,
        telegram_api_url=bot.api_url,
    )
    report = make_report(keys=key_listing(200, marker=KEY_CANARY), keys_omitted=5)
    bot.script = [SERVER_ERROR, SERVER_ERROR, (200, {"ok": True, "result": {"message_id": 7}})]

    with capture_logs() as lines:
        notify.init(settings)
        with notify.cron_monitor(settings):
            pass
        notify.after_run(report, settings, deadline=time.monotonic() + 10)  # 500, 500, ok
        bot.script = [SERVER_ERROR]
        error = ConnectionError(
            f"connect to {database_url} failed; "
            f"POST {bot.api_url}/bot{TOKEN}/sendMessage; dsn {sentry.dsn}"
        )
        notify.on_failure(error, settings, deadline=time.monotonic() + 10)  # gives up
        # A Telegram that cannot be reached at all: requests' own error quotes the URL.
        unreachable = settings.model_copy(
            update={"telegram_api_url": f"http://127.0.0.1:{_closed_port()}"}
        )
        notify.on_failure(error, unreachable, deadline=time.monotonic() + 10)
        captured = lines()

    logged = "\n".join(captured)
    assert find_log(captured, "telegram message sent")  # the flow really ran
    assert len(find_log(captured, "notification failed")) == 2
    assert any("urllib3" in line for line in captured)  # libraries' DEBUG lines were captured
    for canary in (TOKEN, DSN_KEY, DB_PASSWORD, KEY_CANARY):
        assert canary not in logged, canary

    events = sentry.payloads()
    assert "WhatsApp keys cleanup failed" not in events  # sanity: Telegram text is not there
    errors = [e for e in sentry.events() if e.get("exception")]
    assert errors[0]["exception"]["values"][0]["value"].startswith("connect to [redacted] failed")
    for canary in (TOKEN, DSN_KEY, DB_PASSWORD, KEY_CANARY):
        assert canary not in events, canary

    # Telegram got the key identifiers (the verbose listing is for the operator) but no secret.
    texts = "\n".join(bot.texts)
    assert KEY_CANARY in texts
    for canary in (TOKEN, DSN_KEY, DB_PASSWORD):
        assert canary not in texts, canary
