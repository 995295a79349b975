"""`keys-cleanup init-db` and `history`: the table created idempotently, the trend of the last
runs, one table's runs by default.
"""

from __future__ import annotations

import json

import pytest

from handler.cli import EXIT_BAD_INPUT, EXIT_OK, main
from tests.support.db import KeyRow, PgSchema
from tests.support.history import history_rows


@pytest.fixture
def history_env(history_table: PgSchema, monkeypatch: pytest.MonkeyPatch) -> PgSchema:
    history_table.use_env(monkeypatch)
    return history_table


def test_init_db_creates_history_table_idempotently(
    history_env: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init-db"]) == EXIT_OK
    assert "created" in capsys.readouterr().out
    assert main(["init-db"]) == EXIT_OK
    assert "already existed" in capsys.readouterr().out
    assert history_rows(history_env) == []


def test_history_command_prints_the_trend(
    history_env: PgSchema, capsys: pytest.CaptureFixture[str]
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


@pytest.fixture
def two_tables(pg: PgSchema, monkeypatch: pytest.MonkeyPatch) -> PgSchema:
    """Live runs recorded for whatsapp_keys (3 keys deleted) and keys_big (5 deleted)."""
    pg.use_env(monkeypatch)
    for table, old in (("whatsapp_keys", 3), ("keys_big", 5)):
        pg.create_reference_table(table)
        pg.insert_keys(
            [KeyRow("c", "app-state-sync-key", "A", 1)]
            + [KeyRow("c", "sender-key-memory", f"g{i}@g.us", 60) for i in range(old)],
            table=table,
        )
        monkeypatch.setenv("CLEANUP_TABLE", table)
        assert main(["--execute", "--json"]) == EXIT_OK
    return pg


def test_history_shows_the_configured_table_only(
    two_tables: PgSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    monkeypatch.setenv("CLEANUP_TABLE", "keys_big")
    assert main(["history", "--json"]) == EXIT_OK
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["table"], row["runs"], row["deleted"], row["keys"]) == (
        f"{two_tables.schema}.keys_big",
        1,
        5,
        1,
    )
    assert main(["history"]) == EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"table {two_tables.schema}.keys_big"
    assert out[1] == "keys 1 run: 1"
    monkeypatch.delenv("CLEANUP_TABLE")
    assert main(["history", "--json"]) == EXIT_OK
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["table"], row["deleted"]) == (f"{two_tables.schema}.whatsapp_keys", 3)


def test_history_all_tables_adds_a_table_column(
    two_tables: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["history", "--all-tables", "--json"]) == EXIT_OK
    rows = json.loads(capsys.readouterr().out)
    assert sorted((r["table"], r["deleted"]) for r in rows) == [
        (f"{two_tables.schema}.keys_big", 5),
        (f"{two_tables.schema}.whatsapp_keys", 3),
    ]
    assert main(["history", "--all-tables"]) == EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["day", "(UTC)", "table", "runs"]
    assert sum(f"{two_tables.schema}.keys_big " in line for line in out) == 1
    assert sum(f"{two_tables.schema}.whatsapp_keys " in line for line in out) == 1


def test_history_of_a_table_that_does_not_exist_names_it(
    two_tables: PgSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    monkeypatch.setenv("CLEANUP_TABLE", "keys_gone")
    assert main(["history"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "keys_gone" in err
    assert "--all-tables" in err


@pytest.mark.parametrize("days", ["0", "-3", "36501", "100000000", "3000000000"])
def test_history_days_out_of_range_is_bad_input_naming_the_flag(
    history_table: PgSchema,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    days: str,
) -> None:
    """100,000,000 days was a database error (interval out of range), exit 1."""
    history_table.use_env(monkeypatch)
    assert main(["init-db"]) == EXIT_OK
    capsys.readouterr()
    code = main(["history", "--days", days])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, f"exit {code}: {err}"
    assert "--days" in err
    assert err.count("\n") == 1


def test_history_days_at_the_bound_is_accepted(
    history_table: PgSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    history_table.use_env(monkeypatch)
    assert main(["init-db"]) == EXIT_OK
    assert main(["history", "--days", "36500"]) == EXIT_OK
