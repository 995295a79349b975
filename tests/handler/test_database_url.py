"""A password with a raw `@` in the database URL is refused before connecting, by every entry
point, and no fragment of it appears anywhere.
"""

from __future__ import annotations

from typing import cast

import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext

from handler.app import lambda_handler
from handler.cli import EXIT_BAD_INPUT, main
from handler.local import LocalContext
from handler.settings import ConfigError
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
