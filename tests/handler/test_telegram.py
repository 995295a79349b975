"""Telegram: the HTML summary and alerts as they arrive at a Bot API on 127.0.0.1, and delivery
with retries, timeouts and deadlines.
"""

from __future__ import annotations

import html
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_httpserver import HTTPServer

from handler import notify
from handler.notify import telegram
from handler.notify.html import MAX_MESSAGE, render_guard_abort, render_summary, telegram_len
from handler.notify.html import main as preview
from handler.report import KeyEntry, TrendPoint, TypeStats, render_text
from handler.settings import Settings
from tests.support.db import PgSchema
from tests.support.handler import (
    captured_logs,
    invoke,
)
from tests.support.notify import (
    CHAT_ID,
    NOW,
    OK,
    SERVER_ERROR,
    TOKEN,
    FakeBot,
    capture_logs,
    find_log,
    key_listing,
    make_report,
    make_settings,
    telegram_structure,
    too_many_requests,
)


@pytest.fixture
def bot(httpserver: HTTPServer) -> FakeBot:
    return FakeBot(httpserver).install()


def tg_settings(bot: FakeBot, **values: object) -> Settings:
    return make_settings(
        telegram_bot_token=TOKEN,
        telegram_chat_id=CHAT_ID,
        telegram_api_url=bot.api_url,
        **values,
    )


def send(bot: FakeBot, report: object = None, **values: object) -> None:
    notify.after_run(
        report or make_report(),  # type: ignore[arg-type]
        tg_settings(bot, **values),
        deadline=time.monotonic() + 20,
    )


# --- content -----------------------------------------------------------------------------------


def test_summary_is_sent_as_html_to_the_chat_with_every_figure(bot: FakeBot) -> None:
    send(bot)

    assert len(bot.requests) == 1
    request = bot.requests[0]
    assert request["chat_id"] == CHAT_ID
    assert request["parse_mode"] == "HTML"
    assert bot.paths == [f"/bot{TOKEN}/sendMessage"]
    _, shown = telegram_structure(request["text"])
    for expected in (
        "LIVE · completed",  # mode and status
        "Deleted: 41,230 of 41,230 eligible · protected 1,312",
        "Duration: 4.2 s · 9 batches (longest 58 ms)",
        "released 0 B (measured) · reclaimable 12.3 MiB (estimated)",
        "Keys: 120,000 → 78,770",
        "Size: 39.0 MiB → 39.0 MiB",
        "  <1d  2,950",  # age distribution, escaped in transit, shown as typed
        "14-30d 48,750",
        "pre-key                   71,500    33,900  30d",  # one line per key type
        "lid-mapping                1,180         0  protected",
        "🕒 2026-11-29 03:00:12 UTC",
    ):
        assert expected in shown, expected


def test_before_and_after_not_measured_are_said_so(bot: FakeBot) -> None:
    send(bot, make_report(status="partial", before=None, after=None, reason="deadline reached"))

    _, shown = telegram_structure(bot.texts[0])
    assert "Keys: not measured → not measured" in shown
    assert "Size: not measured → not measured" in shown
    assert "Reason: deadline reached" in shown
    assert "LIVE · partial" in shown


def test_a_table_that_grew_shows_growth_as_the_text_report_does_not_a_negative_release() -> None:
    report = make_report(released_bytes=-8_192)
    _, shown = telegram_structure(render_summary(report))
    (space,) = [line for line in shown.splitlines() if line.startswith("Space:")]
    assert "released -" not in space, space
    # One wording with render_text (tests/engine/test_measurement.py).
    assert space.startswith(
        "Space: released nothing: the table grew 8.0 KiB during the run (the application's "
        "writes) · reclaimable 12.3 MiB (estimated)"
    ), space
    assert space.removeprefix("Space: ").split(" · ")[0] in render_text(report)


def test_summary_claims_no_retention_or_cutoff_when_the_age_rule_is_off() -> None:
    # CLEANUP_TIMESTAMP_COLUMN=none: no key is deleted by age (the text report says
    # "retention: none, the age rule is off"; the per-type table says "off").
    report = make_report(timestamp_column=None)
    _, shown = telegram_structure(render_summary(report))
    target = shown.splitlines()[1]
    assert target == "Table whatsapp_keys · the age rule is off (no timestamp column)", target


def test_key_type_and_key_id_containing_markup_arrive_escaped(bot: FakeBot) -> None:
    hostile = "<b>&"
    report = make_report(
        by_type={hostile: TypeStats(keys=5, eligible=5, deleted=5, retention_days=30)},
        keys=[KeyEntry(key={"id": f"x{hostile}y"}, key_type=hostile, age_days=40.0)],
    )
    send(bot, report)

    text = bot.texts[0]
    assert hostile not in text
    assert "&lt;b&gt;&amp;" in text
    _, shown = telegram_structure(text)  # parses: every tag is one we wrote
    assert f"x{hostile}y  [{hostile}]  40.0d" in shown
    assert f"{hostile}         5         5  30d" in shown


def test_error_message_containing_markup_arrives_escaped(bot: FakeBot) -> None:
    notify.on_failure(
        ValueError("relation <b>&whatsapp_keys does not exist"),
        tg_settings(bot),
        deadline=time.monotonic() + 20,
        mode="live",
    )

    text = bot.texts[0]
    assert "<b>&whatsapp" not in text
    assert "&lt;b&gt;&amp;whatsapp_keys" in text
    _, shown = telegram_structure(text)
    assert "WhatsApp keys cleanup failed" in shown
    assert "ValueError: relation <b>&whatsapp_keys does not exist" in shown


def test_ten_thousand_key_listing_is_trimmed_to_4096(bot: FakeBot) -> None:
    report = make_report(keys=key_listing(10_000), keys_omitted=31_230)
    send(bot, report)

    text = bot.texts[0]
    assert len(text) <= MAX_MESSAGE
    assert telegram_len(text) <= MAX_MESSAGE
    _, shown = telegram_structure(text)
    listed = shown.count("@s.whatsapp.net.0")
    assert 10 < listed < 10_000
    assert f"Deleted keys ({listed:,} of 41,230)" in shown
    assert f"… and {41_230 - listed:,} more" in shown
    assert shown.endswith("🕒 2026-11-29 03:00:12 UTC · event a1b2c3d4-0000-4000-8000-000000000001")
    assert "lid-mapping" in shown  # and so does the per-type table


def test_short_listing_is_sent_whole(bot: FakeBot) -> None:
    send(bot, make_report(keys=key_listing(3)))

    _, shown = telegram_structure(bot.texts[0])
    assert "Deleted keys (3 of 3)" in shown
    assert "more" not in shown


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    type_names=st.lists(st.text(min_size=1, max_size=60), max_size=80, unique=True),
    key_ids=st.lists(st.text(max_size=120), max_size=400),
    omitted=st.integers(min_value=0, max_value=10**9),
    reason=st.none() | st.text(max_size=2000),
    dry_run=st.booleans(),
)
def test_any_report_renders_valid_html_within_4096(
    type_names: list[str], key_ids: list[str], omitted: int, reason: str | None, dry_run: bool
) -> None:
    report = make_report(
        dry_run=dry_run,
        reason=reason,
        by_type={name: TypeStats(keys=1, retention_days=30) for name in type_names},
        keys=[KeyEntry(key={"id": k}, key_type=k[:20], age_days=None) for k in key_ids],
        keys_omitted=omitted,
    )
    text = render_summary(report, now=NOW)
    assert telegram_len(text) <= MAX_MESSAGE
    telegram_structure(text)


def test_guard_abort_alert_has_the_numbers_and_how_to_override(bot: FakeBot) -> None:
    report = make_report(
        status="aborted",
        deleted=0,
        eligible=90_000,
        after=None,
        reason="would delete 75.0% of the table, above CLEANUP_MAX_DELETE_FRACTION (50%)",
    )
    send(bot, report)

    text = bot.texts[0]
    _, shown = telegram_structure(text)
    assert "aborted by the safety guard" in shown
    assert "Eligible: 90,000 of 120,000 keys (75.0%)" in shown
    assert "Limit: 50% of the table (CLEANUP_MAX_DELETE_FRACTION=0.5)" in shown
    assert "Nothing was deleted." in shown
    assert '{"dry_run": false, "force": true}' in html.unescape(text)
    assert "--force" in shown


def test_guard_alert_shows_the_limit_and_the_share_without_rounding_them_together() -> None:
    # 12.5% is no "12%", and 12.504% is above it, not "12.5%" at it.
    report = make_report(status="aborted", deleted=0, eligible=15_005, after=None)
    text = render_guard_abort(
        report, make_settings(max_delete_fraction=0.125, guard_min_keys=1_000), now=NOW
    )
    _, shown = telegram_structure(text)
    assert "Eligible: 15,005 of 120,000 keys (12.504%)" in shown
    assert "Limit: 12.5% of the table (CLEANUP_MAX_DELETE_FRACTION=0.125)" in shown


def test_dry_run_sends_nothing_by_default(bot: FakeBot) -> None:
    send(bot, make_report(dry_run=True, deleted=0))

    assert bot.requests == []


def test_dry_run_is_sent_when_enabled(bot: FakeBot) -> None:
    send(bot, make_report(dry_run=True, deleted=0), telegram_notify_dry_run=True)

    _, shown = telegram_structure(bot.texts[0])
    assert "DRY RUN · completed" in shown
    assert "Would delete: 41,230 of 120,000 keys · protected 1,312" in shown


def test_duplicate_event_sends_nothing(bot: FakeBot) -> None:
    send(bot, make_report(status="skipped", duplicate=True, before=None, after=None, deleted=0))

    assert bot.requests == []


def test_run_skipped_for_the_lock_says_why(bot: FakeBot) -> None:
    reason = "another cleanup run holds the lock on this table; nothing was touched"
    send(bot, make_report(status="skipped", before=None, after=None, deleted=0, reason=reason))

    _, shown = telegram_structure(bot.texts[0])
    assert "LIVE · skipped" in shown
    assert f"Reason: {reason}" in shown
    assert "Deleted" not in shown


def test_nothing_is_sent_without_a_chat_id(bot: FakeBot) -> None:
    notify.after_run(
        make_report(),
        make_settings(telegram_bot_token=TOKEN, telegram_api_url=bot.api_url),
        deadline=None,
    )

    assert bot.requests == []


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same retry logic, shorter pauses: these tests count attempts, not seconds."""
    monkeypatch.setattr(telegram, "BACKOFF_S", (0.05, 0.05, 0.05))


def test_429_waits_retry_after_then_succeeds(bot: FakeBot) -> None:
    bot.script = [too_many_requests(retry_after=1), OK]
    with capture_logs() as lines:
        send(bot)

    assert len(bot.requests) == 2
    assert bot.requests[0] == bot.requests[1]
    # Honouring retry_after is the behaviour under test: the retry came no sooner.
    assert bot.arrivals[1] - bot.arrivals[0] >= 0.95
    (sent,) = find_log(lines(), "telegram message sent")
    assert sent["attempts"] == 2
    assert find_log(lines(), "notification failed") == []


@pytest.mark.usefixtures("fast_backoff")
def test_repeated_500_gives_up_after_bounded_attempts_without_raising(bot: FakeBot) -> None:
    bot.script = [SERVER_ERROR]
    with capture_logs() as lines:
        send(bot)  # returns: a failed notification never fails the run

    assert len(bot.requests) == telegram.MAX_ATTEMPTS
    (failed,) = find_log(lines(), "notification failed")
    assert failed["channel"] == "telegram"
    assert failed["kind"] == "summary"
    assert failed["error"] == (
        f"gave up after {telegram.MAX_ATTEMPTS} attempt(s): HTTP 500: Internal Server Error"
    )


def test_retries_stop_at_the_deadline(bot: FakeBot) -> None:
    bot.script = [SERVER_ERROR]
    deadline = time.monotonic() + 1.2  # room for the 0.5 s backoff, not for the next 1 s
    with capture_logs() as lines:
        notify.after_run(make_report(), tg_settings(bot), deadline=deadline)

    assert len(bot.requests) == 2
    (failed,) = find_log(lines(), "notification failed")
    assert failed["error"].endswith("(no time left to retry)")


def test_client_error_is_not_retried(bot: FakeBot) -> None:
    bot.script = [(400, {"ok": False, "error_code": 400, "description": "Bad Request: x"})]
    with capture_logs() as lines:
        send(bot)

    assert len(bot.requests) == 1
    (failed,) = find_log(lines(), "notification failed")
    assert failed["error"] == "HTTP 400: Bad Request: x"


@pytest.fixture
def stalled_bot(bot: FakeBot) -> Iterator[FakeBot]:
    bot.stall = threading.Event()
    yield bot
    bot.stall.set()  # release the server thread


def test_slow_telegram_times_out_within_the_deadline(stalled_bot: FakeBot) -> None:
    deadline = time.monotonic() + 1.5
    with capture_logs() as lines:
        notify.after_run(
            make_report(), tg_settings(stalled_bot, telegram_timeout_s=0.3), deadline=deadline
        )

    assert time.monotonic() < deadline + 0.5  # the notifier kept to the run's time budget
    assert len(stalled_bot.requests) >= 1
    (failed,) = find_log(lines(), "notification failed")
    assert "timed out after 0.3 s" in failed["error"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.usefixtures("fast_backoff")
def test_connection_error_is_retried_and_reported_without_the_token() -> None:
    with pytest.raises(telegram.TelegramError) as caught:
        telegram.send_message(
            api_url=f"http://127.0.0.1:{_closed_port()}",
            token=TOKEN,
            chat_id=CHAT_ID,
            text="x",
            timeout_s=1,
            deadline=time.monotonic() + 5,
        )

    message = str(caught.value)
    assert message == (
        f"gave up after {telegram.MAX_ATTEMPTS} attempt(s): connection error (ConnectionError)"
    )
    assert TOKEN not in message
    # The requests exception (whose text holds the URL) is not chained either.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__


def test_no_request_is_started_without_time_left(bot: FakeBot) -> None:
    with pytest.raises(telegram.TelegramError, match=r"gave up after 0 attempt\(s\): no time"):
        telegram.send_message(
            api_url=bot.api_url,
            token=TOKEN,
            chat_id=CHAT_ID,
            text="x",
            timeout_s=1,
            deadline=time.monotonic() + 0.05,
        )
    assert bot.requests == []


def test_preview_prints_the_summary_as_displayed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "report.json"
    path.write_text(make_report().model_dump_json())

    assert preview([str(path)]) == 0
    shown = capsys.readouterr().out
    # 41,230 deleted, above the default CLEANUP_WARNING_THRESHOLD (1,000)
    assert shown.startswith("⚠️ WhatsApp keys cleanup · LIVE · completed\n")
    assert "   <1d  2,950" in shown
    assert "<b>" not in shown

    assert preview([str(path), "--html"]) == 0
    expected = render_summary(make_report(), warning_threshold=1000)
    assert capsys.readouterr().out == expected + "\n"


VALUE_CANARY = "inputcanary_5c2e"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        # `keys-cleanup --demo --execute` without --json: the text report piped in.
        ("WhatsApp keys cleanup · LIVE · completed\nDeleted: 15,728\n", "not JSON"),
        (json.dumps({"status": VALUE_CANARY, "deleted": VALUE_CANARY}), "not a report"),
        ("[1, 2]", "not a report"),
        ("", "not JSON"),
    ],
    ids=["text-report", "wrong-fields", "json-array", "empty"],
)
def test_preview_refuses_input_that_is_no_report_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, problem: str
) -> None:
    """A pydantic traceback, with the input's values, was printed instead."""
    path = tmp_path / "report.txt"
    path.write_text(content)
    assert preview([str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert problem in captured.err
    assert VALUE_CANARY not in captured.err


def test_preview_refuses_a_missing_file_or_bad_settings_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert preview([str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    path = tmp_path / "report.json"
    path.write_text(make_report().model_dump_json())
    monkeypatch.setenv("CLEANUP_WARNING_THRESHOLD", "many")
    assert preview([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "CLEANUP_WARNING_THRESHOLD" in err


# --- the warning icon, the trend, dry runs, the listing ----------------------------------------


@pytest.mark.parametrize(
    ("deleted", "icon"), [(999, "✅"), (1_000, "✅"), (1_001, "⚠️"), (339_976, "⚠️")]
)
def test_summary_warns_when_more_keys_than_the_warning_threshold_were_deleted(
    bot: FakeBot, deleted: int, icon: str
) -> None:
    send(bot, make_report(deleted=deleted, eligible=deleted), warning_threshold=1_000)

    _, shown = telegram_structure(bot.texts[0])
    assert shown.startswith(f"{icon} WhatsApp keys cleanup · LIVE · completed")
    above = "above CLEANUP_WARNING_THRESHOLD (1,000)"
    assert (above in shown) == (icon == "⚠️")


def test_dry_run_never_warns_for_what_it_would_delete(bot: FakeBot) -> None:
    report = make_report(dry_run=True, deleted=0, after=None)
    send(bot, report, telegram_notify_dry_run=True, warning_threshold=10)

    _, shown = telegram_structure(bot.texts[0])
    assert shown.startswith("✅ WhatsApp keys cleanup · 🧪 DRY RUN · completed")


@pytest.mark.parametrize(
    "finding",
    [
        {
            "guard_triggered": True,
            "eligible": 90_000,
            "reason": "safety guard: a live run would stop here: 90,000 of 120,000 keys",
        },
        {
            "live_run_would_fail": True,
            "notes": ["a live run would fail: this role lacks DELETE on public.whatsapp_keys"],
        },
    ],
    ids=["guard-would-stop", "live-run-would-fail"],
)
def test_dry_run_that_found_a_live_run_would_not_go_through_is_not_a_green_check(
    finding: dict[str, object],
) -> None:
    # Sentry sends these as warnings and the CLI exits 3 or 4: ✅ would say all is well.
    report = make_report(dry_run=True, deleted=0, after=None, **finding)
    _, shown = telegram_structure(render_summary(report, warning_threshold=1_000))
    assert shown.startswith("⚠️ WhatsApp keys cleanup · 🧪 DRY RUN · completed"), shown


def trend(*points: tuple[int, int]) -> list[TrendPoint]:
    return [
        TrendPoint(finished_at=NOW - timedelta(days=len(points) - i), keys=k, total_bytes=b)
        for i, (k, b) in enumerate(points)
    ]


def test_summary_shows_keys_and_size_over_the_last_runs(bot: FakeBot) -> None:
    mib = 1024 * 1024
    points = trend(
        *[(120_000 - 1_000 * i, (412 - 2 * i) * mib) for i in range(6)], (78_770, 398 * mib)
    )
    send(bot, make_report(trend=points))

    _, shown = telegram_structure(bot.texts[0])
    assert "Trend: keys 7 runs: 120,000 → 78,770 · size 7 runs: 412.0 → 398.0 MiB" in shown


def test_summary_without_history_says_so_in_one_line(bot: FakeBot) -> None:
    send(bot, make_report(trend=[]))

    _, shown = telegram_structure(bot.texts[0])
    (line,) = [line for line in shown.splitlines() if line.startswith("Trend:")]
    assert line == "Trend: no run history"


def test_dry_run_says_what_a_live_run_would_do_without_zeros(bot: FakeBot) -> None:
    report = make_report(
        dry_run=True,
        deleted=0,
        after=None,
        batches=0,
        max_batch_ms=0,
        by_type={
            name: stats.model_copy(update={"deleted": 0})
            for name, stats in make_report().by_type.items()
        },
    )
    send(bot, report, telegram_notify_dry_run=True)

    _, shown = telegram_structure(bot.texts[0])
    assert "Space: a live run would make ≈12.3 MiB reusable (estimated)" in shown
    assert "Keys: 120,000 · Size: 39.0 MiB" in shown
    assert "type                        keys  would delete  retention" in shown
    assert "pre-key                   71,500        33,900  30d" in shown
    assert "Duration: 4.2 s\n" in shown
    for nothing_happened in ("batches", "longest", "deleted 0", "released", "not measured"):
        assert nothing_happened not in shown, nothing_happened


def test_live_run_that_deleted_nothing_shows_no_batch_line(bot: FakeBot) -> None:
    send(bot, make_report(deleted=0, eligible=0, batches=0, max_batch_ms=0))

    _, shown = telegram_structure(bot.texts[0])
    # The lines are there, only without a batch count: an empty or cut message fails here.
    assert "LIVE · completed" in shown
    assert "Deleted: 0 of 0 eligible · protected 1,312" in shown
    (line,) = [line for line in shown.splitlines() if line.startswith("Duration:")]
    assert line == "Duration: 4.2 s"
    assert "batches" not in shown


def test_listing_does_not_repeat_the_key_type_that_is_part_of_the_key(bot: FakeBot) -> None:
    entry = KeyEntry(
        key={"company_id": "c1", "key_type": "session", "key_id": "session:9"},
        key_type="session",
        age_days=47.3,
    )
    send(bot, make_report(keys=[entry]))

    _, shown = telegram_structure(bot.texts[0])
    assert "company_id=c1, key_type=session, key_id=session:9  47.3d" in shown
    assert "[session]" not in shown


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


def test_a_telegram_answer_that_trickles_in_does_not_outlast_the_deadline() -> None:
    """`send_message` bounds each request with `timeout=min(timeout_s, remaining)`: in
    requests that is the connect and the *per-read* timeout, not a total. A server (or proxy)
    that sends its answer a few bytes at a time, each within the timeout, holds the
    notification, and the Lambda, past the deadline."""
    body = b'{"ok":true,"result":{"message_id":1}}'
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    port = sock.getsockname()[1]

    def serve() -> None:
        conn, _ = sock.accept()
        conn.recv(65536)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        for byte in body[:12]:  # a byte every 0.3 s: each read well within the timeout
            conn.sendall(bytes([byte]))
            time.sleep(0.3)
        conn.sendall(body[12:])
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    started = time.monotonic()
    deadline = started + 1.5
    try:
        telegram.send_message(
            api_url=f"http://127.0.0.1:{port}",
            token="123:abc",
            chat_id="1",
            text="hi",
            timeout_s=10.0,
            deadline=deadline,
        )
    except telegram.TelegramError:
        pass
    finally:
        sock.close()
    overrun = time.monotonic() - deadline
    assert overrun < 0.5, f"the notification ended {overrun:.1f} s after its deadline"
