"""Faults through the Lambda handler, with everything around it real.

Each test calls `handler.app.lambda_handler` with a `LocalContext`, settings from the (patched)
environment, a seeded table on a real PostgreSQL, a Telegram Bot API and a Sentry envelope
endpoint on 127.0.0.1. The same faults at the engine level are in test_safety.py.

- The connection killed between and inside batches: the invocation raises, the Sentry exception
  and the Telegram alert arrive, committed batches stay deleted, the interrupted batch is rolled
  back, and the next invocation ends with exactly the expected rows.
- PostgreSQL unavailable at the start: a clear error within the connect timeout, nothing else
  attempted, an alert, and no password in it.
- Telegram down, slow or answering 429; Sentry down: the run completes within its deadline and
  deletes exactly what it would have.
- The Lambda deadline close: `partial` before it, and the notifications still sent.
- Canaries for every secret through the whole flow: none comes out anywhere.

Two tests pin down that the notifications keep their share of the time: with a
CLEANUP_DEADLINE_MARGIN_MS below NOTIFY_RESERVE_S, and with a hung Sentry endpoint.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import quote, urlencode

import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext
from conftest import KeyRow, PgSchema, baileys_creds
from notify_support import (
    CHAT_ID,
    TOKEN,
    FakeBot,
    SentryEndpoint,
    capture_logs,
    find_log,
    reset_sentry,
    telegram_structure,
    too_many_requests,
)
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_httpserver import HTTPServer
from test_app import SETTING_VARS, set_lambda_env

from handler import app, observability
from handler.cleanup import CleanupError
from handler.deleteloop import Progress
from handler.local import LocalContext
from handler.notify.sentry import MESSAGE as SENTRY_RUN_MESSAGE

# 610 keys of ~300 bytes, ~25 to a page: with CLEANUP_BATCH_SIZE=10 every batch is one page,
# so a run takes ~24 batches and a fault can land between or inside them.
PAD = "x" * 200
EVERY = 3  # one key in three is past the retention


def key_rows(value: str = "secret") -> list[KeyRow]:
    rows = [
        KeyRow(
            "c1",
            "session" if i % 2 else "pre-key",
            # Pre-key ids are numbers, far below the window of the creds (CREDS).
            f"k{i:04d}" if i % 2 else str(i),
            40 if i % EVERY == 0 else 3,
            {"k": f"{value}-{i}", "pad": PAD},
        )
        for i in range(600)
    ]
    # Old, but of a type that never ages out.
    rows += [
        KeyRow("c2", "app-state-sync-key", f"sync{i}", 90, {"k": f"{value}-sync{i}"})
        for i in range(10)
    ]
    return rows


# c1's creds: its pre-keys are all uploaded long ago, so their age decides.
CREDS = {"c1": baileys_creds(100_000)}
ROWS = key_rows()
SURVIVORS = {r.ident for r in ROWS if r.age < 30 or r.key_type == "app-state-sync-key"}
ELIGIBLE = len(ROWS) - len(SURVIVORS)
FAILED_TAGS = {"component": "cleanup", "operation": "session_keys_cleanup", "status": "failed"}


# --- servers and environment -------------------------------------------------------------------


# No Sentry client enters or leaves a test here (another module's test may have left one).
pytestmark = pytest.mark.usefixtures("isolated_sentry")


@pytest.fixture(autouse=True)
def _quiet_fake_servers() -> Iterator[None]:
    """werkzeug logs every request the fake servers get, the bot token in its path included.

    That is the test double talking, not the job: left on, it would put the token into the
    captured output of the canary test.
    """
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)
    yield
    werkzeug.setLevel(level)


def _local_server() -> HTTPServer:
    # Threaded, and one per service: a stalled Telegram must not hold up Sentry's envelopes.
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    return server


@pytest.fixture
def bot_server() -> Iterator[HTTPServer]:
    server = _local_server()
    yield server
    server.clear()
    server.stop()


@pytest.fixture
def bot(bot_server: HTTPServer) -> Iterator[FakeBot]:
    fake = FakeBot(bot_server).install()
    yield fake
    if fake.stall is not None:
        fake.stall.set()  # release a stalled request before the server stops


@pytest.fixture
def sentry() -> Iterator[SentryEndpoint]:
    server = _local_server()
    yield SentryEndpoint(server).install()
    reset_sentry()  # the client flushes and closes while its endpoint still answers
    server.clear()
    server.stop()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class SilentServer:
    """Accepts TCP connections and never says a word: a hung server. Keeps what it accepted."""

    port: int
    accepted: list[socket.socket] = field(default_factory=list)


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.settimeout(0.05)
        server = SilentServer(sock.getsockname()[1])
        stop = threading.Event()

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn, _ = sock.accept()
                except TimeoutError:
                    continue
                server.accepted.append(conn)

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        yield server
        stop.set()
        thread.join()
        for conn in server.accepted:  # a client still waiting gets its EOF now
            conn.close()


def sentry_dsn(port: int, key: str = "faultsdsnkey0123456789") -> str:
    return f"http://{key}@127.0.0.1:{port}/1"


def notify_env(
    monkeypatch: pytest.MonkeyPatch, *, telegram_url: str, dsn: str, token: str = TOKEN
) -> None:
    monkeypatch.setenv("TELEGRAM_API_URL", telegram_url)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", token)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", CHAT_ID)
    monkeypatch.setenv("SENTRY_DSN", dsn)
    monkeypatch.setenv("SENTRY_ENVIRONMENT", "test")


@pytest.fixture
def seeded(pg: PgSchema, monkeypatch: pytest.MonkeyPatch) -> PgSchema:
    pg.create_reference_table()
    pg.add_auth(CREDS)
    pg.insert_keys(ROWS)
    set_lambda_env(monkeypatch, pg, CLEANUP_BATCH_SIZE="10")
    return pg


@pytest.fixture
def notified(
    seeded: PgSchema, bot: FakeBot, sentry: SentryEndpoint, monkeypatch: pytest.MonkeyPatch
) -> PgSchema:
    """The seeded table, with both notifiers pointing at their local servers."""
    notify_env(monkeypatch, telegram_url=bot.api_url, dsn=sentry_dsn(sentry.server.port))
    return seeded


def call_handler(event: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    return app.lambda_handler(event, cast(LambdaContext, LocalContext(timeout_s=timeout_s)))


def invoke(event: dict[str, Any], *, timeout_s: float = 900.0) -> tuple[dict[str, Any], float]:
    """The handler's result and the seconds it took, against a context of `timeout_s`."""
    started = time.monotonic()
    result = call_handler(event, timeout_s)
    return result, time.monotonic() - started


LIVE: dict[str, Any] = {"dry_run": False}


# --- database helpers --------------------------------------------------------------------------


def terminate(pg: PgSchema, pid: int) -> None:
    with pg.connect() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def slow_batches(pg: PgSchema, seconds: float) -> None:
    """Every DELETE that removed rows then sleeps `seconds` before it can commit.

    An AFTER statement trigger that sleeps only when its transition table holds rows: while it
    sleeps, the batch's rows are deleted but not committed, so a kill then proves the
    rollback of real deletions (a BEFORE trigger would be killed before any row went).
    """
    with pg.connect() as conn:
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF EXISTS (SELECT 1 FROM gone) THEN PERFORM pg_sleep({}); END IF; "
                "RETURN NULL; END $$"
            ).format(sql.Literal(seconds))
        )
        conn.execute(
            "CREATE TRIGGER slow_delete AFTER DELETE ON whatsapp_keys "
            "REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION slow_delete()"
        )


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


def shown(message: str) -> str:
    """A Telegram message as the chat displays it (and proof that it parses)."""
    return telegram_structure(message)[1]


def assert_failure_reported(bot: FakeBot, sentry: SentryEndpoint, error_type: str) -> None:
    """One Telegram alert, one Sentry exception (level error, failure tags), an error check-in,
    and nothing else: no summary, no run message."""
    (alert,) = bot.texts
    assert "WhatsApp keys cleanup failed" in shown(alert)
    assert error_type in shown(alert)
    (event,) = sentry.events()
    assert event["level"] == "error"
    assert FAILED_TAGS.items() <= event["tags"].items()
    assert [v["type"] for v in event["exception"]["values"]] == [error_type]
    # A run by hand: the Crons monitor belongs to the schedule (tests/test_operator_run.py).
    assert sentry.checkins() == []


# --- the connection is killed mid-run ------------------------------------------------------------


def test_connection_killed_between_batches_alerts_and_the_next_run_finishes(
    notified: PgSchema, bot: FakeBot, sentry: SentryEndpoint, monkeypatch: pytest.MonkeyPatch
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
        invoke(LIVE)

    assert_failure_reported(bot, sentry, "CleanupError")
    assert len(committed) == 2
    assert 0 < committed[-1] < ELIGIBLE
    # The two committed batches stay deleted, and nothing else went.
    assert notified.count() == len(ROWS) - committed[-1]
    assert notified.key_set() >= SURVIVORS

    monkeypatch.setattr(app, "_log_progress", log_progress)
    result, _ = invoke(LIVE)
    assert (result["status"], result["deleted"]) == ("completed", ELIGIBLE - committed[-1])
    assert notified.key_set() == SURVIVORS


def test_connection_killed_inside_a_batch_rolls_it_back_and_the_next_run_finishes(
    notified: PgSchema, bot: FakeBot, sentry: SentryEndpoint, monkeypatch: pytest.MonkeyPatch
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
        invoke(LIVE)
    for killer in killers:
        killer.join(timeout=10)

    assert killed.is_set(), "the second batch was never caught inside its DELETE"
    assert_failure_reported(bot, sentry, "CleanupError")
    # Only the first batch committed; the second, killed with its rows deleted, left none gone.
    assert len(committed) == 1
    assert committed[0] > 0
    assert notified.count() == len(ROWS) - committed[0]
    assert notified.key_set() >= SURVIVORS

    drop_slow_batches(notified)
    monkeypatch.setattr(app, "_log_progress", log_progress)
    result, _ = invoke(LIVE)
    assert (result["status"], result["deleted"]) == ("completed", ELIGIBLE - committed[0])
    assert notified.key_set() == SURVIVORS


# --- PostgreSQL unavailable at the start ------------------------------------------------------

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
    bot: FakeBot,
    sentry: SentryEndpoint,
    silent: SilentServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    password = f"pwcanary{uuid.uuid4().hex[:12]}"
    for name in SETTING_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", unavailable_url(cause, password, pg_server_dsn, silent))
    monkeypatch.setenv("CLEANUP_CONNECT_TIMEOUT_S", str(CONNECT_TIMEOUT_S))
    notify_env(monkeypatch, telegram_url=bot.api_url, dsn=sentry_dsn(sentry.server.port))

    started = time.monotonic()
    with (
        capture_logs() as lines,
        pytest.raises(CleanupError, match=r"^could not connect to the database: ") as info,
    ):
        # A whole minute of Lambda time: only the connect timeout may end the wait.
        call_handler(LIVE, timeout_s=60)
    elapsed = time.monotonic() - started

    # Bounded by the connect timeout (plus the local notifications), not by the Lambda's time.
    assert elapsed < CONNECT_TIMEOUT_S + 3
    if cause == "no-answer":
        assert len(silent.accepted) == 1  # one attempt, no retry
    assert_failure_reported(bot, sentry, "CleanupError")
    # Nothing after the failed connect: no report, no run message, no summary.
    logged = lines()
    assert len(find_log(logged, "run failed")) == 1
    assert find_log(logged, "run finished") == []
    assert not [e for e in sentry.events() if e.get("message") == SENTRY_RUN_MESSAGE]
    for where, text in {
        "exception": str(info.value),
        "telegram": json.dumps(bot.requests),
        "sentry": sentry.payloads(),
        "logs": "\n".join(logged),
    }.items():
        assert password not in text, where


# --- Telegram and Sentry faults ---------------------------------------------------------------

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
    seeded: PgSchema,
    bot: FakeBot,
    sentry: SentryEndpoint,
    silent: SilentServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    telegram_url, dsn = bot.api_url, sentry_dsn(sentry.server.port)
    if fault == "telegram-down":
        telegram_url = f"http://127.0.0.1:{closed_port()}"
    elif fault == "telegram-slow":
        # Each request hangs for 10 s, longer than the whole Lambda budget; the default
        # TELEGRAM_TIMEOUT_S (10 s) stays, so only the deadline can cut it short.
        bot.stall = threading.Event()
    elif fault == "telegram-429":
        # Waiting out each retry_after would take three times the whole Lambda budget.
        bot.script = [too_many_requests(retry_after=2)]
    elif fault == "sentry-down":
        dsn = sentry_dsn(closed_port())
    else:
        dsn = sentry_dsn(silent.port)
    notify_env(monkeypatch, telegram_url=telegram_url, dsn=dsn)
    monkeypatch.setenv("CLEANUP_DEADLINE_MARGIN_MS", "500")

    with capture_logs() as lines:
        result, elapsed = invoke(LIVE, timeout_s=FAULT_TIMEOUT_S)

    assert elapsed < FAULT_TIMEOUT_S
    assert (result["status"], result["deleted"]) == ("completed", ELIGIBLE)
    assert seeded.key_set() == SURVIVORS
    if fault in {"sentry-down", "sentry-hung"}:
        (summary,) = bot.texts
        assert "LIVE · completed" in shown(summary)
        return
    (failed,) = find_log(lines(), "notification failed")
    assert (failed["channel"], failed["kind"]) == ("telegram", "summary")
    if fault != "telegram-down":
        assert bot.requests, "the fault was never reached"
    # Sentry still got the run.
    assert [e for e in sentry.events() if e.get("message") == SENTRY_RUN_MESSAGE]


def test_hung_sentry_does_not_cost_the_telegram_summary(
    seeded: PgSchema, bot: FakeBot, silent: SilentServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify_env(monkeypatch, telegram_url=bot.api_url, dsn=sentry_dsn(silent.port))
    # The engine is done in well under a second; the notifications own the rest, until
    # NOTIFY_RESERVE_S before the end.
    timeout_s = app.NOTIFY_RESERVE_S + 2.0
    monkeypatch.setenv("CLEANUP_DEADLINE_MARGIN_MS", str(int(app.NOTIFY_RESERVE_S * 1000)))

    result, elapsed = invoke(LIVE, timeout_s=timeout_s)

    assert (result["status"], elapsed < timeout_s) == ("completed", True)
    assert len(bot.texts) == 1, "the Telegram summary was not sent"
    assert "LIVE · completed" in shown(bot.texts[0])


# --- the Lambda deadline is close ---------------------------------------------------------------


def test_close_deadline_returns_partial_before_it_and_still_notifies(
    notified: PgSchema, bot: FakeBot, sentry: SentryEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 24 batches of >= 0.25 s each cannot fit in the ~2 s the engine gets here.
    slow_batches(notified, 0.25)
    timeout_s = 5.0
    # The margin covers the notifications' reserve (a smaller one: see the test below).
    margin_ms = int(app.NOTIFY_RESERVE_S * 1000) + 1000
    monkeypatch.setenv("CLEANUP_DEADLINE_MARGIN_MS", str(margin_ms))

    result, elapsed = invoke(LIVE, timeout_s=timeout_s)

    assert result["status"] == "partial"
    assert elapsed < timeout_s
    assert result["eligible"] == ELIGIBLE
    assert 0 < result["deleted"] < ELIGIBLE
    assert notified.count() == len(ROWS) - result["deleted"]
    assert notified.key_set() >= SURVIVORS
    (summary,) = bot.texts
    assert "LIVE · partial" in shown(summary)
    (message,) = [e for e in sentry.events() if e.get("message") == SENTRY_RUN_MESSAGE]
    assert message["level"] == "warning"
    assert (message["tags"]["status"], message["tags"]["mode"]) == ("partial", "live")
    assert sentry.checkins() == []  # a run by hand does not check in


def test_close_deadline_with_a_margin_below_the_notify_reserve_still_notifies(
    notified: PgSchema, bot: FakeBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_batches(notified, 0.25)
    timeout_s = 4.0
    monkeypatch.setenv("CLEANUP_DEADLINE_MARGIN_MS", "500")  # accepted by Settings (ge=0)

    result, elapsed = invoke(LIVE, timeout_s=timeout_s)

    assert result["status"] == "partial"
    assert elapsed < timeout_s
    assert len(bot.texts) == 1, "the Telegram summary was not sent"
    assert "LIVE · partial" in shown(bot.texts[0])


# --- secrets, through the whole flow ----------------------------------------------------------


def url_with_password(conninfo: str, password: str) -> str:
    """`conninfo` as a postgresql:// URL carrying `password` (trust auth ignores it)."""
    parts = {k: str(v) for k, v in conninfo_to_dict(conninfo).items() if k != "password"}
    user = quote(parts.pop("user", "postgres"), safe="")
    dbname = quote(parts.pop("dbname", "postgres"), safe="")
    host = parts.pop("host", "")
    if host.startswith("/"):  # a Unix socket directory goes into the query
        netloc = ""
        parts["host"] = host
    else:
        port = parts.pop("port", None)
        netloc = f"{host}:{port}" if port else host
    # libpq decodes %XX in a URL, not `+`.
    query = urlencode(parts, quote_via=quote)
    return f"postgresql://{user}:{quote(password, safe='')}@{netloc}/{dbname}?{query}"


@pytest.fixture
def debug_logs() -> Iterator[None]:
    """The handler's own logger at DEBUG too (batch progress): every line it can write."""
    level = observability.logger.log_level
    observability.logger.setLevel(logging.DEBUG)
    yield
    observability.logger.setLevel(level)


@pytest.mark.usefixtures("debug_logs")
@pytest.mark.parametrize("form", ["url", "conninfo"])
def test_no_canary_leaves_through_any_channel(
    form: str,
    pg: PgSchema,
    bot_server: HTTPServer,
    sentry: SentryEndpoint,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run killed mid-way, then a verbose live run, with a canary for every secret: the
    database password, the bot token, the Sentry DSN key, and the key values themselves."""
    tag = uuid.uuid4().hex[:16]
    db_password = f"dbpwcanary{tag}"
    token = f"{int(tag[:8], 16)}:TGCANARY{tag}"
    dsn_key = f"dsnkeycanary{tag}"
    key_value = f"keyvaluecanary{tag}"
    canaries = (db_password, token, dsn_key, key_value)

    pg.create_reference_table()
    pg.add_auth(CREDS)
    pg.insert_keys(key_rows(value=key_value))
    bot = FakeBot(bot_server).install(token)
    database_url = (
        url_with_password(pg.dsn, db_password)
        if form == "url"
        else make_conninfo(pg.dsn, password=db_password)
    )
    set_lambda_env(monkeypatch, pg, DATABASE_URL=database_url, CLEANUP_BATCH_SIZE="10")
    notify_env(
        monkeypatch,
        telegram_url=bot.api_url,
        dsn=sentry_dsn(sentry.server.port, key=dsn_key),
        token=token,
    )
    caplog.set_level(logging.DEBUG)
    log_progress = app._log_progress

    def kill_after_first_batch(progress: Progress) -> None:
        log_progress(progress)
        terminate(pg, pg.cleanup_backend())

    with capture_logs() as lines:
        monkeypatch.setattr(app, "_log_progress", kill_after_first_batch)
        with pytest.raises(CleanupError) as failure:
            invoke(LIVE)
        monkeypatch.setattr(app, "_log_progress", log_progress)
        result, _ = invoke({"dry_run": False, "verbose": True})
    output = capfd.readouterr()

    # The flow really ran, every channel carried something.
    assert (result["status"], result["deleted"]) == ("completed", result["eligible"])
    assert result["keys"], "verbose listing expected"
    assert len(bot.requests) == 2  # the failure alert, then the summary
    assert "WhatsApp keys cleanup failed" in bot.texts[0]
    events = sentry.events()
    assert [e.get("message") for e in events if not e.get("exception")] == [SENTRY_RUN_MESSAGE]
    assert len([e for e in events if e.get("exception")]) == 1
    logged = lines()
    assert find_log(logged, "run failed")
    assert find_log(logged, "batch progress")
    assert any(line.startswith("urllib3") for line in logged)  # libraries' DEBUG lines too
    with pg.connect() as conn:  # the key values do hold the canary
        assert conn.execute(
            "SELECT count(*) FROM whatsapp_keys WHERE value->>'k' LIKE %s", (f"{key_value}%",)
        ).fetchone() == (len(ROWS) - ELIGIBLE,)

    channels = {
        "exception": "".join(traceback.format_exception(failure.value)),
        "logs": "\n".join(logged),
        "caplog": caplog.text,
        "stdout": output.out,
        "stderr": output.err,
        "report": json.dumps(result),
        # Bodies only: the Bot API takes the token in the request path by design.
        "telegram": json.dumps(bot.requests),
        # Item payloads only: the envelope header names the DSN, as the protocol wants.
        "sentry": sentry.payloads(),
    }
    for where, text in channels.items():
        for canary in canaries:
            assert canary not in text, f"{canary} in {where}"
