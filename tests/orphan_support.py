"""Helpers for the orphan rule's two-run confirmation: a run recorded earlier, as the job
records it (handler/db/history.py:insert_history), or this test's runs moved back in time."""

from __future__ import annotations

from psycopg import sql

from handler import db
from tests.conftest import PgSchema


def seed_candidates(
    pg: PgSchema, *tenants: str, hours: float = 2.0, table: str = "whatsapp_keys"
) -> None:
    """A live run `hours` ago that found `tenants` orphaned (and recorded them)."""
    schema, name = pg.settings().history_table_parts
    with pg.connect() as conn:
        if not db.history_exists(conn, schema, name):
            db.create_history(conn, schema, name)
        row = conn.execute("SELECT now() - make_interval(secs => %s * 3600)", (hours,)).fetchone()
        assert row is not None
        db.insert_history(
            conn,
            schema,
            name,
            db.HistoryRow(
                event_id=None,
                target_table=f"{pg.schema}.{table}",
                started_at=row[0],
                status="completed",
                keys_before=None,
                keys_after=None,
                total_bytes_before=None,
                total_bytes_after=None,
                eligible=0,
                deleted=0,
                duration_ms=0,
                report_json="{}",
                orphan_candidates=list(tenants),
            ),
        )


def backdate_runs(pg: PgSchema, hours: float = 2.0) -> None:
    """Every recorded run of this schema, `hours` earlier (as if the next run came later)."""
    _, name = pg.settings().history_table_parts
    with pg.connect() as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {} SET started_at = started_at - make_interval(secs => %(s)s), "
                "finished_at = finished_at - make_interval(secs => %(s)s)"
            ).format(sql.Identifier(name)),
            {"s": hours * 3600},
        )
