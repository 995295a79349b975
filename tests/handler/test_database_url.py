"""A password with a raw `@` in the database URL is refused before connecting, by every entry
point, and no fragment of it appears anywhere.
"""

from __future__ import annotations

from typing import cast

import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext
from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr

from handler import db
from handler.app import lambda_handler
from handler.cleanup import open_database
from handler.cli import EXIT_BAD_INPUT, main
from handler.errors import DatabaseError
from handler.local import LocalContext
from handler.settings import ConfigError, Settings
from tests.support.db import PgSchema

BROKEN_URL = "postgresql://cleanup:s3cr@t-fragment-xyz@db.example.invalid:5432/keys"


def test_a_password_with_a_raw_at_sign_is_refused_before_connecting_without_leaking(
    cli_env: PgSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", BROKEN_URL)
    assert main(["--execute", "--force"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "percent-encode" in err
    assert err.count("\n") == 1
    for fragment in ("t-fragment-xyz", "s3cr", "db.example.invalid"):
        assert fragment not in err


def test_a_raw_at_sign_in_database_url_flag_is_refused_too(
    cli_env: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--database-url", BROKEN_URL]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "percent-encode" in err
    assert "fragment" not in err


def test_a_raw_at_sign_fails_the_lambda_invocation_without_the_fragment_anywhere(
    cli_env: PgSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", BROKEN_URL)
    with pytest.raises(ConfigError) as caught:
        lambda_handler({"dry_run": False}, cast(LambdaContext, LocalContext()))
    captured = capsys.readouterr()
    for text in (str(caught.value), captured.out, captured.err):
        assert "fragment" not in text
    assert "percent-encode" in str(caught.value)


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


# libpq cannot parse these, and its parse error quotes the token it stopped at: the password.
CANARY = "PwCanary7b1e9d"
UNPARSABLE = {
    "url-raw-percent": f"postgresql://cleanup:ab%zz{CANARY}@127.0.0.1:5432/app",
    "conninfo-space": f"host=127.0.0.1 port=5432 user=cleanup password=ab {CANARY} dbname=app",
    "conninfo-open-quote": f"host=127.0.0.1 user=cleanup password='{CANARY} dbname=app",
}


@pytest.mark.parametrize("where", ["env", "flag"])
@pytest.mark.parametrize("dsn", UNPARSABLE.values(), ids=UNPARSABLE.keys())
def test_a_database_url_libpq_cannot_parse_is_refused_without_any_of_it(
    cli_env: PgSchema,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    dsn: str,
    where: str,
) -> None:
    argv = ["--execute", "--force"]
    if where == "env":
        monkeypatch.setenv("DATABASE_URL", dsn)
    else:
        argv += ["--database-url", dsn]
    before = cli_env.key_set()
    assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert CANARY not in err
    assert "DATABASE_URL cannot be parsed" in err
    assert err.count("\n") == 1
    assert cli_env.key_set() == before


def _pg_variables_naming(pg: PgSchema, monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq's PG* variables name the test schema: where an empty conninfo would connect."""
    parts = conninfo_to_dict(pg.dsn)
    for name, var in (
        ("host", "PGHOST"),
        ("port", "PGPORT"),
        ("user", "PGUSER"),
        ("dbname", "PGDATABASE"),
        ("options", "PGOPTIONS"),
    ):
        if parts.get(name) is not None:
            monkeypatch.setenv(var, str(parts[name]))


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--execute"], id="run"),
        pytest.param(["run", "--execute"], id="run-subcommand"),
        pytest.param(["init-db"], id="init-db"),
        pytest.param(["history"], id="history"),
    ],
)
@pytest.mark.parametrize("blank", ["", "  "], ids=["empty", "spaces"])
def test_a_blank_database_url_flag_is_refused_not_read_as_libpq_defaults(
    cli_env: PgSchema,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    blank: str,
) -> None:
    """`--database-url "$PROD_URL"` with PROD_URL unset: the empty flag won over DATABASE_URL
    and libpq connected where the PG* variables (here: the test schema) said, and deleted."""
    _pg_variables_naming(cli_env, monkeypatch)
    monkeypatch.setenv("DATABASE_URL", "postgresql://cleanup@127.0.0.1:1/app")
    before = cli_env.key_set()
    code = main([*argv, "--database-url", blank])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, f"exit {code}: {err}"
    assert "--database-url" in err
    assert err.count("\n") == 1
    assert cli_env.key_set() == before


@pytest.mark.parametrize("dsn", UNPARSABLE.values(), ids=UNPARSABLE.keys())
def test_an_unparsable_database_url_fails_the_lambda_invocation_without_any_of_it(
    cli_env: PgSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], dsn: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", dsn)
    with pytest.raises(ConfigError) as caught:
        lambda_handler({"dry_run": False}, cast(LambdaContext, LocalContext()))
    captured = capsys.readouterr()
    for text in (str(caught.value), captured.out, captured.err):
        assert CANARY not in text
    assert "DATABASE_URL cannot be parsed" in str(caught.value)


def test_the_connection_never_quotes_a_dsn_it_cannot_parse() -> None:
    """db.connect is also reached without the settings' check (tests, the bench, the demo)."""
    with pytest.raises(DatabaseError) as caught:
        db.connect(UNPARSABLE["conninfo-space"], connect_timeout_s=2)
    assert CANARY not in str(caught.value)


def test_open_database_refuses_an_empty_dsn(
    cli_env: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    _pg_variables_naming(cli_env, monkeypatch)
    settings = Settings.from_env().model_copy(update={"database_url": SecretStr(" ")})
    with pytest.raises(ConfigError, match="empty"):
        open_database(settings)
