"""Faults through the Lambda handler: local servers that fail, the notifiers' environment, a
seeded table and the handler's call.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext
from psycopg import sql
from pytest_httpserver import HTTPServer

from handler import app
from handler.local import LocalContext
from tests.support.db import KeyRow, PgSchema, baileys_creds
from tests.support.notify import (
    CHAT_ID,
    TOKEN,
    telegram_structure,
)

# 610 keys of ~300 bytes, ~25 to a page: with CLEANUP_BATCH_SIZE=10 every batch is one page,
# so a run takes ~24 batches and a fault can land between or inside them.
PAD = "x" * 200


EVERY = 3  # one key in three is past the retention


def key_rows(value: str = "secret") -> list[KeyRow]:
    rows = [
        KeyRow(
            "c1",
            "session" if i % 2 else "pre-key",
            # Pre-key ids are numbers from 1, above the window of the creds (CREDS).
            f"k{i:04d}" if i % 2 else str(i + 1),
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


# c1's creds: a registration with no pre-key yet (counters at 1), so its pre-keys are
# leftovers above the window and their age decides.
CREDS = {"c1": baileys_creds(1)}


ROWS = key_rows()


SURVIVORS = {r.ident for r in ROWS if r.age < 30 or r.key_type == "app-state-sync-key"}


ELIGIBLE = len(ROWS) - len(SURVIVORS)


def _local_server() -> HTTPServer:
    # Threaded, and one per service: a stalled Telegram must not hold up Sentry's envelopes.
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    return server


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


def call_handler(event: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    return app.lambda_handler(event, cast(LambdaContext, LocalContext(timeout_s=timeout_s)))


def invoke_handler(
    event: dict[str, Any], *, timeout_s: float = 900.0
) -> tuple[dict[str, Any], float]:
    """The handler's result and the seconds it took, against a context of `timeout_s`."""
    started = time.monotonic()
    result = call_handler(event, timeout_s)
    return result, time.monotonic() - started


LIVE_EVENT: dict[str, Any] = {"dry_run": False}


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


def shown(message: str) -> str:
    """A Telegram message as the chat displays it (and proof that it parses)."""
    return telegram_structure(message)[1]


def terminate(pg: PgSchema, pid: int) -> None:
    with pg.connect() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
