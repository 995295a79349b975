"""A synchronous standby that is gone must not hold the run's own writes past its deadline (on a
private primary, tools/pgcluster.py)."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest
from psycopg import sql

from handler.cleanup import run_cleanup
from handler.report import Report
from tests.support.db import PgSchema
from tests.support.layouts import seed
from tests.support.tables import LIVE
from tools.pgcluster import Cluster, bin_dir

pytestmark = pytest.mark.skipif(bin_dir() is None, reason="no PostgreSQL server binaries")


def _sync_names(dsn: str, value: str | None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if value is None:
            conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
        else:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(
                    sql.Literal(value)
                )
            )
        conn.execute("SELECT pg_reload_conf()")


def test_a_synchronous_standby_that_is_gone_does_not_hold_the_run_past_its_deadline() -> None:
    """Batches commit with synchronous_commit = local/off: 'a commit waiting for [a synchronous
    standby] would not be bounded by any timeout' (docs/pacing.md). The run's other writes,
    the history row (CREATE TABLE IF NOT EXISTS, INSERT) after the loop, commit with the
    session's default, `on`: with the synchronous standby gone they wait for it without end
    (statement_timeout is off during COMMIT), long past the deadline; the Lambda is killed
    with no report and no notification."""
    found = bin_dir()
    assert found is not None
    cluster = Cluster(found).start(standby=False)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(cluster.primary_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        pg = PgSchema(cluster.primary_dsn, schema)
        seed(pg, "scattered", rows=2_000, old_share=0.5)
        _sync_names(cluster.primary_dsn, "standby1")  # configured, not connected (gone)
        done: list[Report] = []
        settings = pg.settings(CLEANUP_GUARD_MIN_KEYS="1000000", CLEANUP_MAX_REPLICA_LAG_BYTES="0")
        deadline = time.monotonic() + 3.0

        def run() -> None:
            done.append(run_cleanup(settings, LIVE, deadline=deadline))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(timeout=8.0)
        hung_s = time.monotonic() - deadline if thread.is_alive() else 0.0
        _sync_names(cluster.primary_dsn, None)  # releases the waiting commit
        thread.join(timeout=10.0)
        deleted = done[0].deleted if done else None
        assert hung_s == 0.0, (
            f"the run was still waiting {hung_s:.1f} s after its deadline "
            f"(its batches had deleted {deleted} keys)"
        )
    finally:
        cluster.stop()
