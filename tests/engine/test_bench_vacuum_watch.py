"""The bench's view of autovacuum on the key table (bench/waits.py, bench/vacuumtail.py): on a
plain table as on a partitioned one's leaves. `pg_partition_tree` lists no rows for a plain
table, so code that read the table's leaves from it alone saw no table at all."""

from __future__ import annotations

import time

from bench.vacuumtail import VacuumWatch
from bench.waits import log_table_vacuums
from handler.schema import hash_partitions
from tests.support.db import PgSchema


def _reloptions(pg: PgSchema) -> dict[str, list[str]]:
    with pg.connect() as conn:
        rows = conn.execute(
            "SELECT c.relname, coalesce(c.reloptions, '{}') FROM pg_class AS c"
            " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'"
        ).fetchall()
    return {str(name): list(opts) for name, opts in rows}


def test_every_autovacuum_of_a_plain_key_table_is_logged(pg: PgSchema) -> None:
    pg.create_reference_table()
    log_table_vacuums(pg.dsn)
    assert _reloptions(pg) == {"whatsapp_keys": ["log_autovacuum_min_duration=0"]}


def test_every_autovacuum_of_a_partitioned_key_tables_leaves_is_logged(pg: PgSchema) -> None:
    with pg.connect() as conn:
        conn.execute(hash_partitions("whatsapp_keys", 2))
    log_table_vacuums(pg.dsn)
    opts = _reloptions(pg)
    assert len(opts) == 2
    assert all(o == ["log_autovacuum_min_duration=0"] for o in opts.values())


def _dead_rows_seen(watch: VacuumWatch, timeout_s: float = 15.0) -> int:
    """Poll until the deleting session's statistics reach the server."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        watch._poll_once()
        dead = sum(leaf[1] for leaf in watch.leaves)
        if dead:
            return dead
        time.sleep(0.2)
    return 0


def test_the_vacuum_watch_sees_a_plain_tables_dead_rows_and_threshold(pg: PgSchema) -> None:
    with pg.connect() as conn:
        conn.execute(
            "CREATE TABLE whatsapp_keys (a int) WITH (autovacuum_enabled = false,"
            " autovacuum_vacuum_threshold = 100, autovacuum_vacuum_scale_factor = 0)"
        )
        conn.execute("INSERT INTO whatsapp_keys SELECT generate_series(1, 1000)")
        conn.execute("ANALYZE whatsapp_keys")
    watch = VacuumWatch(pg.dsn)
    watch._poll_once()
    assert len(watch.leaves) == 1
    assert watch.leaves[0][2] == 100.0  # the table's own threshold: 100 + 0 x reltuples
    with pg.connect() as conn:
        conn.execute("DELETE FROM whatsapp_keys WHERE a <= 500")
    assert _dead_rows_seen(watch) == 500
    assert watch.state() == (False, True)  # no vacuum running, one due
    # TRUNCATE, not VACUUM: a VACUUM cannot remove the dead rows while another session of
    # the same database (a parallel test worker) holds an older snapshot, and they stay due.
    with pg.connect() as conn:
        conn.execute("TRUNCATE whatsapp_keys")
    assert _state_seen(watch, (False, False)) == (False, False)


def _state_seen(watch: VacuumWatch, wanted: tuple[bool, bool], timeout_s: float = 15.0) -> object:
    """Poll until the watch's state is `wanted` (statistics reach the server asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        watch._poll_once()
        state = watch.state()
        if state == wanted or time.monotonic() > deadline:
            return state
        time.sleep(0.2)
