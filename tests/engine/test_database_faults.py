"""The database fails under the engine: a killed connection keeps the committed batches and rolls
the interrupted one back; an unavailable server is a clear error, fast.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from handler.cleanup import CleanupError, run_cleanup
from handler.deleteloop import Progress
from handler.settings import Settings
from tests.support.db import KeyRow, PgSchema
from tests.support.tables import LIVE, half_old_survivors, slow_deletes


def test_connection_killed_between_batches_keeps_committed_batches(
    pg: PgSchema, half_old_table: list[KeyRow]
) -> None:
    settings = pg.settings(CLEANUP_BATCH_SIZE="20", CLEANUP_GUARD_MIN_KEYS="100000")
    committed: list[int] = []

    def kill_after_second_batch(p: Progress) -> None:
        committed.append(p.deleted)
        if p.batches == 2:
            with pg.connect() as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pg.cleanup_backend(),))

    with pytest.raises(CleanupError, match="database error"):
        run_cleanup(settings, LIVE, progress=kill_after_second_batch)
    assert pg.count() == len(half_old_table) - committed[-1]
    assert committed[-1] > 0

    again = run_cleanup(settings, LIVE)
    assert again.status == "completed"
    assert pg.key_set() == half_old_survivors(half_old_table)


def test_connection_killed_inside_a_batch_rolls_the_batch_back(
    pg: PgSchema, half_old_table: list[KeyRow]
) -> None:
    settings = pg.settings(CLEANUP_BATCH_SIZE="50", CLEANUP_GUARD_MIN_KEYS="100000")
    slow_deletes(pg, 0.5)
    committed: list[int] = []
    killed = threading.Event()

    def kill_during_next_batch(p: Progress) -> None:
        committed.append(p.deleted)
        if p.batches == 1:

            def killer() -> None:
                time.sleep(0.25)  # the next DELETE is sleeping in its trigger by now
                with pg.connect() as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", (pg.cleanup_backend(),))
                killed.set()

            threading.Thread(target=killer, daemon=True).start()

    with pytest.raises(CleanupError):
        run_cleanup(settings, LIVE, progress=kill_during_next_batch)
    assert killed.wait(5)
    # Exactly the first batch is gone; the interrupted one was rolled back whole.
    assert committed == [committed[0]]
    assert pg.count() == len(half_old_table) - committed[0]

    with pg.connect() as conn:
        conn.execute("DROP TRIGGER slow_delete ON whatsapp_keys")
    run_cleanup(settings, LIVE)
    assert pg.key_set() == half_old_survivors(half_old_table)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:pw-canary-1@127.0.0.1:1/postgres",  # connection refused
        "postgresql://postgres:pw-canary-1@no-such-host.invalid:5432/postgres",  # unknown host
        "postgresql://no_such_role_x:pw-canary-1@127.0.0.1:5432/postgres",  # auth fails
    ],
)
def test_unavailable_database_fails_fast_and_clearly(url: str) -> None:
    settings = Settings.from_env({"DATABASE_URL": url, "CLEANUP_CONNECT_TIMEOUT_S": "3"})
    started = time.monotonic()
    with pytest.raises(CleanupError, match="could not connect") as info:
        run_cleanup(settings, LIVE)
    assert time.monotonic() - started < 15  # bounded by the connect timeout, never a hang
    assert "pw-canary-1" not in str(info.value)
    assert info.value.__cause__ is None  # no driver exception (with its DSN) chained


def test_cleanup_error_has_no_driver_cause(pg: PgSchema, half_old_table: list[KeyRow]) -> None:
    """Exceptions leave without the psycopg exception chained: its text may carry the DSN."""
    settings = pg.settings(CLEANUP_BATCH_SIZE="20", CLEANUP_GUARD_MIN_KEYS="100000")

    def kill(_: Progress) -> None:
        with pg.connect() as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pg.cleanup_backend(),))

    with pytest.raises(CleanupError) as info:
        run_cleanup(settings, LIVE, progress=kill)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert isinstance(info.value.__context__, psycopg.Error)  # kept for --debug only


def test_connection_failure_is_clear_and_hides_the_password(pg: PgSchema) -> None:
    settings = pg.settings(
        DATABASE_URL="postgresql://postgres:hunter2-secret@127.0.0.1:1/none",
        CLEANUP_CONNECT_TIMEOUT_S="2",
    )
    with pytest.raises(CleanupError, match="could not connect") as info:
        run_cleanup(settings, LIVE)
    assert "hunter2-secret" not in str(info.value)
