"""The bench's reading of the measuring pass's plan (bench/measure.py `parallel_scan`): in
EXPLAIN's JSON a parallel sequential scan is a "Seq Scan" node that is "Parallel Aware" (the
text format's "Parallel Seq Scan" is not a node type), so a search for that name never found
one, and every report said the pass read the table in one process."""

from __future__ import annotations

from typing import Any

import pytest

from bench.measure import parallel_scan
from tests.support.db import KeyRow, PgSchema


def _plan(pg: PgSchema, workers: int) -> dict[str, Any]:
    pg.create_reference_table()
    pg.insert_keys([KeyRow("c0", "session", f"s{i}", 40) for i in range(200)])
    with pg.connect() as conn:
        # Parallel even for 200 rows: no start-up or per-row cost charged to a worker.
        for setting in ("parallel_setup_cost", "parallel_tuple_cost"):
            conn.execute(f"SET {setting} = 0")
        conn.execute("SET min_parallel_table_scan_size = 0")
        conn.execute(f"SET max_parallel_workers_per_gather = {workers}")
        row = conn.execute(
            "EXPLAIN (FORMAT JSON) SELECT key_type, count(*) FROM whatsapp_keys GROUP BY 1"
        ).fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]
    assert isinstance(plan, dict)
    return plan


@pytest.mark.parametrize(("workers", "parallel"), [(2, True), (0, False)])
def test_a_parallel_sequential_scan_is_seen_in_the_json_plan(
    pg: PgSchema, workers: int, parallel: bool
) -> None:
    assert parallel_scan(_plan(pg, workers)) is parallel
