"""Fixtures of the handler tests: the mixed table behind the Lambda handler, local Telegram and
Sentry servers.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import pytest
from pytest_httpserver import HTTPServer

from tests.support.db import PgSchema
from tests.support.faults import CREDS, ROWS, SilentServer, _local_server, notify_env, sentry_dsn
from tests.support.handler import (
    seed_mixed,
    set_lambda_env,
)
from tests.support.notify import (
    FakeBot,
    SentryEndpoint,
    reset_sentry,
)


@pytest.fixture
def mixed(pg: PgSchema, monkeypatch: pytest.MonkeyPatch) -> PgSchema:
    seed_mixed(pg)
    set_lambda_env(monkeypatch, pg)
    return pg


@pytest.fixture
def quiet_fake_servers() -> Iterator[None]:
    """werkzeug logs every request the fake servers get, the bot token in its path included.

    That is the test double talking, not the job: left on, it would put the token into the
    captured output of the canary test. A module asks for it in its `pytestmark`.
    """
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)
    yield
    werkzeug.setLevel(level)


@pytest.fixture
def bot(httpserver: HTTPServer) -> FakeBot:
    return FakeBot(httpserver).install()


@pytest.fixture
def bot_server() -> Iterator[HTTPServer]:
    server = _local_server()
    yield server
    server.clear()
    server.stop()


@pytest.fixture
def fault_bot(bot_server: HTTPServer) -> Iterator[FakeBot]:
    fake = FakeBot(bot_server).install()
    yield fake
    if fake.stall is not None:
        fake.stall.set()  # release a stalled request before the server stops


@pytest.fixture
def fault_sentry() -> Iterator[SentryEndpoint]:
    server = _local_server()
    yield SentryEndpoint(server).install()
    reset_sentry()  # the client flushes and closes while its endpoint still answers
    server.clear()
    server.stop()


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


@pytest.fixture
def fault_seeded(pg: PgSchema, monkeypatch: pytest.MonkeyPatch) -> PgSchema:
    pg.create_reference_table()
    pg.add_auth(CREDS)
    pg.insert_keys(ROWS)
    set_lambda_env(monkeypatch, pg, CLEANUP_BATCH_SIZE="10")
    return pg


@pytest.fixture
def notified(
    fault_seeded: PgSchema,
    fault_bot: FakeBot,
    fault_sentry: SentryEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> PgSchema:
    """The seeded table, with both notifiers pointing at their local servers."""
    notify_env(
        monkeypatch, telegram_url=fault_bot.api_url, dsn=sentry_dsn(fault_sentry.server.port)
    )
    return fault_seeded
