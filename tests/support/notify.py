"""Shared pieces for the notification tests: canaries, a realistic Report, a fake Bot API and a
Sentry endpoint on pytest-httpserver, log capture, and teardown of the global Sentry client.

Plain helpers rather than fixtures, so each test module declares the fixtures it uses.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import sentry_sdk
from pytest_httpserver import HTTPServer
from sentry_sdk.envelope import Envelope
from werkzeug import Request, Response

import handler.notify
from handler.report import KeyEntry, Report, TableStats, TypeStats
from handler.settings import Settings

# Canaries: unique strings that must never show up where they do not belong.
TOKEN = "987654321:TOKENCANARY_7f3a9c1e5b2d4f6a8c0e1b3d5f7"


DSN_KEY = "dsnkeycanary4b8e2f6a1c9d3e7b5f0a"


DB_PASSWORD = "dbpasswordcanary_61d0c7"


KEY_CANARY = "keyvaluecanary_c41f9e"


CHAT_ID = "-1001234567890"


NOW = datetime(2026, 11, 29, 3, 0, 12, tzinfo=UTC)


# Tags Telegram's HTML mode accepts (https://core.telegram.org/bots/api#html-style).
TELEGRAM_TAGS = frozenset(
    {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre"}
)


TELEGRAM_TAGS |= {"span", "tg-spoiler", "tg-emoji", "blockquote"}


def make_report(**changes: Any) -> Report:
    """A realistic live run on a 120k-key table; `changes` override fields."""
    base = Report(
        status="completed",
        dry_run=False,
        table="whatsapp_keys",
        timestamp_column="updated_at",
        key_type_column="key_type",
        retention_days=30,
        protected_types=["app-state-sync-key", "app-state-sync-version", "lid-mapping"],
        cutoff=NOW - timedelta(days=30),
        started_at=NOW,
        eligible=41_230,
        protected=1_312,
        deleted=41_230,
        before=TableStats(
            keys=120_000, table_bytes=31_457_280, index_bytes=9_437_184, total_bytes=40_894_464
        ),
        after=TableStats(
            keys=78_770, table_bytes=31_457_280, index_bytes=9_437_184, total_bytes=40_894_464
        ),
        age_distribution={
            "<1d": 2_950,
            "1-7d": 11_870,
            "7-14d": 15_200,
            "14-30d": 48_750,
            ">30d": 41_230,
        },
        oldest=NOW - timedelta(days=412),
        newest=NOW - timedelta(minutes=3),
        by_type={
            "pre-key": TypeStats(keys=71_500, eligible=33_900, deleted=33_900, retention_days=30),
            "session": TypeStats(keys=28_400, eligible=5_120, deleted=5_120, retention_days=30),
            "sender-key": TypeStats(keys=14_800, eligible=2_150, deleted=2_150, retention_days=30),
            "sender-key-memory": TypeStats(keys=3_988, eligible=60, deleted=60, retention_days=30),
            "lid-mapping": TypeStats(keys=1_180, protected=1_180),
            "app-state-sync-key": TypeStats(keys=120, protected=120),
            "app-state-sync-version": TypeStats(keys=12, protected=12),
        },
        released_bytes=0,
        reclaimable_bytes=12_910_592,
        batches=9,
        max_batch_ms=58,
        duration_ms=4_210,
        event_id="a1b2c3d4-0000-4000-8000-000000000001",
    )
    return base.model_copy(update=changes)


def key_listing(n: int, *, key_type: str = "session", marker: str = "") -> list[KeyEntry]:
    return [
        KeyEntry(
            key={"id": f"session-5511{i:08d}@s.whatsapp.net.0{marker}"},
            key_type=key_type,
            age_days=31.0 + i % 300,
        )
        for i in range(n)
    ]


def make_settings(**values: Any) -> Settings:
    """Settings by field name; notifications point nowhere unless given."""
    return Settings.model_validate(values)


def telegram_structure(text: str) -> tuple[list[str], str]:
    """Parse Telegram HTML: the tags used, and the text as displayed.

    Raises AssertionError for an unknown tag, an unbalanced tag, or a bare `<`/`&` that
    Telegram would reject.
    """
    tags: list[str] = []
    stack: list[str] = []
    shown: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag: str, attrs: Any) -> None:
            assert tag in TELEGRAM_TAGS, f"tag {tag!r} not allowed by Telegram"
            tags.append(tag)
            stack.append(tag)

        def handle_endtag(self, tag: str) -> None:
            assert stack, f"unbalanced </{tag}>"
            assert stack[-1] == tag, f"unbalanced </{tag}>"
            stack.pop()

        def handle_data(self, data: str) -> None:
            shown.append(data)

    # Telegram accepts only these named entities, plus numeric ones.
    for i, char in enumerate(text):
        if char == "&":
            rest = text[i : i + 8]
            assert rest.startswith(("&lt;", "&gt;", "&amp;", "&quot;", "&#")), rest
    parser = Parser(convert_charrefs=True)
    parser.feed(text)
    parser.close()
    assert not stack, f"unclosed tags {stack}"
    return tags, "".join(shown)


Reply = tuple[int, dict[str, Any]]


OK: Reply = (200, {"ok": True, "result": {"message_id": 42}})


SERVER_ERROR: Reply = (
    500,
    {"ok": False, "error_code": 500, "description": "Internal Server Error"},
)


def too_many_requests(retry_after: int) -> Reply:
    return (
        429,
        {
            "ok": False,
            "error_code": 429,
            "description": f"Too Many Requests: retry after {retry_after}",
            "parameters": {"retry_after": retry_after},
        },
    )


@dataclass
class FakeBot:
    """Plays the Bot API's sendMessage; replies follow `script`, then the last one repeats."""

    server: HTTPServer
    script: list[Reply] = field(default_factory=lambda: [OK])
    stall: threading.Event | None = None  # when set, each request waits on it (a slow Telegram)
    requests: list[dict[str, Any]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://{self.server.host}:{self.server.port}"

    @property
    def texts(self) -> list[str]:
        return [str(r["text"]) for r in self.requests]

    def install(self, token: str = TOKEN) -> FakeBot:
        self.server.expect_request(f"/bot{token}/sendMessage", method="POST").respond_with_handler(
            self._handle
        )
        return self

    def _handle(self, request: Request) -> Response:
        self.arrivals.append(time.monotonic())
        self.paths.append(request.path)
        self.requests.append(json.loads(request.get_data()))
        if self.stall is not None:
            self.stall.wait(timeout=10)
        status, body = self.script[min(len(self.requests) - 1, len(self.script) - 1)]
        return Response(json.dumps(body), status=status, content_type="application/json")


@dataclass
class SentryEndpoint:
    """Receives the SDK's envelopes at /api/1/envelope/ and keeps them decoded."""

    server: HTTPServer
    raw: list[bytes] = field(default_factory=list)
    envelopes: list[Envelope] = field(default_factory=list)

    @property
    def dsn(self) -> str:
        return f"http://{DSN_KEY}@{self.server.host}:{self.server.port}/1"

    def install(self) -> SentryEndpoint:
        self.server.expect_request("/api/1/envelope/", method="POST").respond_with_handler(
            self._handle
        )
        return self

    def _handle(self, request: Request) -> Response:
        body = request.get_data()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.raw.append(body)
        self.envelopes.append(Envelope.deserialize(body))
        return Response("{}", content_type="application/json")

    def items(self, kind: str) -> list[dict[str, Any]]:
        sentry_sdk.flush(timeout=5)
        found = []
        for envelope in self.envelopes:
            for item in envelope.items:
                if item.type == kind:
                    found.append(json.loads(item.payload.get_bytes()))
        return found

    def events(self) -> list[dict[str, Any]]:
        return self.items("event")

    def checkins(self) -> list[dict[str, Any]]:
        return self.items("check_in")

    def payloads(self) -> str:
        """Every item payload as text (envelope headers, which carry the DSN, left out)."""
        sentry_sdk.flush(timeout=5)
        return "\n".join(
            item.payload.get_bytes().decode("utf-8", "replace")
            for envelope in self.envelopes
            for item in envelope.items
        )


def reset_sentry() -> None:
    """Close the global client and clear every scope, so no test sees another's Sentry."""
    sentry_sdk.get_client().close(timeout=2)
    for scope in (
        sentry_sdk.get_current_scope(),
        sentry_sdk.get_isolation_scope(),
        sentry_sdk.get_global_scope(),
    ):
        scope.clear()
    sentry_sdk.get_global_scope().set_client(None)
    handler.notify.start_invocation()  # and the "DSN unreadable" memo of the last invocation


class _Lines(logging.Handler):
    def __init__(self, formatter: logging.Formatter | None) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        if formatter is not None:
            self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextmanager
def capture_logs() -> Iterator[Callable[[], list[str]]]:
    """Every log line formatted as emitted: the notifier's Powertools JSON lines (with their
    structured fields) and every other library's records at DEBUG (urllib3, sentry_sdk)."""
    powertools = handler.notify.logger
    own = _Lines(powertools.registered_formatter)
    rest = _Lines(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    # werkzeug logs for the fake servers (the Bot API double prints request paths): not ours.
    rest.addFilter(lambda record: not record.name.startswith("werkzeug"))
    root = logging.getLogger()
    old_level = root.level
    # The stdlib logger behind the Powertools one (named after the service; it does not
    # propagate to the root logger, hence a handler of its own).
    std = logging.getLogger(powertools.service)
    std.addHandler(own)
    root.addHandler(rest)
    root.setLevel(logging.DEBUG)
    try:
        yield lambda: own.lines + rest.lines
    finally:
        root.setLevel(old_level)
        root.removeHandler(rest)
        std.removeHandler(own)


def find_log(lines: list[str], message: str) -> list[dict[str, Any]]:
    """The Powertools JSON lines whose message is `message`."""
    found = []
    for line in lines:
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("message") == message:
                found.append(record)
    return found


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
