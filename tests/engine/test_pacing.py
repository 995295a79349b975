"""Batches keep their size on real layouts (head, tail, scattered) on a real PostgreSQL."""

from __future__ import annotations

import pytest

from handler.cleanup import run_cleanup
from handler.report import render_text
from handler.settings import Flags
from tests.support.db import PgSchema
from tests.support.layouts import seed

BATCH = 100


@pytest.mark.parametrize("layout", ["scattered", "head", "tail"])
def test_batches_keep_their_size_whatever_the_layout(pg: PgSchema, layout: str) -> None:
    eligible = seed(pg, layout)
    report = run_cleanup(
        pg.settings(CLEANUP_BATCH_SIZE=str(BATCH), CLEANUP_GUARD_MIN_KEYS="1000000"),
        Flags(dry_run=False),
    )
    assert report.status == "completed"
    assert report.deleted == eligible
    assert 0 < report.max_batch_rows <= 2 * BATCH
    assert f"largest {report.max_batch_rows:,} rows" in render_text(report)
