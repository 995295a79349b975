"""The run history as the tests read and seed it."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from tests.support.db import PgSchema


def init_history(pg: PgSchema) -> None:
    subprocess.run(
        [sys.executable, "-m", "handler.cli", "init-db"],
        env={**os.environ, **pg.env()},
        check=True,
        capture_output=True,
    )


def history(pg: PgSchema) -> list[tuple[Any, ...]]:
    with pg.connect() as conn:
        return conn.execute("SELECT event_id, status FROM keys_cleanup_runs").fetchall()


def history_rows(pg: PgSchema) -> list[tuple[object, ...]]:
    with pg.connect() as conn:
        return conn.execute(
            "SELECT event_id, status, deleted, keys_before, keys_after, report->>'status' "
            "FROM keys_cleanup_runs ORDER BY id"
        ).fetchall()
