"""Run history: one row per live run, duplicate deliveries, init-db and the trend command."""

from __future__ import annotations

import json

import pytest

from handler.cleanup import run_cleanup
from handler.cli import EXIT_BAD_INPUT, EXIT_OK, main
from handler.settings import Flags
from tests.conftest import KeyRow, PgSchema, baileys_creds

LIVE = Flags(dry_run=False)


@pytest.fixture
def seeded(pg: PgSchema) -> PgSchema:
    pg.create_reference_table()
    pg.add_auth({"c": baileys_creds(1)})
    pg.insert_keys([KeyRow("c", "session", f"k{i}", 10 * i + 5) for i in range(10)])
    return pg


def history_rows(pg: PgSchema) -> list[tuple[object, ...]]:
    with pg.connect() as conn:
        return conn.execute(
            "SELECT event_id, status, deleted, keys_before, keys_after, report->>'status' "
            "FROM keys_cleanup_runs ORDER BY id"
        ).fetchall()


def test_live_run_records_one_row_and_dry_run_none(seeded: PgSchema) -> None:
    run_cleanup(seeded.settings(), Flags())
    with seeded.connect() as conn:
        assert conn.execute("SELECT to_regclass('keys_cleanup_runs')").fetchone() == (None,)
    run_cleanup(seeded.settings(), LIVE, event_id="evt-1")
    assert history_rows(seeded) == [("evt-1", "completed", 7, 10, 3, "completed")]


def test_history_can_be_turned_off(seeded: PgSchema) -> None:
    run_cleanup(seeded.settings(CLEANUP_HISTORY="false"), LIVE, event_id="evt-1")
    with seeded.connect() as conn:
        assert conn.execute("SELECT to_regclass('keys_cleanup_runs')").fetchone() == (None,)


def test_completed_event_is_acknowledged_not_rerun(seeded: PgSchema) -> None:
    first = run_cleanup(seeded.settings(), LIVE, event_id="evt-dup")
    assert first.deleted == 7
    seeded.insert_keys([KeyRow("c", "session", "late-old", 99)])

    again = run_cleanup(seeded.settings(), LIVE, event_id="evt-dup")
    assert again.status == "skipped"
    assert again.duplicate
    assert again.deleted == 0
    assert ("c", "session", "late-old") in seeded.key_set()  # nothing ran
    assert len(history_rows(seeded)) == 1

    other = run_cleanup(seeded.settings(), LIVE, event_id="evt-next")
    assert other.deleted == 1
    assert not other.duplicate


def test_aborted_event_may_run_again(seeded: PgSchema) -> None:
    settings = seeded.settings(CLEANUP_GUARD_MIN_KEYS="1", CLEANUP_MAX_DELETE_FRACTION="0.1")
    assert run_cleanup(settings, LIVE, event_id="evt-a").status == "aborted"
    forced = run_cleanup(settings, Flags(dry_run=False, force=True), event_id="evt-a")
    assert forced.status == "completed"
    assert [r[1] for r in history_rows(seeded)] == ["aborted", "completed"]


def test_role_without_create_runs_and_notes_missing_history(seeded: PgSchema) -> None:
    role = f"{seeded.schema}_ro"
    with seeded.connect() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA {seeded.schema} TO {role}")
        conn.execute(f"GRANT SELECT, DELETE ON whatsapp_keys TO {role}")
    try:
        settings = seeded.settings(DATABASE_URL=seeded.dsn + f" user={role}")
        report = run_cleanup(settings, LIVE, event_id="evt-ro")
        assert report.status == "completed"
        assert report.deleted == 7
        assert any("run history not recorded" in note for note in report.notes)
    finally:
        with seeded.connect() as conn:
            conn.execute(f"REVOKE ALL ON whatsapp_keys FROM {role}")
            conn.execute(f"REVOKE ALL ON SCHEMA {seeded.schema} FROM {role}")
            conn.execute(f"DROP ROLE {role}")


@pytest.fixture
def cli_env(seeded: PgSchema, monkeypatch: pytest.MonkeyPatch) -> PgSchema:
    seeded.use_env(monkeypatch)
    return seeded


def test_init_db_creates_history_table_idempotently(
    cli_env: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init-db"]) == EXIT_OK
    assert "created" in capsys.readouterr().out
    assert main(["init-db"]) == EXIT_OK
    assert "already existed" in capsys.readouterr().out
    assert history_rows(cli_env) == []


def test_history_command_prints_the_trend(
    cli_env: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history"]) == EXIT_BAD_INPUT
    assert "init-db" in capsys.readouterr().err
    assert main(["--execute", "--json"]) == EXIT_OK
    capsys.readouterr()

    assert main(["history"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "day (UTC)" in out
    assert "completed" in out

    assert main(["history", "--json"]) == EXIT_OK
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1
    assert rows[0]["runs"] == 1
    assert rows[0]["deleted"] == 7
    assert rows[0]["keys"] == 3
    assert rows[0]["statuses"] == ["completed"]


# --- the trend the reports carry -----------------------------------------------------------------


def test_reports_carry_keys_and_size_of_the_last_seven_runs(seeded: PgSchema) -> None:
    assert run_cleanup(seeded.settings(), Flags()).trend == []  # no history yet

    for i in range(8):
        seeded.insert_keys(
            [KeyRow("c", "session", f"old{i}", 40), KeyRow("c", "pre-key", f"n{i}", 1)]
        )
        report = run_cleanup(seeded.settings(), LIVE)
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

    dry = run_cleanup(seeded.settings(), Flags())  # a dry run shows the live runs' trend
    assert [p.keys for p in dry.trend] == [p.keys for p in report.trend]


def test_trend_is_left_out_when_history_is_off(seeded: PgSchema) -> None:
    run_cleanup(seeded.settings(), LIVE)
    assert run_cleanup(seeded.settings(CLEANUP_HISTORY="false"), Flags()).trend == []


def test_unreadable_history_is_a_note_not_a_failure(seeded: PgSchema) -> None:
    # A history table of another shape: recording and reading it both fail.
    with seeded.connect() as conn:
        conn.execute("CREATE TABLE keys_cleanup_runs (id int)")

    dry = run_cleanup(seeded.settings(), Flags())
    assert dry.status == "completed"
    assert dry.trend == []
    assert dry.notes == ["run history not read (UndefinedColumn); no trend this run"]

    live = run_cleanup(seeded.settings(), LIVE)
    assert live.status == "completed"
    assert live.deleted == 7
    assert live.reason is None
    assert any("run history not recorded" in note for note in live.notes)
    assert any("run history not read (UndefinedColumn)" in note for note in live.notes)
