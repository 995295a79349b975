"""A deadline gives `partial` before it, and the next run finishes."""

from __future__ import annotations

import threading
import time

import psycopg

from handler.cleanup import run_cleanup
from handler.deleteloop import Progress
from tests.support.db import KeyRow, PgSchema
from tests.support.tables import LIVE, expected_survivors, slow_deletes


def test_deadline_gives_partial_and_next_run_finishes(pg: PgSchema, table: list[KeyRow]) -> None:
    settings = pg.settings(CLEANUP_BATCH_SIZE="5", CLEANUP_GUARD_MIN_KEYS="100000")
    deadline = time.monotonic() + 0.3

    def slow(_: Progress) -> None:
        time.sleep(0.35)  # the first batch ends after the deadline

    partial = run_cleanup(settings, LIVE, deadline=deadline, progress=slow)
    assert partial.status == "partial"
    assert partial.batches == 1
    assert 0 < partial.deleted < partial.eligible
    assert pg.count() == len(table) - partial.deleted

    rest = run_cleanup(settings, LIVE)
    assert rest.status == "completed"
    assert partial.deleted + rest.deleted == partial.eligible
    assert pg.key_set() == expected_survivors(table, 30)


def test_a_batch_started_before_the_deadline_ends_by_it_despite_a_table_lock_wait(
    pg: PgSchema, table: list[KeyRow]
) -> None:
    """`run_cleanup`'s contract: no batch starts that could not finish before the deadline.

    A batch gets statement_timeout = the time left; but its LOCK TABLE (waited for under the
    lock timeout) and its DELETE are two statements, each with the full budget: a table lock
    released just before the lock timeout leaves the DELETE a whole budget more."""
    slow_deletes(pg, 30)  # any DELETE runs until its statement timeout
    holder = psycopg.connect(pg.dsn)  # not autocommit: the lock stays until rollback
    try:
        holder.execute("LOCK TABLE whatsapp_keys IN SHARE MODE")  # blocks ROW EXCLUSIVE only
        started = time.monotonic()
        deadline = started + 2.0
        threading.Timer(1.5, holder.rollback).start()  # released within the lock timeout
        report = run_cleanup(
            pg.settings(CLEANUP_GUARD_MIN_KEYS="100000", CLEANUP_LOCK_TIMEOUT_MS="2000"),
            LIVE,
            deadline=deadline,
        )
        ended = time.monotonic()
    finally:
        holder.close()
    assert report.status == "partial"
    assert report.deleted == 0
    overrun = ended - deadline
    assert overrun < 0.3, f"the run ended {overrun:.2f} s after its deadline"
