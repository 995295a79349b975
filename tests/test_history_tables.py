"""`keys-cleanup history` and `init-db` (issue 17 items 10 and 11): the run's own URL check,
and one table's runs by default."""

from __future__ import annotations

import json

import pytest

from handler.cli import EXIT_BAD_INPUT, EXIT_OK, main
from tests.conftest import KeyRow, PgSchema

BROKEN_URL = "postgresql://cleanup:s3cr@t-fragment-xyz@db.example.invalid:5432/keys"


@pytest.mark.parametrize("command", ["history", "init-db"])
@pytest.mark.parametrize("where", ["env", "flag"])
def test_admin_commands_refuse_a_raw_at_sign_without_printing_any_fragment(
    pg: PgSchema,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    where: str,
) -> None:
    pg.use_env(monkeypatch)
    argv = [command]
    if where == "env":
        monkeypatch.setenv("DATABASE_URL", BROKEN_URL)
    else:
        argv += ["--database-url", BROKEN_URL]
    assert main(argv) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert "percent-encode" in captured.err
    for text in (captured.out, captured.err):
        assert "fragment" not in text
        assert "example.invalid" not in text


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
