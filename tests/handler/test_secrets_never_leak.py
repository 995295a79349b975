"""No key value, token, password or DSN secret in any log line, report, Telegram message, Sentry
event or exception.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
import uuid
from collections.abc import Iterator
from urllib.parse import quote, urlencode

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_httpserver import HTTPServer

from handler import app, notify, observability
from handler.cleanup import CleanupError
from handler.deleteloop import Progress
from handler.notify.sentry import MESSAGE as SENTRY_RUN_MESSAGE
from tests.support.db import PgSchema
from tests.support.faults import (
    CREDS,
    ELIGIBLE,
    LIVE_EVENT,
    ROWS,
    invoke_handler,
    key_rows,
    notify_env,
    sentry_dsn,
    terminate,
)
from tests.support.handler import set_lambda_env
from tests.support.notify import (
    CHAT_ID,
    DB_PASSWORD,
    DSN_KEY,
    KEY_CANARY,
    SERVER_ERROR,
    TOKEN,
    FakeBot,
    SentryEndpoint,
    _closed_port,
    capture_logs,
    find_log,
    key_listing,
    make_report,
    make_settings,
)

# No Sentry client enters or leaves a test here (another module's test may have left one).
pytestmark = pytest.mark.usefixtures("isolated_sentry", "quiet_fake_servers")


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
    fault_sentry: SentryEndpoint,
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
    fault_bot = FakeBot(bot_server).install(token)
    database_url = (
        url_with_password(pg.dsn, db_password)
        if form == "url"
        else make_conninfo(pg.dsn, password=db_password)
    )
    set_lambda_env(monkeypatch, pg, DATABASE_URL=database_url, CLEANUP_BATCH_SIZE="10")
    notify_env(
        monkeypatch,
        telegram_url=fault_bot.api_url,
        dsn=sentry_dsn(fault_sentry.server.port, key=dsn_key),
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
            invoke_handler(LIVE_EVENT)
        monkeypatch.setattr(app, "_log_progress", log_progress)
        result, _ = invoke_handler({"dry_run": False, "verbose": True})
    output = capfd.readouterr()

    # The flow really ran, every channel carried something.
    assert (result["status"], result["deleted"]) == ("completed", result["eligible"])
    assert result["keys"], "verbose listing expected"
    assert len(fault_bot.requests) == 2  # the failure alert, then the summary
    assert "WhatsApp keys cleanup failed" in fault_bot.texts[0]
    events = fault_sentry.events()
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
        "telegram": json.dumps(fault_bot.requests),
        # Item payloads only: the envelope header names the DSN, as the protocol wants.
        "fault_sentry": fault_sentry.payloads(),
    }
    for where, text in channels.items():
        for canary in canaries:
            assert canary not in text, f"{canary} in {where}"


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
        notify.on_failure(error, settings, deadline=time.monotonic() + 10, mode="live")  # gives up
        # A Telegram that cannot be reached at all: requests' own error quotes the URL.
        unreachable = settings.model_copy(
            update={"telegram_api_url": f"http://127.0.0.1:{_closed_port()}"}
        )
        notify.on_failure(error, unreachable, deadline=time.monotonic() + 10, mode="live")
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
