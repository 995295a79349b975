"""The bench's view of autovacuum on the key table (bench/waits.py): on a plain table as on a
partitioned one's leaves. `pg_partition_tree` lists no rows for a plain
table, so code that read the table's leaves from it alone saw no table at all."""

from __future__ import annotations

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
