"""A deadline gives `partial` before it, and the next run finishes."""

from __future__ import annotations

import time

from handler.cleanup import run_cleanup
from handler.deleteloop import Progress
from tests.support.db import KeyRow, PgSchema
from tests.support.tables import LIVE, expected_survivors


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
