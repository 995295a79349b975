"""The job with the README's grants only: SELECT and DELETE on the key table, plus the history
grants.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from psycopg import sql

from handler.cleanup import run_cleanup
from handler.settings import Flags, Settings
from tests.support.db import KeyRow, PgSchema
from tests.support.tables import LIVE, half_old_survivors

# The README's GRANT statements, verbatim but for the names.
GRANTS = """
CREATE ROLE {role} LOGIN;
GRANT USAGE ON SCHEMA {schema} TO {role};
GRANT SELECT, DELETE ON {schema}.whatsapp_keys TO {role};
GRANT SELECT, INSERT ON {schema}.keys_cleanup_runs TO {role};
GRANT USAGE ON SEQUENCE {schema}.keys_cleanup_runs_id_seq TO {role};
"""


@pytest.fixture
def least_privileged(pg: PgSchema, half_old_table: list[KeyRow]) -> Iterator[Settings]:
    role = f"{pg.schema}_job"
    # The history table is created once by the owner (`keys-cleanup init-db`).
    subprocess.run(
        [sys.executable, "-m", "handler.cli", "init-db"],
        env={**os.environ, **pg.env()},
        check=True,
        capture_output=True,
    )
    with pg.connect() as conn:
        for statement in GRANTS.format(role=role, schema=pg.schema).strip().splitlines():
            conn.execute(statement)
        assert conn.execute(
            "SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles WHERE rolname = %s",
            (role,),
        ).fetchone() == (False,)
    try:
        yield pg.settings(DATABASE_URL=pg.dsn + f" user={role}", CLEANUP_GUARD_MIN_KEYS="100000")
    finally:
        with pg.connect() as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_least_privileged_role_runs_the_whole_job(
    pg: PgSchema, half_old_table: list[KeyRow], least_privileged: Settings
) -> None:
    held = next(k for k in half_old_table if k.age >= 30)
    with pg.connect() as app, app.transaction():
        # A row the application holds: the job must skip it without UPDATE privilege.
        app.execute(
            "SELECT 1 FROM whatsapp_keys WHERE company_id = %s AND key_type = %s "
            "AND key_id = %s FOR UPDATE",
            held.ident,
        )
        report = run_cleanup(least_privileged, LIVE, event_id="evt-lp")
    assert report.status == "completed"
    assert report.skipped_pages == 1
    assert held.ident in pg.key_set()
    assert not any("history not recorded" in note for note in report.notes)
    with pg.connect() as conn:
        assert conn.execute("SELECT event_id, status FROM keys_cleanup_runs").fetchall() == [
            ("evt-lp", "completed")
        ]
    run_cleanup(least_privileged, LIVE)
    assert pg.key_set() == half_old_survivors(half_old_table)


def test_least_privileged_role_cannot_vacuum_and_says_so(
    least_privileged: Settings,
) -> None:
    report = run_cleanup(least_privileged, Flags(dry_run=False, vacuum=True))
    assert report.status == "completed"
    assert not report.vacuumed
    assert any("skipping" in note for note in report.notes)
