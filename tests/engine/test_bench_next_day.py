"""The bench's second measure of the pass (bench/measure.py `next_day_pass_vs_scan`): timed on
the table the next day's run meets, after yesterday's run. Yesterday's run is the engine's own
(one day more of retention), so what it leaves is what the job leaves: the aged keys the key
lifecycle kept stay and are due again, and only the keys that came of age since are new."""

from __future__ import annotations

from bench.measure import next_day_pass_vs_scan
from tests.support.db import KeyRow, PgSchema


def _sessions(age: float, n: int) -> list[KeyRow]:
    return [KeyRow("c0", "session", f"u{age}-{i}.0", age) for i in range(n)]


def test_the_next_days_pass_is_timed_on_what_yesterdays_run_left(pg: PgSchema) -> None:
    pg.create_reference_table()
    pg.insert_keys(
        [
            *_sessions(5, 4),  # fresh
            *_sessions(30.5, 3),  # came of age since yesterday: today's run takes them
            *_sessions(31.5, 6),  # yesterday's run took these
            *_sessions(60, 5),  # and these
            # No creds: the lifecycle keeps every pre-key, yesterday as today.
            *[KeyRow("c0", "pre-key", str(i), 60) for i in range(1, 8)],
        ]
    )

    figures = next_day_pass_vs_scan(pg.dsn, repeats=3)

    assert figures["yesterday_deleted"] == 6 + 5
    assert (figures["keys"], figures["eligible"], figures["kept"]) == (4 + 3 + 7, 3, 7)
    assert figures["pass_ms"] > 0
    assert figures["scan_ms"] > 0
    assert len(figures["pass_ratios"]) == 3
    with pg.connect() as conn:
        left = conn.execute("SELECT count(*) FROM whatsapp_keys").fetchone()
    assert left == (4 + 3 + 7,)
