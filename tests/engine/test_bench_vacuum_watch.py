"""The bench's view of autovacuum on the key table (bench/waits.py, bench/vacuumtail.py): on a
plain table as on a partitioned one's leaves. `pg_partition_tree` lists no rows for a plain
table, so code that read the table's leaves from it alone saw no table at all."""

from __future__ import annotations

import time
from collections.abc import Callable

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


def _polled[T](watch: VacuumWatch, read: Callable[[], T], done: Callable[[T], bool]) -> T:
    """Poll the watch until `done(read())`, or 15 s: statistics reach the server
    asynchronously. Returns the last reading."""
    deadline = time.monotonic() + 15.0
    while True:
        watch._poll_once()
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def _dead_rows_seen(watch: VacuumWatch) -> int:
    """The table's dead rows, once the deleting session's statistics reach the server."""
    return _polled(watch, lambda: sum(leaf[1] for leaf in watch.leaves), bool)


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
    assert _polled(watch, watch.state, lambda state: state == (False, False)) == (False, False)
