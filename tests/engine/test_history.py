"""Run history: one row per live run, the trend the reports carry, and history the role cannot
create or read is a note.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from handler import cleanup, db
from handler.cleanup import CleanupError, run_cleanup
from handler.deleteloop import Progress
from handler.settings import ConfigError, Flags, Settings
from tests.support.db import KeyRow, PgSchema, baileys_creds
from tests.support.history import history_rows, init_history
from tests.support.tables import FORCE

LIVE = Flags(dry_run=False)


def test_live_run_records_one_row_and_dry_run_none(history_table: PgSchema) -> None:
    run_cleanup(history_table.settings(), Flags())
    with history_table.connect() as conn:
        assert conn.execute("SELECT to_regclass('keys_cleanup_runs')").fetchone() == (None,)
    run_cleanup(history_table.settings(), LIVE, event_id="evt-1")
    assert history_rows(history_table) == [("evt-1", "completed", 7, 10, 3, "completed")]


def test_history_can_be_turned_off(history_table: PgSchema) -> None:
    run_cleanup(history_table.settings(CLEANUP_HISTORY="false"), LIVE, event_id="evt-1")
    with history_table.connect() as conn:
        assert conn.execute("SELECT to_regclass('keys_cleanup_runs')").fetchone() == (None,)


def test_completed_event_is_acknowledged_not_rerun(history_table: PgSchema) -> None:
    first = run_cleanup(history_table.settings(), LIVE, event_id="evt-dup")
    assert first.deleted == 7
    history_table.insert_keys([KeyRow("c", "session", "late-old", 99)])

    again = run_cleanup(history_table.settings(), LIVE, event_id="evt-dup")
    assert again.status == "skipped"
    assert again.duplicate
    assert again.deleted == 0
    assert ("c", "session", "late-old") in history_table.key_set()  # nothing ran
    assert len(history_rows(history_table)) == 1

    other = run_cleanup(history_table.settings(), LIVE, event_id="evt-next")
    assert other.deleted == 1
    assert not other.duplicate


def test_aborted_event_may_run_again(history_table: PgSchema) -> None:
    settings = history_table.settings(CLEANUP_GUARD_MIN_KEYS="1", CLEANUP_MAX_DELETE_FRACTION="0.1")
    assert run_cleanup(settings, LIVE, event_id="evt-a").status == "aborted"
    forced = run_cleanup(settings, Flags(dry_run=False, force=True), event_id="evt-a")
    assert forced.status == "completed"
    assert [r[1] for r in history_rows(history_table)] == ["aborted", "completed"]


def test_role_without_create_runs_and_notes_missing_history(history_table: PgSchema) -> None:
    role = f"{history_table.schema}_ro"
    with history_table.connect() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA {history_table.schema} TO {role}")
        conn.execute(f"GRANT SELECT, DELETE ON whatsapp_keys TO {role}")
        conn.execute(f"GRANT SELECT ON whatsapp_auth TO {role}")  # the creds: sessions go
    try:
        settings = history_table.settings(DATABASE_URL=history_table.dsn + f" user={role}")
        report = run_cleanup(settings, LIVE, event_id="evt-ro")
        assert report.status == "completed"
        assert report.deleted == 7
        assert any("run history not recorded" in note for note in report.notes)
    finally:
        with history_table.connect() as conn:
            conn.execute(f"REVOKE ALL ON whatsapp_keys FROM {role}")
            conn.execute(f"REVOKE ALL ON whatsapp_auth FROM {role}")
            conn.execute(f"REVOKE ALL ON SCHEMA {history_table.schema} FROM {role}")
            conn.execute(f"DROP ROLE {role}")


def test_reports_carry_keys_and_size_of_the_last_seven_runs(history_table: PgSchema) -> None:
    assert run_cleanup(history_table.settings(), Flags()).trend == []  # no history yet

    for i in range(8):
        history_table.insert_keys(
            [KeyRow("c", "session", f"old{i}", 40), KeyRow("c", "pre-key", f"n{i}", 1)]
        )
        report = run_cleanup(history_table.settings(), LIVE)
    assert len(report.trend) == 7  # this run included, the first one left out
    # Each run adds two keys and deletes the old one: 4, 5, ... 11 keys after runs 1 to 8.
    assert [p.keys for p in report.trend] == list(range(5, 12))  # oldest first
    assert report.after is not None
    assert (report.trend[-1].keys, report.trend[-1].total_bytes) == (
        report.after.keys,
        report.after.total_bytes,
    )
    assert all(p.total_bytes > 0 for p in report.trend)
    times = [p.finished_at for p in report.trend]
    assert times == sorted(times)

    dry = run_cleanup(history_table.settings(), Flags())  # a dry run shows the live runs' trend
    assert [p.keys for p in dry.trend] == [p.keys for p in report.trend]


def test_trend_is_left_out_when_history_is_off(history_table: PgSchema) -> None:
    run_cleanup(history_table.settings(), LIVE)
    assert run_cleanup(history_table.settings(CLEANUP_HISTORY="false"), Flags()).trend == []


def test_unreadable_history_is_a_note_not_a_failure(history_table: PgSchema) -> None:
    # A history table of another shape: recording and reading it both fail.
    with history_table.connect() as conn:
        conn.execute("CREATE TABLE keys_cleanup_runs (id int)")

    dry = run_cleanup(history_table.settings(), Flags())
    assert dry.status == "completed"
    assert dry.trend == []
    assert dry.notes == ["run history not read (UndefinedColumn); no trend this run"]

    live = run_cleanup(history_table.settings(), LIVE)
    assert live.status == "completed"
    assert live.deleted == 7
    assert live.reason is None
    assert any("run history not recorded" in note for note in live.notes)
    assert any("run history not read (UndefinedColumn)" in note for note in live.notes)


@pytest.fixture
def no_history_role(app_state: PgSchema) -> Iterator[Settings]:
    """A role that may delete keys but may not read the run history (made by the owner)."""
    init_history(app_state)
    with app_state.role("nohist", "GRANT SELECT, DELETE ON whatsapp_keys TO {role}") as role:
        yield app_state.settings(DATABASE_URL=app_state.dsn + f" user={role}")


def test_unreadable_history_is_a_note_and_the_scheduled_run_goes_on(
    app_state: PgSchema, no_history_role: Settings
) -> None:
    report = run_cleanup(no_history_role, FORCE, event_id="evt-1")
    assert report.status == "completed"
    assert report.deleted == 3
    assert any("run history not readable (InsufficientPrivilege)" in n for n in report.notes)
    assert any("run history not recorded" in n for n in report.notes)


BIG = {"v": "x" * 300}  # ~20 rows a page: batches of a few pages each delete a few rows
SMALL_BATCHES = {"CLEANUP_GUARD_MIN_KEYS": "1000000", "CLEANUP_BATCH_SIZE": "40"}


def _big_table(pg: PgSchema) -> None:
    pg.create_reference_table()
    pg.insert_keys([KeyRow("c0", "session", f"k{i}", (40, 5)[i % 2], BIG) for i in range(600)])


def _kill_after_batch(pg: PgSchema, n: int, deleted: list[int]) -> Callable[[Progress], None]:
    def progress(p: Progress) -> None:
        deleted.append(p.deleted)
        if p.batches == n:
            with pg.connect() as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pg.cleanup_backend(),))

    return progress


def test_a_failed_live_run_adds_a_failed_row_with_the_keys_it_deleted(pg: PgSchema) -> None:
    _big_table(pg)
    deleted: list[int] = []
    with pytest.raises(CleanupError, match="AdminShutdown"):
        run_cleanup(pg.settings(**SMALL_BATCHES), LIVE, progress=_kill_after_batch(pg, 2, deleted))
    assert 0 < deleted[-1] == 600 - pg.count() < 300
    with pg.connect() as conn:
        row = conn.execute(
            "SELECT status, deleted, eligible, keys_before, report FROM keys_cleanup_runs"
        ).fetchone()
        assert row is not None
        status, recorded, eligible, keys_before, report = row
        (day,) = db.history_trend(conn, None, "keys_cleanup_runs", 1, None)
    assert (status, recorded, eligible, keys_before) == ("failed", deleted[-1], 300, None)
    # The error's type only: its message could quote what the server said.
    assert report["error"] == "AdminShutdown"
    assert "terminat" not in json.dumps(report).lower()
    assert report["drain"]["runs"] == 1
    assert report["drain"]["deleted"] == deleted[-1]
    # `keys-cleanup history`: the day shows the failed status and counts its deleted keys.
    assert (day.runs, day.statuses, day.deleted) == (1, "failed", deleted[-1])


def test_a_run_that_raises_on_a_working_connection_records_its_row_there(
    history_table: PgSchema,
) -> None:
    def boom(_: Progress) -> None:
        raise RuntimeError("a bug, not the database")

    with pytest.raises(RuntimeError, match="a bug"):
        run_cleanup(history_table.settings(), LIVE, progress=boom, event_id="evt-1")
    # The batch committed before the callback raised: its 7 keys are counted.
    assert history_rows(history_table) == [("evt-1", "failed", 7, None, None, "failed")]
    # The lock was released: the next run goes on, and its drain counts the failed run.
    report = run_cleanup(history_table.settings(), LIVE)
    assert report.status == "completed"
    assert report.drain is not None
    assert (report.drain.runs, report.drain.deleted) == (2, 7)


def test_a_failed_run_whose_row_cannot_be_recorded_keeps_its_own_error(
    pg: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    _big_table(pg)
    deleted: list[int] = []
    kill = _kill_after_batch(pg, 1, deleted)

    def kill_and_refuse_connections(p: Progress) -> None:
        kill(p)

        def refuse(*_: object, **__: object) -> db.Conn:
            raise db.DatabaseError("connection refused")

        monkeypatch.setattr(db, "connect", refuse)

    with pytest.raises(CleanupError) as raised:
        run_cleanup(pg.settings(**SMALL_BATCHES), LIVE, progress=kill_and_refuse_connections)
    message = str(raised.value)
    assert message.startswith("database error (AdminShutdown)")
    assert "run history not recorded for this failed run (connection refused)" in message
    with pg.connect() as conn:
        assert conn.execute("SELECT to_regclass('keys_cleanup_runs')").fetchone() == (None,)


def test_the_days_keys_and_backlog_are_the_last_measured_runs_not_a_failed_ones(
    history_table: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = run_cleanup(history_table.settings(), LIVE)
    assert done.after is not None

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("after the loop")

    monkeypatch.setattr(cleanup, "after_stats", broken)
    with pytest.raises(RuntimeError):
        run_cleanup(history_table.settings(), LIVE)
    with history_table.connect() as conn:
        (day,) = db.history_trend(conn, None, "keys_cleanup_runs", 1, None)
    assert (day.runs, day.statuses, day.deleted) == (2, "completed,failed", 7)
    assert (day.keys, day.total_bytes, day.remaining) == (
        done.after.keys,
        done.after.total_bytes,
        0,
    )


def test_a_live_run_refused_for_a_misspelt_type_adds_no_failed_history_row(pg: PgSchema) -> None:
    """operations.md (run history): 'A run that fails before it holds the lock (bad settings,
    the database unreachable, the table not found) adds no row', and safety.md: a misspelt type
    'stops a live run ... before anything is deleted' like an unknown variable (which adds none).
    The type check runs in the measuring pass, under the lock, so _record_failure writes a
    `failed` row for a refused setting: the history and its daily trend count a failed run
    (and it breaks the stalled-runs chain) for what is a bad setting."""
    pg.create_reference_table()
    pg.add_auth({"a": baileys_creds(10)})
    with pg.connect() as conn:
        conn.execute(
            "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at) "
            "SELECT 'a', 'session', g::text || '.0', '{}'::jsonb, now() - interval '60 days' "
            "FROM generate_series(1, 10) g"
        )
    settings = pg.settings(CLEANUP_TYPE_RETENTION_DAYS="sesion=90")
    with pytest.raises(ConfigError, match="sesion"):
        run_cleanup(settings, LIVE)
    with pg.connect() as conn:
        exists = conn.execute("SELECT to_regclass('keys_cleanup_runs') IS NOT NULL").fetchone()
        rows = (
            conn.execute("SELECT status, report->>'error' FROM keys_cleanup_runs").fetchall()
            if exists and exists[0]
            else []
        )
    assert rows == [], rows
