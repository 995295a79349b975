"""Sentry: what the SDK actually sends to an endpoint on 127.0.0.1 (levels, tags, context,
exceptions, Crons check-ins and the monitor config), and what it must never send.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
from pytest_httpserver import HTTPServer

from handler import __version__, notify
from handler.notify import sentry as sentry_module
from handler.settings import ConfigError, Settings
from tests.support.db import PgSchema
from tests.support.handler import (
    UNREACHABLE,
    captured_logs,
    invoke,
    scheduled_event,
)
from tests.support.notify import (
    CHAT_ID,
    DB_PASSWORD,
    DSN_KEY,
    KEY_CANARY,
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

# No Sentry client enters or leaves a test here (another module's test may have left one).
pytestmark = pytest.mark.usefixtures("isolated_sentry")


def sentry_settings(endpoint: SentryEndpoint, **values: Any) -> Settings:
    return make_settings(sentry_dsn=endpoint.dsn, sentry_environment="test", **values)


def only_event(endpoint: SentryEndpoint) -> dict[str, Any]:
    events = endpoint.events()
    assert len(events) == 1, events
    return events[0]


# --- the run message ---------------------------------------------------------------------------


def test_run_message_is_info_with_tags_and_figures(sentry: SentryEndpoint) -> None:
    settings = sentry_settings(sentry, warning_threshold=41_230)  # deleted == threshold
    notify.init(settings)
    notify.after_run(make_report(), settings, deadline=time.monotonic() + 10)

    event = only_event(sentry)
    assert event["message"] == "WhatsApp session keys cleanup completed"
    assert event["level"] == "info"
    assert event["environment"] == "test"
    assert event["tags"] == {
        "component": "cleanup",
        "operation": "session_keys_cleanup",
        "mode": "live",
        "status": "completed",
    }
    figures = event["contexts"]["cleanup"]
    assert figures["deleted"] == 41_230
    assert figures["eligible"] == 41_230
    assert figures["protected"] == 1_312
    assert figures["before"]["keys"] == 120_000
    assert figures["after"]["keys"] == 78_770
    assert figures["reclaimable_bytes"] == 12_910_592
    assert figures["age_distribution"][">30d"] == 41_230
    assert figures["by_type"]["pre-key"]["deleted"] == 33_900
    assert figures["listed_keys"] == 0
    assert "keys" not in figures  # the listing itself never goes to Sentry


def test_run_message_is_warning_one_above_threshold(sentry: SentryEndpoint) -> None:
    settings = sentry_settings(sentry, warning_threshold=41_229)
    notify.after_run(make_report(), settings, deadline=time.monotonic() + 10)

    assert only_event(sentry)["level"] == "warning"


@pytest.mark.parametrize("status", ["partial", "aborted", "skipped"])
def test_partial_aborted_or_skipped_run_is_a_warning(sentry: SentryEndpoint, status: str) -> None:
    report = make_report(status=status, deleted=10)
    notify.after_run(report, sentry_settings(sentry), deadline=time.monotonic() + 10)

    event = only_event(sentry)
    assert event["level"] == "warning"
    assert event["tags"]["status"] == status


def test_dry_run_is_tagged_dry_run(sentry: SentryEndpoint) -> None:
    report = make_report(dry_run=True, deleted=0)
    notify.after_run(report, sentry_settings(sentry), deadline=None)

    event = only_event(sentry)
    assert event["tags"]["mode"] == "dry_run"
    assert event["level"] == "info"


def test_key_listing_never_reaches_sentry(sentry: SentryEndpoint) -> None:
    report = make_report(keys=key_listing(50, marker=KEY_CANARY), keys_omitted=7)
    notify.after_run(report, sentry_settings(sentry), deadline=None)

    assert only_event(sentry)["contexts"]["cleanup"]["listed_keys"] == 57
    assert KEY_CANARY not in sentry.payloads()
    assert "s.whatsapp.net" not in sentry.payloads()


def test_duplicate_event_sends_no_message(sentry: SentryEndpoint) -> None:
    report = make_report(status="skipped", duplicate=True, before=None, after=None, deleted=0)
    notify.after_run(report, sentry_settings(sentry), deadline=None)

    assert sentry.events() == []


def _raise(exc: Exception) -> None:
    raise exc


def test_failure_is_captured_as_error_with_tags(sentry: SentryEndpoint) -> None:
    settings = sentry_settings(sentry)
    try:
        _raise(RuntimeError("connection to the database lost"))
    except RuntimeError as exc:
        notify.on_failure(exc, settings, deadline=time.monotonic() + 10, mode="live")

    event = only_event(sentry)
    assert event["level"] == "error"
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "RuntimeError"
    assert exception["value"] == "connection to the database lost"
    assert event["tags"] == {
        "component": "cleanup",
        "operation": "session_keys_cleanup",
        "status": "failed",
        "mode": "live",
    }
    # No frame carries local variables (they could hold a token or a row).
    for frame in exception["stacktrace"]["frames"]:
        assert "vars" not in frame


def test_secrets_in_an_exception_are_redacted(sentry: SentryEndpoint) -> None:
    settings = sentry_settings(
        sentry, database_url=f"postgresql://cleanup:{DB_PASSWORD}@db.internal:5432/app"
    )
    notify.init(settings)
    error = ConnectionError(
        f"failed: postgresql://cleanup:{DB_PASSWORD}@db.internal:5432/app "
        f"and https://api.telegram.org/bot{TOKEN}/sendMessage"
    )
    notify.on_failure(error, settings, deadline=None, mode="live")

    value = only_event(sentry)["exception"]["values"][0]["value"]
    assert DB_PASSWORD not in value
    assert TOKEN not in value
    assert "bot[redacted]/sendMessage" in value


def test_token_in_a_log_breadcrumb_is_redacted(
    sentry: SentryEndpoint, httpserver: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="some.http.library")
    bot = FakeBot(httpserver).install()
    settings = sentry_settings(
        sentry, telegram_bot_token=TOKEN, telegram_chat_id=CHAT_ID, telegram_api_url=bot.api_url
    )
    notify.after_run(make_report(), settings, deadline=None)
    # Any library logging a Bot API URL at INFO: log lines become breadcrumbs.
    logging.getLogger("some.http.library").info("POST %s", f"{bot.api_url}/bot{TOKEN}/sendMessage")
    notify.on_failure(RuntimeError("later failure"), settings, deadline=None, mode="live")

    assert len(bot.requests) == 2
    failure = sentry.events()[-1]
    crumbs = [str(c.get("message")) for c in failure.get("breadcrumbs", {}).get("values", [])]
    assert any(crumb.endswith("/bot[redacted]/sendMessage") for crumb in crumbs), crumbs
    assert TOKEN not in sentry.payloads()
    assert DSN_KEY not in sentry.payloads()


EXPECTED_MONITOR = {
    "schedule": {"type": "crontab", "value": "0 3 * * *"},
    "timezone": "UTC",
    "checkin_margin": 10,
    "max_runtime": 16,
    "failure_issue_threshold": 1,
    "recovery_threshold": 1,
}


def test_checkins_go_in_progress_then_ok_with_the_monitor_config(sentry: SentryEndpoint) -> None:
    settings = sentry_settings(sentry, sentry_monitor_slug="keys-cleanup-test")
    with notify.cron_monitor(settings):
        pass

    checkins = sentry.checkins()
    assert [c["status"] for c in checkins] == ["in_progress", "ok"]
    assert {c["monitor_slug"] for c in checkins} == {"keys-cleanup-test"}
    assert checkins[0]["check_in_id"] == checkins[1]["check_in_id"]
    assert checkins[0]["monitor_config"] == EXPECTED_MONITOR
    assert checkins[1]["duration"] >= 0


def test_monitor_config_follows_the_settings(sentry: SentryEndpoint) -> None:
    settings = sentry_settings(
        sentry,
        sentry_schedule="30 2 * * *",
        sentry_checkin_margin_min=5,
        sentry_max_runtime_min=20,
    )
    with notify.cron_monitor(settings):
        pass

    config = sentry.checkins()[0]["monitor_config"]
    assert config["schedule"] == {"type": "crontab", "value": "30 2 * * *"}
    assert config["checkin_margin"] == 5
    assert config["max_runtime"] == 20


def test_failed_run_checks_in_error_and_reraises(sentry: SentryEndpoint) -> None:
    settings = sentry_settings(sentry)
    with pytest.raises(LookupError, match="boom"), notify.cron_monitor(settings):
        raise LookupError("boom")

    checkins = sentry.checkins()
    assert [c["status"] for c in checkins] == ["in_progress", "error"]
    assert checkins[0]["check_in_id"] == checkins[1]["check_in_id"]


def test_cron_monitor_without_dsn_runs_the_block_and_sends_nothing(
    httpserver: HTTPServer,
) -> None:
    ran = []
    with notify.cron_monitor(make_settings()):
        ran.append(True)

    assert ran == [True]
    assert not sentry_sdk.is_initialized()
    assert httpserver.log == []


def test_cron_monitor_without_dsn_still_reraises() -> None:
    with pytest.raises(KeyError), notify.cron_monitor(make_settings()):
        raise KeyError("x")


# --- init ---------------------------------------------------------------------------------------


def test_init_is_idempotent(sentry: SentryEndpoint) -> None:
    settings = sentry_settings(sentry)
    notify.init(settings)
    client = sentry_sdk.get_client()
    notify.init(settings)

    assert sentry_sdk.get_client() is client
    assert client.is_active()


def test_init_without_dsn_leaves_sentry_off() -> None:
    notify.init(make_settings())

    assert not sentry_sdk.is_initialized()


def test_invalid_dsn_leaves_sentry_off_and_logs_without_the_dsn() -> None:
    bad = f"not-a-dsn-{DSN_KEY}"
    with capture_logs() as lines:
        notify.init(make_settings(sentry_dsn=bad))

    assert not sentry_sdk.is_initialized()
    (logged,) = find_log(lines(), "sentry disabled")
    assert logged["reason"] == "init failed"
    assert DSN_KEY not in "\n".join(lines())


@pytest.fixture
def sentry(httpserver: HTTPServer) -> Iterator[SentryEndpoint]:
    reset_sentry()
    yield SentryEndpoint(httpserver).install()
    reset_sentry()


def test_a_dry_run_by_hand_reports_to_sentry_without_a_check_in(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, sentry: SentryEndpoint
) -> None:
    monkeypatch.setenv("SENTRY_DSN", sentry.dsn)
    invoke({"dry_run": True})
    assert sentry.checkins() == []
    assert [e["level"] for e in sentry.events()] == ["info"]


def report_to_sentry_with_the_database_unreachable(
    monkeypatch: pytest.MonkeyPatch, sentry: SentryEndpoint
) -> None:
    """Sentry on, and the database unreachable: the run fails to connect within 2 s."""
    monkeypatch.setenv("SENTRY_DSN", sentry.dsn)
    monkeypatch.setenv("DATABASE_URL", UNREACHABLE)
    monkeypatch.setenv("CLEANUP_CONNECT_TIMEOUT_S", "2")


def test_a_failed_run_by_hand_leaves_the_monitor_alone(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, sentry: SentryEndpoint
) -> None:
    report_to_sentry_with_the_database_unreachable(monkeypatch, sentry)
    with pytest.raises(Exception, match="connect"):
        invoke({"dry_run": True})
    assert sentry.checkins() == []
    (failure,) = sentry.events()
    assert failure["level"] == "error"


def test_a_failed_scheduled_run_checks_in_an_error(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, sentry: SentryEndpoint
) -> None:
    report_to_sentry_with_the_database_unreachable(monkeypatch, sentry)
    with pytest.raises(Exception, match="connect"):
        invoke(scheduled_event())
    checkins = sentry.checkins()
    assert [c["status"] for c in checkins] == ["in_progress", "error"]
    assert checkins[0]["check_in_id"] == checkins[1]["check_in_id"]
    assert checkins[1]["duration"] >= 0


# --- a scheduled run that fails before the cleanup starts -------------------------------------
# The schedule fired and the run failed: the monitor must hear an error, never nothing (which it
# reports as a *missed* run ten minutes later, pointing the on-call at EventBridge).


def assert_failed_with_one_error(sentry: SentryEndpoint) -> None:
    assert [e["level"] for e in sentry.events()] == ["error"]
    checkins = sentry.checkins()
    assert [c["status"] for c in checkins] == ["in_progress", "error"]
    assert checkins[0]["check_in_id"] == checkins[1]["check_in_id"]


def test_a_scheduled_run_refused_for_its_event_checks_in_an_error(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, sentry: SentryEndpoint
) -> None:
    monkeypatch.setenv("SENTRY_DSN", sentry.dsn)
    with pytest.raises(ConfigError, match="dry_run"):
        invoke(scheduled_event(dry_run="yes"))
    assert_failed_with_one_error(sentry)


def test_a_scheduled_run_refused_for_its_settings_reports_the_error_and_checks_in_an_error(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, sentry: SentryEndpoint
) -> None:
    monkeypatch.setenv("SENTRY_DSN", sentry.dsn)
    monkeypatch.setenv("SENTRY_MONITOR_SLUG", "keys-cleanup-test")
    monkeypatch.setenv("CLEANUP_RETENTION_DAYS", "zero")  # one bad value; SENTRY_* are fine
    with pytest.raises(ConfigError, match="CLEANUP_RETENTION_DAYS"):
        invoke(scheduled_event())
    assert_failed_with_one_error(sentry)
    (event,) = sentry.events()
    assert event["tags"]["mode"] == "live"
    assert "CLEANUP_RETENTION_DAYS" in event["exception"]["values"][0]["value"]
    checkins = sentry.checkins()
    assert {c["monitor_slug"] for c in checkins} == {"keys-cleanup-test"}
    assert checkins[0]["monitor_config"] == EXPECTED_MONITOR


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A moto Secrets Manager, and Powertools' cache emptied before and after."""
    from moto import mock_aws  # noqa: PLC0415 - moto is slow to import; only this test needs it

    from handler.secrets import PROVIDERS  # noqa: PLC0415

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    PROVIDERS.reset()
    with mock_aws():
        yield
    PROVIDERS.reset()


def test_a_scheduled_run_whose_database_secret_cannot_be_read_checks_in_an_error(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, sentry: SentryEndpoint, aws: None
) -> None:
    monkeypatch.setenv("SENTRY_DSN", sentry.dsn)
    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.setenv(
        "DATABASE_SECRET_ARN", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:gone-AbCdEf"
    )
    with pytest.raises(Exception, match="DATABASE_SECRET_ARN"):
        invoke(scheduled_event())
    assert_failed_with_one_error(sentry)


def test_a_run_by_hand_refused_for_its_settings_is_reported_without_a_check_in(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, sentry: SentryEndpoint
) -> None:
    monkeypatch.setenv("SENTRY_DSN", sentry.dsn)
    monkeypatch.setenv("CLEANUP_RETENTION_DAYS", "zero")
    with pytest.raises(ConfigError, match="CLEANUP_RETENTION_DAYS"):
        invoke({"dry_run": True})
    (event,) = sentry.events()
    assert event["level"] == "error"
    assert event["tags"]["mode"] == "dry_run"
    assert sentry.checkins() == []


def test_a_broken_telegram_setting_still_lets_sentry_report_the_scheduled_failure(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, sentry: SentryEndpoint
) -> None:
    monkeypatch.setenv("SENTRY_DSN", sentry.dsn)
    monkeypatch.setenv("TELEGRAM_API_URL", "api.telegram.org")  # no scheme: refused
    with captured_logs() as logs, pytest.raises(ConfigError, match="TELEGRAM_API_URL"):
        invoke(scheduled_event())
    assert_failed_with_one_error(sentry)
    (off,) = [r for r in logs() if r["message"] == "notification settings invalid"]
    assert off["channel"] == "telegram"
    assert "TELEGRAM_API_URL" in off["error"]


def test_broken_sentry_settings_are_logged_and_the_run_fails_as_before(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, sentry: SentryEndpoint
) -> None:
    monkeypatch.setenv("SENTRY_DSN", sentry.dsn)
    monkeypatch.setenv("SENTRY_CHECKIN_MARGIN_MINUTES", "soon")
    with captured_logs() as logs, pytest.raises(ConfigError, match="SENTRY_CHECKIN_MARGIN"):
        invoke(scheduled_event())
    # Sentry stays off: nothing to check in with, nothing sent.
    assert sentry.events() == []
    assert sentry.checkins() == []
    (off,) = [r for r in logs() if r["message"] == "notification settings invalid"]
    assert off["channel"] == "sentry"
    assert DSN_KEY not in str(logs())


def test_sentry_events_carry_the_release_of_the_build(
    mixed: PgSchema,
    monkeypatch: pytest.MonkeyPatch,
    sentry: SentryEndpoint,
    tmp_path: Path,
) -> None:
    build_commit = tmp_path / "BUILD_COMMIT"
    build_commit.write_text("0123456789ab\n")
    monkeypatch.setattr(sentry_module, "BUILD_COMMIT", build_commit)
    monkeypatch.setenv("SENTRY_DSN", sentry.dsn)
    invoke(scheduled_event())
    release = f"keys-cleanup@{__version__}+0123456789ab"
    assert {e.get("release") for e in sentry.events()} == {release}
    assert {c.get("release") for c in sentry.checkins()} == {release}


def test_without_a_build_the_release_is_the_package_version(tmp_path: Path) -> None:
    assert sentry_module.BUILD_COMMIT.name == "BUILD_COMMIT"
    assert not sentry_module.BUILD_COMMIT.exists(), "a checkout has no BUILD_COMMIT"
    assert sentry_module.release() == f"keys-cleanup@{__version__}"
