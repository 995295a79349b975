"""What a run tells the operator, against a real PostgreSQL and a local Sentry: a failed run is
counted under the mode it asked for, only the schedule checks in to the Crons monitor, and
Sentry events carry the build's release.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PgSchema
from notify_support import SentryEndpoint, reset_sentry
from pytest_httpserver import HTTPServer
from test_app import (
    captured_logs,
    emf_blobs,
    invoke,
    runs_metric,
    scheduled_event,
    seed_mixed,
    set_lambda_env,
)

from handler import __version__
from handler.app import requested_mode
from handler.notify import sentry as sentry_module
from handler.settings import ConfigError

REPO = Path(__file__).resolve().parent.parent
UNREACHABLE = "postgresql://cleanup:pw@127.0.0.1:1/app"


@pytest.fixture
def mixed(pg: PgSchema, monkeypatch: pytest.MonkeyPatch) -> PgSchema:
    seed_mixed(pg)
    set_lambda_env(monkeypatch, pg)
    return pg


@pytest.fixture
def sentry(httpserver: HTTPServer) -> Iterator[SentryEndpoint]:
    reset_sentry()
    yield SentryEndpoint(httpserver).install()
    reset_sentry()


# --- a failed run keeps its mode ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "env", "mode"),
    [
        pytest.param(
            "scheduled", {"CLEANUP_MAX_DELETE_FRACTION": "0"}, "live", id="schedule-bad-setting"
        ),
        pytest.param(
            "scheduled",
            {"CLEANUP_MAX_DELETE_FRACTION": "0", "CLEANUP_DRY_RUN": "true"},
            "dry_run",
            id="dry-schedule-bad-setting",
        ),
        pytest.param({"dry_run": False, "retention_days": 0}, {}, "live", id="live-bad-flag"),
        pytest.param({"dry_run": True, "retention": 40}, {}, "dry_run", id="dry-unknown-flag"),
        pytest.param({"dry_run": "no"}, {}, "dry_run", id="flag-of-the-wrong-type"),
    ],
)
def test_a_run_refused_for_its_settings_or_flags_is_counted_in_its_mode(
    mixed: PgSchema,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    event: object,
    env: dict[str, str],
    mode: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError):
        invoke(scheduled_event() if event == "scheduled" else event)
    run = runs_metric(emf_blobs(capsys.readouterr().out))
    # The dashboard's "failed" line and the alarms watch the scheduled mode's series.
    assert (run["status"], run["mode"]) == ("failed", mode)


def test_the_requested_mode_agrees_with_the_parsed_request() -> None:
    assert requested_mode(scheduled_event(), {}) == "live"
    assert requested_mode(scheduled_event(dry_run=True), {}) == "dry_run"
    assert requested_mode(scheduled_event(), {"CLEANUP_DRY_RUN": "TRUE"}) == "dry_run"
    assert requested_mode({}, {}) == "dry_run"
    assert requested_mode({"dry_run": False}, {"CLEANUP_DRY_RUN": "true"}) == "live"
    assert requested_mode([], {}) == "dry_run"


def test_a_failed_scheduled_run_is_counted_live_when_the_database_is_unreachable(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", UNREACHABLE)
    monkeypatch.setenv("CLEANUP_CONNECT_TIMEOUT_S", "2")
    with pytest.raises(Exception, match="connect"):
        invoke(scheduled_event())
    run = runs_metric(emf_blobs(capsys.readouterr().out))
    assert (run["status"], run["mode"]) == ("failed", "live")


# --- Sentry Crons: the schedule only --------------------------------------------------------------


def test_a_dry_run_by_hand_reports_to_sentry_without_a_check_in(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, sentry: SentryEndpoint
) -> None:
    monkeypatch.setenv("SENTRY_DSN", sentry.dsn)
    invoke({"dry_run": True})
    assert sentry.checkins() == []
    assert [e["level"] for e in sentry.events()] == ["info"]


def test_a_failed_run_by_hand_leaves_the_monitor_alone(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, sentry: SentryEndpoint
) -> None:
    monkeypatch.setenv("SENTRY_DSN", sentry.dsn)
    monkeypatch.setenv("DATABASE_URL", UNREACHABLE)
    monkeypatch.setenv("CLEANUP_CONNECT_TIMEOUT_S", "2")
    with pytest.raises(Exception, match="connect"):
        invoke({"dry_run": True})
    assert sentry.checkins() == []
    (failure,) = sentry.events()
    assert failure["level"] == "error"


def test_a_failed_scheduled_run_checks_in_an_error(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, sentry: SentryEndpoint
) -> None:
    monkeypatch.setenv("SENTRY_DSN", sentry.dsn)
    monkeypatch.setenv("DATABASE_URL", UNREACHABLE)
    monkeypatch.setenv("CLEANUP_CONNECT_TIMEOUT_S", "2")
    with pytest.raises(Exception, match="connect"):
        invoke(scheduled_event())
    checkins = sentry.checkins()
    assert [c["status"] for c in checkins] == ["in_progress", "error"]
    assert checkins[0]["check_in_id"] == checkins[1]["check_in_id"]
    assert checkins[1]["duration"] >= 0


# --- release ------------------------------------------------------------------------------------


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


# --- Telegram half configured -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"TELEGRAM_BOT_TOKEN": "123456:secret-token-value"}, "TELEGRAM_CHAT_ID is empty"),
        (
            {"TELEGRAM_BOT_TOKEN_PARAMETER": "arn:aws:secretsmanager:eu-west-1:1:secret:t"},
            "TELEGRAM_CHAT_ID is empty",
        ),
        ({"TELEGRAM_CHAT_ID": "-1001234567890"}, "TELEGRAM_BOT_TOKEN"),
    ],
)
def test_a_half_configured_telegram_is_a_warning_and_a_report_note(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], missing: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TELEGRAM_NOTIFY_DRY_RUN", "true")
    with captured_logs() as logs:
        result = invoke({"dry_run": True})
    (note,) = [n for n in result["notes"] if n.startswith("Telegram is off")]
    assert missing in note
    warnings = [r for r in logs() if r["level"] == "WARNING"]
    assert [w.get("detail") for w in warnings] == [note]
    assert "secret-token-value" not in str(logs()) + str(result)


def test_a_fully_configured_or_absent_telegram_adds_no_note(mixed: PgSchema) -> None:
    result = invoke({"dry_run": True})
    assert not [n for n in result["notes"] if "Telegram" in n]


# --- events/README.md: replaying the scheduled event ---------------------------------------------


def test_the_events_readme_replays_the_scheduled_event_with_a_fresh_id(mixed: PgSchema) -> None:
    text = (REPO / "events" / "README.md").read_text("utf-8")
    (command,) = re.findall(r"^(python3 -c .*) > /tmp/scheduled\.json$", text, re.MULTILINE)
    fresh = subprocess.run(
        ["/bin/sh", "-c", command], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    original = json.loads((REPO / "events" / "scheduled.json").read_text())
    replay = json.loads(fresh)
    assert replay["id"] != original["id"]
    assert {k: v for k, v in replay.items() if k != "id"} == {
        k: v for k, v in original.items() if k != "id"
    }
    assert invoke(original)["status"] == "completed"
    again = invoke(original)
    assert (again["status"], again["duplicate"]) == ("skipped", True)
    assert invoke(replay)["duplicate"] is False
