"""What a run measures: age buckets, sizes, released and reclaimable bytes, growth, exact counts."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from handler.cleanup import run_cleanup
from handler.notify.html import render_summary
from handler.observability import report_fields
from handler.report import BUCKET_LABELS, metric_values, render_text
from handler.settings import Flags
from tests.support.db import KeyRow, PgSchema
from tests.support.notify import telegram_structure
from tests.support.progress import AfterFirstBatch
from tests.support.tables import FORCE, LIVE


def test_measurement_buckets_extremes_and_sizes(pg: PgSchema) -> None:
    pg.create_reference_table()
    ages = {"<1d": [0.2, 0.9], "1-7d": [1.5], "7-14d": [8, 13.5], "14-30d": [20], ">30d": [31, 90]}
    rows = [
        KeyRow("c", "session", f"{label}-{i}", age)
        for label, values in ages.items()
        for i, age in enumerate(values)
    ]
    pg.insert_keys(rows)
    report = run_cleanup(pg.settings(), Flags())
    assert list(report.age_distribution) == list(BUCKET_LABELS)
    assert report.age_distribution == {label: len(v) for label, v in ages.items()}
    assert report.before is not None
    assert report.before.keys == len(rows)
    assert report.before.table_bytes > 0
    assert report.before.index_bytes > 0
    assert report.before.total_bytes >= report.before.table_bytes + report.before.index_bytes
    assert report.oldest is not None
    assert report.newest is not None
    assert report.started_at is not None
    assert round((report.started_at - report.oldest).total_seconds() / 86400) == 90
    assert (report.started_at - report.newest).total_seconds() / 86400 == pytest.approx(0.2, 0.01)
    assert report.cutoff is not None
    assert round((report.started_at - report.cutoff).total_seconds() / 86400) == 30


def test_released_is_measured_and_reclaimable_estimated(pg: PgSchema, table: list[KeyRow]) -> None:
    report = run_cleanup(pg.settings(CLEANUP_GUARD_MIN_KEYS="100000"), LIVE)
    assert report.before is not None
    assert report.after is not None
    assert report.released_bytes == report.before.total_bytes - report.after.total_bytes
    # Each deleted row is at least its header plus three short texts and a small JSON value.
    assert report.reclaimable_bytes >= report.deleted * 50


def test_dry_run_estimates_the_bytes_the_live_run_then_makes_reusable(
    pg: PgSchema, table: list[KeyRow]
) -> None:
    settings = pg.settings(CLEANUP_GUARD_MIN_KEYS="100000")
    dry = run_cleanup(settings, Flags())
    live = run_cleanup(settings, LIVE)
    assert live.deleted == dry.eligible > 0
    assert dry.reclaimable_bytes == live.reclaimable_bytes > 0


def test_reclaimable_estimate_counts_toasted_values(pg: PgSchema) -> None:
    pg.create_reference_table()
    with pg.connect() as conn:
        # 64 KiB of incompressible text per row: stored out of line, in the TOAST table.
        conn.execute(
            "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at) "
            "SELECT 'c', 'session', 'big' || g, jsonb_build_object('k', "
            "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 2048))), "
            "now() - interval '40 days' FROM generate_series(1, 3) g"
        )
    report = run_cleanup(pg.settings(), LIVE)
    assert report.deleted == 3
    # Estimated from the table's average stored size per key, TOAST included.
    assert 3 * 64 * 1024 <= report.reclaimable_bytes < 3 * 128 * 1024


def test_sizes_not_measured_after_the_run_are_not_reported_as_a_measured_release(
    pg: PgSchema, table: list[KeyRow]
) -> None:
    settings = pg.settings(
        CLEANUP_BATCH_SIZE="5", CLEANUP_GUARD_MIN_KEYS="100000", CLEANUP_LOCK_TIMEOUT_MS="200"
    )
    holder: list[psycopg.Connection[Any]] = []

    def lock_the_table() -> None:  # after the first batch, a migration takes the table
        conn = psycopg.connect(pg.dsn)
        conn.execute("LOCK TABLE whatsapp_keys IN ACCESS EXCLUSIVE MODE")
        holder.append(conn)

    try:
        report = run_cleanup(settings, LIVE, progress=AfterFirstBatch(lock_the_table))
    finally:
        for conn in holder:
            conn.rollback()
            conn.close()
    assert report.status == "partial"
    assert report.deleted > 0
    assert report.after is None  # "after-run measurement timed out; sizes ... are unknown"
    assert report.released_bytes is None
    _, shown = telegram_structure(render_summary(report))
    (space,) = [line for line in shown.splitlines() if line.startswith("Space:")]
    (size,) = [line for line in shown.splitlines() if line.startswith("Size:")]
    assert "not measured" in size
    # It said "released 0 B (measured)", and CloudWatch got a ReleasedBytes of 0.
    assert space.startswith("Space: released: not measured · reclaimable"), space
    assert "space: released: not measured, reclaimable" in render_text(report)
    assert "ReleasedBytes" not in {m.name for m, _ in metric_values(report)}
    assert "released_bytes" not in report_fields(report)


def test_a_table_that_grew_shows_growth_not_negative_release(pg: PgSchema) -> None:
    pg.create_reference_table()
    pg.insert_keys([KeyRow("c", "session", "k", 40)])
    report = run_cleanup(pg.settings(), FORCE)
    grown = report.model_copy(update={"released_bytes": -8192})
    text = render_text(grown)
    assert "-8.0 KiB" not in text
    assert "grew 8.0 KiB" in text


def test_an_exact_key_count_is_not_marked_approximate(pg: PgSchema) -> None:
    pg.create_reference_table()
    pg.insert_keys([KeyRow("c", "session", "k", 1)])
    report = run_cleanup(pg.settings(), FORCE)
    assert report.deleted == 0
    assert "≈" not in render_text(report)
