"""A batch that leaves more than FLUSH_BACKLOG_BYTES of WAL unflushed commits synchronously.

Why (docs/performance.md, "Writer stalls and WAL at 4M"): asynchronous batch commits let the
run write WAL faster than the disk flushes it, and the application's next commit then waits
for the whole backlog. On a server of its own (tools/pgcluster.py, no standby: with one, every
batch flushes anyway), with the WAL writer told not to flush on its own for 10 s, the WAL
still unflushed right after each batch's commit shows which commits waited for their flush.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from handler import pacing
from handler.cleanup import run_cleanup
from handler.deleteloop import Progress
from handler.settings import Flags
from tests.support.db import PgSchema
from tests.support.layouts import seed
from tools.pgcluster import Cluster, bin_dir

pytestmark = pytest.mark.skipif(
    bin_dir() is None, reason="no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb)"
)

SEGMENT = 16 << 20


@pytest.fixture(scope="module")
def server() -> Iterator[Cluster]:
    found = bin_dir()
    assert found is not None
    c = Cluster(found).start(standby=False)
    try:
        with psycopg.connect(c.primary_dsn, autocommit=True) as conn:
            # The WAL writer writes asynchronous commits' WAL but flushes it only every 10 s.
            conn.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
            conn.execute("ALTER SYSTEM SET wal_writer_flush_after = '1GB'")
            conn.execute("SELECT pg_reload_conf()")
        yield c
    finally:
        c.stop()


def _positions(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[int, int]:
    row = conn.execute(
        "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn,"
        " pg_current_wal_flush_lsn() - '0/0'::pg_lsn"
    ).fetchone()
    assert row is not None
    return int(str(row[0])), int(str(row[1]))


def _run(server: Cluster, *, rows: int, batch_size: int) -> list[tuple[int, int]]:
    """One live run on a fresh schema (keys half past the cutoff, every page logged whole
    at its first change); per batch: (its WAL, WAL still unflushed right after its commit)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.primary_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    pg = PgSchema(server.primary_dsn, schema)
    seed(pg, "scattered", rows=rows, old_share=0.5)
    batches: list[tuple[int, int]] = []
    with psycopg.connect(server.primary_dsn, autocommit=True) as watch:
        watch.execute("CHECKPOINT")
        last, _ = _positions(watch)

        def progress(_: Progress) -> None:
            nonlocal last
            insert, flush = _positions(watch)
            if last // SEGMENT == insert // SEGMENT:  # a finished segment is fsynced anyway
                batches.append((insert - last, insert - flush))
            last = insert

        report = run_cleanup(
            pg.settings(
                CLEANUP_BATCH_SIZE=str(batch_size),
                CLEANUP_GUARD_MIN_KEYS="1000000",
                CLEANUP_WAL_BYTES_PER_S="0",
                CLEANUP_HISTORY="false",
            ),
            Flags(dry_run=False),
            progress=progress,
        )
    assert report.status == "completed"
    return batches


def test_unflushed_wal_stays_within_the_bound_and_small_batches_stay_asynchronous(
    server: Cluster,
) -> None:
    batches = _run(server, rows=60_000, batch_size=500)
    bound = pacing.FLUSH_BACKLOG_BYTES
    # Enough WAL that commits left all asynchronous would leave several bounds unflushed.
    assert sum(wal for wal, _ in batches) > 3 * bound
    # Each commit that found more than the bound unflushed waited for the flush, so after any
    # batch at most the bound is left (plus the commit record and a few small records).
    assert max(unflushed for _, unflushed in batches) <= bound + (64 << 10), batches
    flushed = [b for b in batches if b[1] < 8192]
    assert flushed, batches
    # The others did not wait: their WAL is still in the WAL writer's hands.
    assert len(flushed) < len(batches) // 2, batches
