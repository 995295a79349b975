"""Helpers for the orphan rule's two-run confirmation: a run recorded earlier, as the job
records it (handler/db/history.py:insert_history), or this test's runs moved back in time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from handler import db
from handler.schema import reference_auth_schema
from handler.settings import Settings
from tests.support.db import PgSchema, baileys_creds


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


@dataclass(frozen=True)
class Key:
    company: str
    key_type: str
    key_id: str
    age: float  # days since updated_at
    expires_in: float | None = None  # days from now; negative: already expired

    @property
    def ident(self) -> tuple[str, str, str]:
        return (self.company, self.key_type, self.key_id)

    def expired(self) -> bool:
        return self.expires_in is not None and self.expires_in < 0


def add_tenant(conn: psycopg.Connection, tenant: str, table: str = "whatsapp_auth") -> None:  # type: ignore[type-arg]
    conn.execute(
        sql.SQL("INSERT INTO {} (company_id, creds) VALUES (%s, %s)").format(sql.Identifier(table)),
        (tenant, Jsonb(CREDS)),
    )


# Every connected tenant's creds: a registration with no pre-key yet (counters at 1), so the
# numeric pre-key ids below are leftovers above its window, and the rules under test decide.
CREDS = baileys_creds(1)


def create_auth(pg: PgSchema, *tenants: str, table: str = "whatsapp_auth") -> None:
    with pg.connect() as conn:
        conn.execute(reference_auth_schema(table))
        for tenant in tenants:
            add_tenant(conn, tenant, table)


def insert(pg: PgSchema, keys: Iterable[Key]) -> None:
    with pg.connect() as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at, "
            'expires_at) VALUES (%s, %s, %s, \'{"k": "secret"}\', '
            "now() - make_interval(secs => %s * 86400), "
            "now() + make_interval(secs => %s * 86400))",
            [(k.company, k.key_type, k.key_id, k.age, k.expires_in) for k in keys],
        )


def on(pg: PgSchema, **env: str) -> Settings:
    """Settings with the rules this file tests turned on: TTL (CLEANUP_EXPIRES_COLUMN) and,
    where an auth table is named, the orphan rule; both are opt-in. The tables here have a
    handful of tenants, so one orphaned tenant may be half of them."""
    defaults = {"CLEANUP_EXPIRES_COLUMN": "expires_at"}
    if env.get("CLEANUP_AUTH_TABLE"):
        defaults["CLEANUP_ORPHAN_RULE"] = "true"
        defaults["CLEANUP_MAX_ORPHAN_TENANT_FRACTION"] = "0.5"
    return pg.settings(**(defaults | env))


ORPHAN_KEYS = [
    Key("a", "session", "a-young", 2),
    Key("a", "session", "a-old", 40),
    Key("a", "app-state-sync-key", "a-protected-old", 40),
    Key("b", "pre-key", "b-young", 3),
    Key("b", "lid-mapping", "b-protected", 3),
    # c logged out: its creds row is gone, and no key was touched within the grace
    Key("c", "session", "c-young", 2),
    Key("c", "pre-key", "c-old", 40),
    Key("c", "app-state-sync-key", "c-protected", 5),
    Key("c", "lid-mapping", "c-protected-old", 90),
    # d has no creds row either, but keys touched within the grace: not orphaned
    Key("d", "session", "d-within-grace", 0.5),
    Key("d", "session", "d-expired-within-grace", 0.5, -1),
]
