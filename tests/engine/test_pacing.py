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


def _insert_lsn(pg: PgSchema) -> int:
    with pg.connect() as conn:
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint"
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("rate", [None, "0"])
def test_report_gives_the_batches_wal_and_per_deleted_row(pg: PgSchema, rate: str | None) -> None:
    """The report carries the WAL its batches wrote, paced or not (CLEANUP_WAL_BYTES_PER_S=0),
    and per deleted key: at least one heap DELETE record per row, at most the whole run's WAL."""
    eligible = seed(pg, "scattered", rows=5_000, old_share=0.5)
    env = {"CLEANUP_BATCH_SIZE": str(BATCH), "CLEANUP_GUARD_MIN_KEYS": "1000000"}
    if rate is not None:
        env["CLEANUP_WAL_BYTES_PER_S"] = rate
    before = _insert_lsn(pg)
    report = run_cleanup(pg.settings(**env), Flags(dry_run=False))
    whole_run = _insert_lsn(pg) - before
    assert report.status == "completed"
    assert report.deleted == eligible
    # A heap DELETE record is a 24-byte header, a block reference and its 8-byte body.
    assert 50 * report.deleted <= report.wal_bytes <= whole_run
    per_row = round(report.wal_bytes / report.deleted)
    assert f"({per_row:,} B per deleted row)" in render_text(report)
