"""Key tables laid out on disk as the pacing must handle them (head, tail, scattered)."""

from __future__ import annotations

from psycopg import sql

from tests.support.db import PgSchema


def seed(pg: PgSchema, layout: str, rows: int = 20_000, old_share: float = 0.1) -> int:
    """`rows` keys, `old_share` of them past the cutoff, placed at the head, tail or scattered.

    Returns how many are eligible. A small old share is the hard case: the average density
    over the table is low, so a span derived from it is far too wide where the old rows sit.
    """
    pg.create_reference_table()
    old = int(rows * old_share)
    every = round(1 / old_share)
    age = {
        "head": sql.SQL("CASE WHEN g <= {} THEN 40 ELSE 1 END").format(sql.Literal(old)),
        "tail": sql.SQL("CASE WHEN g > {} THEN 40 ELSE 1 END").format(sql.Literal(rows - old)),
        "scattered": sql.SQL("CASE WHEN g % {} = 0 THEN 40 ELSE 1 END").format(sql.Literal(every)),
    }[layout]
    with pg.connect() as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at) "
                "SELECT 'c', 'session', 'k' || g, jsonb_build_object('k', md5(g::text)), "
                "now() - make_interval(days => {age}) FROM generate_series(1, {n}) AS g"
            ).format(age=age, n=sql.Literal(rows))
        )
    return old
