"""The test fixtures themselves: what every other test stands on."""

from __future__ import annotations

import threading
import uuid

import psycopg
from psycopg import sql

from tests.support.db import ensure_database


def test_test_database_is_created_once_when_workers_race(pg_server_root_dsn: str) -> None:
    """Several pytest-xdist workers start at once on a server that never ran the tests.

    Each must end up with the database, none with a UniqueViolation from the catalog's index.
    """
    name = f"kc_race_{uuid.uuid4().hex[:10]}"
    workers = 8
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            ensure_database(pg_server_root_dsn, name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with psycopg.connect(pg_server_root_dsn, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
            assert row.fetchone() == (1,)
    finally:
        with psycopg.connect(pg_server_root_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
