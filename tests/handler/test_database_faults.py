"""The database fails under the Lambda handler, with everything around it real: the error is
reported (Sentry, Telegram) and the next run finishes exactly.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from handler import app, cleanup
from handler.cleanup import CleanupError
from handler.deleteloop import Progress
from handler.history import History
from handler.notify.sentry import MESSAGE as SENTRY_RUN_MESSAGE
from tests.support.db import PgSchema
from tests.support.faults import (
    ELIGIBLE,
    LIVE_EVENT,
    ROWS,
    SURVIVORS,
    SilentServer,
    call_handler,
    closed_port,
    invoke_handler,
    notify_env,
    sentry_dsn,
    shown,
    slow_batches,
    terminate,
)
from tests.support.handler import SETTING_VARS, invoke
from tests.support.notify import (
    FakeBot,
    SentryEndpoint,
    capture_logs,
    find_log,
)

# No Sentry client enters or leaves a test here (another module's test may have left one).
pytestmark = pytest.mark.usefixtures("isolated_sentry", "quiet_fake_servers")


FAILED_TAGS = {"component": "cleanup", "operation": "session_keys_cleanup", "status": "failed"}


def drop_slow_batches(pg: PgSchema) -> None:
    with pg.connect() as conn:
        conn.execute("DROP TRIGGER slow_delete ON whatsapp_keys")


def kill_when_in_trigger(pg: PgSchema, pid: int, killed: threading.Event) -> None:
    """Terminate `pid` as soon as it sleeps in the slow trigger, i.e. inside a batch."""
    with pg.connect() as admin:
        for _ in range(1000):
            row = admin.execute(
                "SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
            if row is not None and row[0] == "PgSleep":
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                killed.set()
                return
            time.sleep(0.01)


def assert_failure_reported(
    fault_bot: FakeBot, fault_sentry: SentryEndpoint, error_type: str
) -> None:
    """One Telegram alert, one Sentry exception (level error, failure tags), an error check-in,
    and nothing else: no summary, no run message."""
    (alert,) = fault_bot.texts
    assert "WhatsApp keys cleanup failed" in shown(alert)
    assert error_type in shown(alert)
    (event,) = fault_sentry.events()
    assert event["level"] == "error"
    assert FAILED_TAGS.items() <= event["tags"].items()
    assert [v["type"] for v in event["exception"]["values"]] == [error_type]
    # A run by hand: the Crons monitor belongs to the schedule (tests/handler/test_sentry.py).
    assert fault_sentry.checkins() == []


def test_connection_killed_between_batches_alerts_and_the_next_run_finishes(
    notified: PgSchema,
    fault_bot: FakeBot,
    fault_sentry: SentryEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log_progress = app._log_progress
    committed: list[int] = []

    def kill_after_second_batch(progress: Progress) -> None:
        log_progress(progress)
        committed.append(progress.deleted)
        if progress.batches == 2:
            terminate(notified, notified.cleanup_backend())

    monkeypatch.setattr(app, "_log_progress", kill_after_second_batch)
    with pytest.raises(CleanupError, match=r"^database error \(\w+\): "):
        invoke_handler(LIVE_EVENT)

    assert_failure_reported(fault_bot, fault_sentry, "CleanupError")
    assert len(committed) == 2
    assert 0 < committed[-1] < ELIGIBLE
    # The two committed batches stay deleted, and nothing else went.
    assert notified.count() == len(ROWS) - committed[-1]
    assert notified.key_set() >= SURVIVORS

    monkeypatch.setattr(app, "_log_progress", log_progress)
    result, _ = invoke_handler(LIVE_EVENT)
    assert (result["status"], result["deleted"]) == ("completed", ELIGIBLE - committed[-1])
    assert notified.key_set() == SURVIVORS


@pytest.mark.parametrize(
    ("event", "mode", "label"),
    [({"dry_run": True}, "dry_run", "🧪 DRY RUN"), (LIVE_EVENT, "live", "LIVE")],
    ids=["dry-run", "live"],
)
def test_a_failure_alert_and_its_sentry_event_say_the_mode_of_the_run(
    notified: PgSchema,
    fault_bot: FakeBot,
    fault_sentry: SentryEndpoint,
    monkeypatch: pytest.MonkeyPatch,
    event: dict[str, object],
    mode: str,
    label: str,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://cleanup:pw@127.0.0.1:1/app")
    monkeypatch.setenv("CLEANUP_CONNECT_TIMEOUT_S", "2")
    with pytest.raises(CleanupError):
        invoke_handler(event)  # a dry run from the console, or the nightly live run
    assert_failure_reported(fault_bot, fault_sentry, "CleanupError")
    (alert,) = fault_bot.texts
    text = shown(alert)
    assert text.startswith(f"🚨 WhatsApp keys cleanup failed · {label}\n"), text
    # Only a live run has batches that stay deleted: a dry run deletes nothing.
    assert ("stay deleted" in text) == (mode == "live"), text
    (sent,) = fault_sentry.events()
    assert sent["tags"].get("mode") == mode, sent["tags"]


def test_connection_killed_inside_a_batch_rolls_it_back_and_the_next_run_finishes(
    notified: PgSchema,
    fault_bot: FakeBot,
    fault_sentry: SentryEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slow_batches(notified, 0.5)
    log_progress = app._log_progress
    committed: list[int] = []
    killed = threading.Event()
    killers: list[threading.Thread] = []

    def kill_inside_second_batch(progress: Progress) -> None:
        log_progress(progress)
        committed.append(progress.deleted)
        if progress.batches == 1:
            # The handler takes no callback of its own, so the kill comes from another thread
            # once the next batch has deleted its rows and sleeps in the trigger.
            killer = threading.Thread(
                target=kill_when_in_trigger,
                args=(notified, notified.cleanup_backend(), killed),
                daemon=True,
            )
            killer.start()
            killers.append(killer)

    monkeypatch.setattr(app, "_log_progress", kill_inside_second_batch)
    with pytest.raises(CleanupError, match=r"^database error \(\w+\): "):
        invoke_handler(LIVE_EVENT)
    for killer in killers:
        killer.join(timeout=10)

    assert killed.is_set(), "the second batch was never caught inside its DELETE"
    assert_failure_reported(fault_bot, fault_sentry, "CleanupError")
    # Only the first batch committed; the second, killed with its rows deleted, left none gone.
    assert len(committed) == 1
    assert committed[0] > 0
    assert notified.count() == len(ROWS) - committed[0]
    assert notified.key_set() >= SURVIVORS

    drop_slow_batches(notified)
    monkeypatch.setattr(app, "_log_progress", log_progress)
    result, _ = invoke_handler(LIVE_EVENT)
    assert (result["status"], result["deleted"]) == ("completed", ELIGIBLE - committed[0])
    assert notified.key_set() == SURVIVORS


CONNECT_TIMEOUT_S = 2  # psycopg, like libpq, treats anything shorter as 2 s


def unavailable_url(cause: str, password: str, server_dsn: str, silent: SilentServer) -> str:
    if cause == "refused":
        return f"postgresql://postgres:{password}@127.0.0.1:{closed_port()}/postgres"
    if cause == "unknown-host":
        return f"postgresql://postgres:{password}@no-such-host.invalid:5432/postgres"
    if cause == "no-answer":
        return f"postgresql://postgres:{password}@127.0.0.1:{silent.port}/postgres"
    # The real server, a role it does not know: authentication fails.
    return make_conninfo(server_dsn, user="no_such_role_kc", password=password)


@pytest.mark.parametrize("cause", ["refused", "unknown-host", "auth-failed", "no-answer"])
def test_unavailable_database_fails_within_the_connect_timeout_and_alerts(
    cause: str,
    pg_server_dsn: str,
    fault_bot: FakeBot,
    fault_sentry: SentryEndpoint,
    silent: SilentServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    password = f"pwcanary{uuid.uuid4().hex[:12]}"
    for name in SETTING_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", unavailable_url(cause, password, pg_server_dsn, silent))
    monkeypatch.setenv("CLEANUP_CONNECT_TIMEOUT_S", str(CONNECT_TIMEOUT_S))
    notify_env(
        monkeypatch, telegram_url=fault_bot.api_url, dsn=sentry_dsn(fault_sentry.server.port)
    )

    started = time.monotonic()
    with (
        capture_logs() as lines,
        pytest.raises(CleanupError, match=r"^could not connect to the database: ") as info,
    ):
        # A whole minute of Lambda time: only the connect timeout may end the wait.
        call_handler(LIVE_EVENT, timeout_s=60)
    elapsed = time.monotonic() - started

    # Bounded by the connect timeout (plus the local notifications), not by the Lambda's time.
    assert elapsed < CONNECT_TIMEOUT_S + 3
    if cause == "no-answer":
        assert len(silent.accepted) == 1  # one attempt, no retry
    assert_failure_reported(fault_bot, fault_sentry, "CleanupError")
    # Nothing after the failed connect: no report, no run message, no summary.
    logged = lines()
    assert len(find_log(logged, "run failed")) == 1
    assert find_log(logged, "run finished") == []
    assert not [e for e in fault_sentry.events() if e.get("message") == SENTRY_RUN_MESSAGE]
    for where, text in {
        "exception": str(info.value),
        "telegram": json.dumps(fault_bot.requests),
        "fault_sentry": fault_sentry.payloads(),
        "logs": "\n".join(logged),
    }.items():
        assert password not in text, where


def test_a_failed_history_record_is_in_the_run_failed_message_for_any_error(
    mixed: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    """operations.md: when the failed row cannot be recorded, 'the run's own error is still
    what it raises, with `run history not recorded for this failed run (...)` appended to the
    `run failed` message'. For an error that is not a psycopg.Error (a bug, a ConfigError or
    CleanupError raised under the lock) the note goes to exc.add_note only: str(exc), which is
    what the `run failed` line, Sentry's message and the Telegram alert show, lacks it."""

    def boom(self: object, conn: object, target: object) -> object:
        raise RuntimeError("a bug under the lock")

    def cannot_record(self: object, row: object) -> None:
        raise psycopg.errors.InsufficientPrivilege("permission denied for table keys_cleanup_runs")

    monkeypatch.setattr(cleanup._Run, "_locked", boom)
    monkeypatch.setattr(History, "record_failed", cannot_record)
    with capture_logs() as lines, pytest.raises(RuntimeError):
        invoke({"dry_run": False})
    (failed,) = find_log(lines(), "run failed")
    assert "run history not recorded for this failed run" in failed["error"], failed
