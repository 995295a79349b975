"""The handler's logs and EMF metrics: one line per phase, the mode dimension (a failed run keeps
the mode it asked for), correlation ids, and no secret in any of them.
"""

from __future__ import annotations

import json
from typing import cast

import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext
from psycopg.conninfo import make_conninfo

from handler import db, observability
from handler.app import lambda_handler, requested_mode
from handler.cleanup import CleanupError
from handler.local import LocalContext
from handler.settings import ConfigError
from tests.support.db import PgSchema
from tests.support.handler import (
    SCHEDULED_EVENT_ID,
    UNREACHABLE,
    captured_logs,
    emf_blobs,
    invoke,
    runs_metric,
    scheduled_event,
    seed_mixed,
    set_lambda_env,
)


def test_live_run_emits_report_metrics_with_mode_dimension(
    mixed: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    invoke({"dry_run": False})
    blobs = emf_blobs(capsys.readouterr().out)
    (main,) = [b for b in blobs if "KeysDeleted" in b]
    directive = main["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "WhatsAppKeysCleanup"
    assert set(directive["Dimensions"][0]) == {"service", "mode"}
    assert main["mode"] == "live"
    names = {m["Name"] for m in directive["Metrics"]}
    assert {
        "KeysTotal",
        "KeysEligible",
        "KeysDeleted",
        "KeysProtected",
        "TableBytes",
        "IndexBytes",
        "TotalBytes",
        "ReclaimableBytes",
        "DurationMs",
    } <= names
    assert set(observability.AGE_BUCKET_METRICS.values()) <= names
    assert (main["KeysTotal"], main["KeysEligible"], main["KeysDeleted"]) == (235, 70, 70)
    assert main["KeysProtected"] == 15
    assert main["KeysAgeOver30d"] == 85  # 70 eligible + 15 protected
    assert main["KeysAge1to7d"] == 150
    assert main["TotalBytes"] > 0
    run = runs_metric(blobs)
    assert run["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service", "mode", "status"]]
    assert (run["mode"], run["status"], run["Runs"]) == ("live", "completed", 1.0)


def test_dry_run_metrics_say_dry_run(mixed: PgSchema, capsys: pytest.CaptureFixture[str]) -> None:
    invoke({})
    blobs = emf_blobs(capsys.readouterr().out)
    (main,) = [b for b in blobs if "KeysDeleted" in b]
    assert (main["mode"], main["KeysEligible"], main["KeysDeleted"]) == ("dry_run", 70, 0)
    assert runs_metric(blobs)["mode"] == "dry_run"


def test_failed_run_is_counted_as_failed(
    mixed: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError):
        invoke({"dry_run": "yes"})
    blobs = emf_blobs(capsys.readouterr().out)
    run = runs_metric(blobs)
    # The flags never parsed: the run counts in the mode a manual event defaults to (dry);
    # no report metrics were emitted.
    assert (run["status"], run["mode"]) == ("failed", "dry_run")
    assert not [b for b in blobs if "KeysDeleted" in b]


MEASURED_COUNTS = ("eligible", "protected", "expired", "kept_keys", "orphaned", "orphaned_tenants")


def test_a_run_skipped_for_the_lock_publishes_no_measured_figures(
    mixed: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    with mixed.connect() as holder:
        oid = holder.execute("SELECT 'whatsapp_keys'::regclass::oid").fetchone()
        assert oid is not None
        holder.execute("SELECT pg_advisory_lock(%s)", (db.LOCK_CLASS + oid[0],))
        with captured_logs() as logs:
            result = invoke({"dry_run": False})
    assert result["status"] == "skipped"
    blobs = emf_blobs(capsys.readouterr().out)
    assert runs_metric(blobs)["status"] == "skipped"
    published = {name for blob in blobs for name in blob if name.startswith(("Keys", "Orphaned"))}
    # Nothing was measured: no 0 eligible, protected, kept, expired or orphaned keys either.
    assert published <= {"KeysDeleted"}, sorted(published)
    (finished,) = [line for line in logs() if line["message"] == "run finished"]
    assert not set(MEASURED_COUNTS) & set(finished), finished


def test_correlation_id_is_the_eventbridge_event_id(mixed: PgSchema) -> None:
    with captured_logs() as logs:
        invoke(scheduled_event())
    records = logs()
    assert records, "the handler logged nothing"
    assert {r.get("correlation_id") for r in records} == {SCHEDULED_EVENT_ID}
    finished = [r for r in records if r["message"] == "run finished"]
    assert len(finished) == 1
    assert (finished[0]["deleted"], finished[0]["mode"]) == (70, "live")


def test_a_manual_invoke_correlates_by_request_id(mixed: PgSchema) -> None:
    context = LocalContext()
    with captured_logs() as logs:
        lambda_handler({}, cast(LambdaContext, context))
    assert {r.get("correlation_id") for r in logs()} == {context.aws_request_id}


def test_one_log_line_per_phase(mixed: PgSchema) -> None:
    with captured_logs() as logs:
        invoke({"dry_run": False})
    messages = [r["message"] for r in logs() if r["level"] == "INFO"]
    assert messages[:3] == ["run requested", "database resolved", "cleanup started"]
    assert "run finished" in messages


def test_no_password_or_key_value_in_logs_metrics_or_result(
    pg: PgSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    canary = "pwcanary_4e1f0b"
    seed_mixed(pg)
    # The test server trusts local connections, so a password in the URL is carried, unused.
    set_lambda_env(monkeypatch, pg, DATABASE_URL=make_conninfo(pg.dsn, password=canary))
    with captured_logs() as logs:
        result = invoke({"dry_run": False, "verbose": True})
        # A failing run's error text reaches the logs too.
        monkeypatch.setenv(
            "DATABASE_URL", make_conninfo(pg.dsn, password=canary, dbname="no_such_db_x")
        )
        with pytest.raises(CleanupError):
            invoke({"dry_run": False})
    text = json.dumps(logs()) + capsys.readouterr().out + json.dumps(result)
    assert result["keys"], "verbose listing expected"
    assert "no_such_db_x" in text  # the failure was logged...
    assert canary not in text  # ...without the password
    assert "secret-old" not in text  # key values are {"k": "secret-<key_id>"}


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
