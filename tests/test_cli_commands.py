"""The CLI as a new operator uses it: `keys-cleanup run|init-db|history`, with today's flags
still working, and the same database secret as the function (DATABASE_SECRET_ARN), read from a
moto Secrets Manager and connecting to the real test PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from conftest import KeyRow, PgSchema
from moto import mock_aws
from psycopg.conninfo import conninfo_to_dict

from handler import cli
from handler.notify import secrets as notify_secrets
from handler.secrets import PROVIDERS, conninfo_from_secret

REGION = "eu-west-1"
PASSWORD = "pa55 'w0rd' host=evil \\ canary"  # trust auth ignores it; it must never show
KEYS = [KeyRow("c1", "session", f"old{i}", 60) for i in range(12)]
KEYS += [KeyRow("c1", "session", f"new{i}", 1) for i in range(30)]


@pytest.fixture
def seeded(pg: PgSchema, monkeypatch: pytest.MonkeyPatch) -> PgSchema:
    pg.create_reference_table()
    pg.insert_keys(KEYS)
    pg.use_env(monkeypatch)
    return pg


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- subcommands ----------------------------------------------------------------------------------


def test_run_is_the_default_command_and_takes_the_same_flags(
    seeded: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    code, plain, _ = run_cli(capsys, "--json")
    assert code == 0
    code, explicit, _ = run_cli(capsys, "run", "--json")
    assert code == 0
    assert json.loads(plain)["eligible"] == json.loads(explicit)["eligible"] == 12
    assert seeded.count() == len(KEYS)
    code, _, _ = run_cli(capsys, "run", "--execute", "--no-progress")
    assert code == 0
    assert seeded.count() == len(KEYS) - 12


def test_run_refuses_another_subcommand_as_its_argument(
    seeded: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "init-db"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: init-db" in capsys.readouterr().err


def test_init_db_and_history_are_subcommands(
    seeded: PgSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLEANUP_HISTORY_TABLE", f"{seeded.schema}.keys_cleanup_runs")
    code, out, _ = run_cli(capsys, "init-db")
    assert (code, out) == (0, f"run-history table {seeded.schema}.keys_cleanup_runs: created\n")
    assert run_cli(capsys, "run", "--execute", "--no-progress")[0] == 0
    code, out, _ = run_cli(capsys, "history", "--json")
    assert code == 0
    (day,) = json.loads(out)
    assert (day["runs"], day["deleted"]) == (1, 12)


# --- the function's secret ------------------------------------------------------------------------


@pytest.fixture
def secret_arn(seeded: PgSchema, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An RDS-style secret for the test server, and the environment of the function: only
    DATABASE_SECRET_ARN, no DATABASE_URL."""
    for name, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = conninfo_to_dict(seeded.server_dsn)
    secret: dict[str, Any] = {
        "engine": "postgres",
        "host": server.get("host", "127.0.0.1"),
        "username": server.get("user", "postgres"),
        "password": PASSWORD,
        "dbname": server["dbname"],
        "sslmode": "disable",
    }
    if "port" in server:
        secret["port"] = int(str(server["port"]))
    PROVIDERS.reset()
    with mock_aws():
        client = boto3.client("secretsmanager", region_name=REGION)
        arn = client.create_secret(Name="db", SecretString=json.dumps(secret))["ARN"]
        monkeypatch.delenv("DATABASE_URL")
        monkeypatch.setenv("DATABASE_SECRET_ARN", arn)
        monkeypatch.setenv("CLEANUP_TABLE", f"{seeded.schema}.whatsapp_keys")
        monkeypatch.setenv("CLEANUP_AUTH_TABLE", f"{seeded.schema}.whatsapp_auth")
        monkeypatch.setenv("CLEANUP_HISTORY_TABLE", f"{seeded.schema}.keys_cleanup_runs")
        yield arn
    PROVIDERS.reset()


def test_the_cli_connects_with_the_functions_secret(
    secret_arn: str, seeded: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "--json")
    assert code == 0, err
    assert json.loads(out)["eligible"] == 12
    code, out, err = run_cli(capsys, "init-db")
    assert (code, err) == (0, "")
    assert "created" in out
    code, out, err = run_cli(capsys, "run", "--execute", "--no-progress")
    assert code == 0, err
    assert seeded.count() == len(KEYS) - 12
    code, out, err = run_cli(capsys, "history")
    assert code == 0, err
    assert PASSWORD not in out + err


def test_an_unreadable_secret_fails_naming_the_setting(
    secret_arn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_SECRET_ARN", secret_arn.replace(":secret:db", ":secret:nope"))
    for argv in ([], ["init-db"], ["history"]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 1, argv
        assert err.startswith("keys-cleanup: error: DATABASE_SECRET_ARN: could not read")
        assert PASSWORD not in out + err


def test_without_any_database_setting_the_cli_says_which_to_set(
    seeded: PgSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL")
    for argv in ([], ["init-db"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2
        assert "DATABASE_URL or DATABASE_SECRET_ARN" in err


def test_the_password_of_a_conninfo_from_the_secret_is_redacted() -> None:
    conninfo = conninfo_from_secret(
        {"host": "db.internal", "username": "cleanup", "password": PASSWORD, "dbname": "app"}
    ).get_secret_value()
    notify_secrets.register_conninfo(conninfo)
    assert PASSWORD not in notify_secrets.redact(f"connection failed; password was {PASSWORD}")
