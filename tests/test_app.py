"""The Lambda handler against a real PostgreSQL: strict events, deadlines, logs and EMF metrics,
notification wiring, and the Docker-free local invoke.

Each test gets a fresh schema (the `pg` fixture) holding the reference table.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext
from conftest import KeyRow, PgSchema, baileys_creds
from notify_support import CHAT_ID, TOKEN, FakeBot, SentryEndpoint, reset_sentry
from psycopg.conninfo import make_conninfo
from pytest_httpserver import HTTPServer

from handler import observability
from handler.app import lambda_handler, parse_event
from handler.cleanup import CleanupError
from handler.local import LocalContext
from handler.settings import ConfigError, Settings

REPO = Path(__file__).resolve().parent.parent
SCHEDULED_EVENT_ID = "cdc73f9d-aea9-11e3-9d5a-835b769c0d9c"
# Every variable Settings reads: tests start from none of them set.
SETTING_VARS = frozenset(f.alias for f in Settings.model_fields.values() if f.alias)


# --- helpers shared with test_events.py and test_secrets.py ---------------------------------


def set_lambda_env(monkeypatch: pytest.MonkeyPatch, pg: PgSchema, **overrides: str) -> None:
    """The function's environment: the test schema's database and nothing else configured."""
    for name in SETTING_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in pg.env(**overrides).items():
        monkeypatch.setenv(name, value)


def invoke(event: Any, *, timeout_s: float = 900.0) -> dict[str, Any]:
    return lambda_handler(event, cast(LambdaContext, LocalContext(timeout_s=timeout_s)))


def scheduled_event(**detail: Any) -> dict[str, Any]:
    event = json.loads((REPO / "events" / "scheduled.json").read_text())
    event["detail"] = detail
    return event


OLD = [KeyRow("c1", "session", f"old-s{i}", 60) for i in range(40)]
# Pre-key ids as Baileys numbers them; c2's creds (seed_mixed) put the newest 1,000 uploaded
# ids at 2,000..2,999, so these old ones go, and the fresh ones below stay by age.
OLD += [KeyRow("c2", "pre-key", str(i), 45) for i in range(1, 31)]
PROTECTED = [KeyRow("c1", "app-state-sync-key", f"sync{i}", 90) for i in range(10)]
PROTECTED += [KeyRow("c2", "lid-mapping", f"lid{i}", 100) for i in range(5)]
FRESH = [KeyRow("c1", "session", f"new-s{i}", 1) for i in range(100)]
FRESH += [KeyRow("c2", "pre-key", str(1000 + i), 5) for i in range(50)]


def seed_mixed(pg: PgSchema) -> None:
    """70 keys past the 30-day retention, 15 old but protected, 150 fresh: 30% eligible."""
    pg.create_reference_table()
    pg.add_auth({"c1": baileys_creds(1), "c2": baileys_creds(3000)})
    pg.insert_keys(OLD + PROTECTED + FRESH)


def idents(rows: list[KeyRow]) -> set[tuple[str, str, str]]:
    return {r.ident for r in rows}


def emf_blobs(stdout: str) -> list[dict[str, Any]]:
    """The EMF documents Powertools printed (one JSON object per line with an `_aws` key),
    each metric's value list of one collapsed to that value."""
    blobs = []
    for line in stdout.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            blob = json.loads(line)
            for metric in blob["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
                value = blob[metric["Name"]]
                if isinstance(value, list) and len(value) == 1:
                    blob[metric["Name"]] = value[0]
            blobs.append(blob)
    return blobs


def runs_metric(blobs: list[dict[str, Any]]) -> dict[str, Any]:
    (run,) = [b for b in blobs if "Runs" in b]
    return run


@contextmanager
def captured_logs() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The handler's Powertools log records, as the JSON objects it emits."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    keep = Keep()
    keep.setFormatter(observability.logger.registered_formatter)
    std = logging.getLogger(observability.logger.service)
    std.addHandler(keep)
    try:
        yield lambda: [json.loads(line) for line in lines]
    finally:
        std.removeHandler(keep)


@pytest.fixture
def mixed(pg: PgSchema, monkeypatch: pytest.MonkeyPatch) -> PgSchema:
    seed_mixed(pg)
    set_lambda_env(monkeypatch, pg)
    return pg


# --- event parsing ----------------------------------------------------------------------------


def test_empty_event_is_a_dry_run() -> None:
    request = parse_event({}, Settings.from_env({}))
    assert request.flags.dry_run is True
    assert (request.scheduled, request.event_id) == (False, None)


def test_scheduled_event_is_live_and_carries_its_id() -> None:
    request = parse_event(scheduled_event(), Settings.from_env({}))
    assert request.flags.dry_run is False
    assert (request.scheduled, request.event_id) == (True, SCHEDULED_EVENT_ID)


def test_scheduled_event_is_dry_when_cleanup_dry_run_is_set() -> None:
    settings = Settings.from_env({"CLEANUP_DRY_RUN": "true"})
    assert parse_event(scheduled_event(), settings).flags.dry_run is True
    # The environment's safety switch wins over a detail asking for a live run.
    assert parse_event(scheduled_event(dry_run=False), settings).flags.dry_run is True


def test_scheduled_event_takes_flags_from_its_detail() -> None:
    request = parse_event(
        scheduled_event(dry_run=True, retention_days=45, verbose=True), Settings.from_env({})
    )
    flags = request.flags
    assert (flags.dry_run, flags.retention_days, flags.verbose) == (True, 45, True)


BAD_EVENTS = [
    pytest.param({"dryrun": False}, "dryrun", id="unknown-key"),
    pytest.param({"dry_run": "false"}, "dry_run", id="string-for-bool"),
    pytest.param({"dry_run": 0}, "dry_run", id="int-for-bool"),
    pytest.param({"dry_run": False, "retention_days": 0}, "retention_days", id="retention-0"),
    pytest.param({"dry_run": False, "retention_days": -5}, "retention_days", id="negative"),
    pytest.param({"dry_run": False, "retention_days": 10**9}, "retention_days", id="huge"),
    pytest.param({"dry_run": False, "retention_days": "30"}, "retention_days", id="str-days"),
    pytest.param({"dry_run": False, "retention_days": 30.5}, "retention_days", id="float-days"),
    pytest.param({"dry_run": False, "verbose": None}, "verbose", id="null-flag"),
    pytest.param([{"dry_run": False}], "expected a JSON object", id="list"),
    pytest.param("live", "expected a JSON object", id="string"),
    pytest.param(None, "expected a JSON object", id="null"),
    pytest.param({"dry_run": False, "nested": {"dry_run": False}}, "nested", id="nested-junk"),
]


@pytest.mark.parametrize(("event", "field"), BAD_EVENTS)
def test_bad_event_fails_naming_the_field_and_deletes_nothing(
    mixed: PgSchema, event: Any, field: str
) -> None:
    before = mixed.key_set()
    with pytest.raises(ConfigError, match="invalid flags") as info:
        invoke(event)
    assert field in str(info.value)
    assert mixed.key_set() == before


@pytest.mark.parametrize(
    ("detail", "field"),
    [
        pytest.param({"dry_run": "no"}, "dry_run", id="string-for-bool"),
        pytest.param({"dryrun": True}, "dryrun", id="unknown-key"),
        pytest.param(None, "expected a JSON object", id="null-detail"),
    ],
)
def test_bad_scheduled_detail_fails_and_deletes_nothing(
    mixed: PgSchema, detail: Any, field: str
) -> None:
    event = scheduled_event()
    event["detail"] = detail
    before = mixed.key_set()
    with pytest.raises(ConfigError, match="scheduled event's detail") as info:
        invoke(event)
    assert field in str(info.value)
    assert mixed.key_set() == before


def test_other_eventbridge_events_are_refused(mixed: PgSchema) -> None:
    event = scheduled_event()
    event["detail-type"] = "EC2 Instance State-change Notification"
    before = mixed.key_set()
    with pytest.raises(ConfigError, match="not a scheduled event"):
        invoke(event)
    assert mixed.key_set() == before


def test_retention_below_the_minimum_is_refused_even_from_an_event(
    pg: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_mixed(pg)
    set_lambda_env(monkeypatch, pg, CLEANUP_MIN_RETENTION_DAYS="40", CLEANUP_RETENTION_DAYS="60")
    before = pg.key_set()
    with pytest.raises(ConfigError, match="CLEANUP_MIN_RETENTION_DAYS") as info:
        invoke({"dry_run": False, "retention_days": 35, "force": True})
    assert "retention_days" in str(info.value)
    assert pg.key_set() == before
    with pytest.raises(ConfigError, match="CLEANUP_MIN_RETENTION_DAYS"):
        invoke(scheduled_event(retention_days=35))
    assert pg.key_set() == before


def test_retention_from_the_event_reaches_the_engine(mixed: PgSchema) -> None:
    # 50 days: the 60-day sessions go, the 45-day pre-keys stay.
    result = invoke({"dry_run": False, "retention_days": 50})
    assert (result["retention_days"], result["deleted"]) == (50, 40)
    assert mixed.key_set() == idents(OLD[40:] + PROTECTED + FRESH)


def test_bad_settings_fail_naming_the_variable(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLEANUP_BATCH_SIZE", "lots")
    with pytest.raises(ConfigError, match="CLEANUP_BATCH_SIZE"):
        invoke({"dry_run": False})
    assert mixed.count() == 235


# --- deadline -------------------------------------------------------------------------------


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


# --- logs and metrics -------------------------------------------------------------------------


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


# --- notification wiring ----------------------------------------------------------------------


@pytest.fixture
def bot(httpserver: HTTPServer) -> FakeBot:
    return FakeBot(httpserver).install()


def test_failed_run_alerts_telegram_and_still_raises(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, bot: FakeBot
) -> None:
    monkeypatch.setenv("TELEGRAM_API_URL", bot.api_url)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", CHAT_ID)
    monkeypatch.setenv("CLEANUP_TABLE", "no_such_table")
    with pytest.raises(ConfigError, match="no_such_table"):
        invoke({"dry_run": False})
    assert len(bot.texts) == 1
    assert "no_such_table" in bot.texts[0]


def test_live_run_sends_the_telegram_summary(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch, bot: FakeBot
) -> None:
    monkeypatch.setenv("TELEGRAM_API_URL", bot.api_url)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", CHAT_ID)
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


# --- the Docker-free local invoke -------------------------------------------------------------


def run_local(pg: PgSchema, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SETTING_VARS}
    clean.update(pg.env(**env))
    return subprocess.run(
        [sys.executable, "-m", "handler.app", *args],
        cwd=REPO,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_local_invoke_prints_only_the_report_on_stdout(mixed: PgSchema) -> None:
    proc = run_local(mixed, "--event", "events/dry-run.json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # stdout is the report and nothing else
    assert (report["dry_run"], report["eligible"], report["deleted"]) == (True, 70, 0)
    assert '"run finished"' in proc.stderr  # the logs went to stderr
    assert mixed.count() == 235


def test_local_invoke_runs_live_events(mixed: PgSchema) -> None:
    proc = run_local(mixed, "--event", "events/live.json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["deleted"] == 70
    assert mixed.key_set() == idents(PROTECTED + FRESH)


def test_local_invoke_bad_event_exits_2_naming_the_field(mixed: PgSchema, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"dry_run": false, "dryrun": true}')
    proc = run_local(mixed, "--event", str(bad))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "dryrun" in proc.stderr
    assert mixed.count() == 235


def test_local_invoke_text_output(mixed: PgSchema) -> None:
    proc = run_local(mixed, "--text")
    assert proc.returncode == 0, proc.stderr
    assert "DRY RUN" in proc.stdout
