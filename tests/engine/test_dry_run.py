"""A dry run deletes nothing and counts what a live run then deletes."""

from __future__ import annotations

from handler.cleanup import run_cleanup
from handler.settings import Flags
from tests.support.db import KeyRow, PgSchema
from tests.support.tables import LIVE


def test_dry_run_deletes_nothing_and_counts_what_live_deletes(
    pg: PgSchema, table: list[KeyRow]
) -> None:
    settings = pg.settings(CLEANUP_GUARD_MIN_KEYS="100000")
    dry = run_cleanup(settings, Flags())
    assert pg.count() == len(table)
    assert dry.deleted == 0
    assert dry.dry_run

    live = run_cleanup(settings, LIVE)
    assert live.deleted == dry.eligible
    assert {k: v.deleted for k, v in live.by_type.items()} == {
        k: v.eligible for k, v in dry.by_type.items()
    }
