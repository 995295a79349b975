"""A misspelt setting: an unknown CLEANUP_* variable, or a key type Baileys does not write in
CLEANUP_TYPE_RETENTION_DAYS or CLEANUP_PROTECTED_KEY_TYPES. A dry run warns, naming the closest
setting or type; a live run (CLI --execute, the Lambda handler, the local runner) refuses before
anything is deleted, --force or not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import cast

import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext

from handler.app import lambda_handler
from handler.cleanup import run_cleanup
from handler.cli import EXIT_BAD_INPUT, main
from handler.local import LocalContext
from handler.settings import ConfigError, Flags, Settings
from tests.support.db import KeyRow, PgSchema, baileys_creds
from tests.support.encoded import Layout, add_creds, create, insert, keys_left
from tests.support.handler import REPO, SETTING_VARS
from tests.support.notify import capture_logs, find_log
from tests.support.tables import DRY, FORCE, LIVE, kinds


def test_a_misspelt_setting_is_warned_about_naming_the_closest_one(app_state: PgSchema) -> None:
    env = app_state.env(CLEANUP_RETENTON_DAYS="60")
    report = run_cleanup(Settings.from_env(env), DRY)
    assert any(
        "unknown setting CLEANUP_RETENTON_DAYS ignored (did you mean CLEANUP_RETENTION_DAYS?)"
        in note
        and "a live run refuses" in note
        for note in report.notes
    )


def test_a_misspelt_setting_is_logged_by_the_lambda_handler(
    app_state: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_state.use_env(monkeypatch, CLEANUP_RETENTON_DAYS="60")
    with capture_logs() as lines:
        lambda_handler({}, cast(LambdaContext, LocalContext()))
    (warning,) = find_log(lines(), "setting ignored")
    assert warning["level"] == "WARNING"
    assert "CLEANUP_RETENTION_DAYS" in warning["detail"]


# Each is meant to keep the 60-day-old sessions, and each is misspelt: (env, what the one line
# names: the misspelt name and the closest known one).
MISSPELT = {
    "variable-name": (
        {"CLEANUP_RETENTON_DAYS": "90"},
        ("CLEANUP_RETENTON_DAYS", "CLEANUP_RETENTION_DAYS"),
    ),
    "type-retention": (
        {"CLEANUP_TYPE_RETENTION_DAYS": "sesion=90"},
        ("CLEANUP_TYPE_RETENTION_DAYS", "'sesion'", "'session'"),
    ),
    "protected-type": (
        {"CLEANUP_PROTECTED_KEY_TYPES": "sessions"},
        ("CLEANUP_PROTECTED_KEY_TYPES", "'sessions'", "'session'"),
    ),
}


@pytest.mark.parametrize(("env", "named"), MISSPELT.values(), ids=MISSPELT.keys())
@pytest.mark.parametrize("force", [False, True], ids=["unforced", "forced"])
def test_a_misspelt_setting_meant_to_keep_keys_stops_a_live_run_before_it_deletes(
    app_state: PgSchema,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    named: tuple[str, ...],
    force: bool,
) -> None:
    app_state.use_env(monkeypatch, **env)
    before = app_state.key_set()
    code = main(["--execute", *(["--force"] if force else [])])
    err = capsys.readouterr().err
    assert app_state.key_set() == before, f"exit {code}: keys deleted"
    assert code == EXIT_BAD_INPUT, err
    assert err.count("\n") == 1, err
    for name in named:
        assert name in err, err


@pytest.mark.parametrize(("env", "named"), MISSPELT.values(), ids=MISSPELT.keys())
def test_a_dry_run_with_a_misspelt_setting_goes_on_and_says_a_live_run_refuses(
    app_state: PgSchema,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    named: tuple[str, ...],
) -> None:
    app_state.use_env(monkeypatch, **env)
    code = main([])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "a live run refuses" in out, out
    for name in named:
        assert name in out, out


def test_a_misspelt_variable_fails_a_live_lambda_invocation_and_deletes_nothing(
    app_state: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_state.use_env(monkeypatch, CLEANUP_RETENTON_DAYS="90")
    before = app_state.key_set()
    with pytest.raises(ConfigError, match=r"CLEANUP_RETENTON_DAYS.*CLEANUP_RETENTION_DAYS"):
        lambda_handler({"dry_run": False, "force": True}, cast(LambdaContext, LocalContext()))
    assert app_state.key_set() == before


def test_the_local_runner_refuses_a_misspelt_variable_in_a_live_run(app_state: PgSchema) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in SETTING_VARS}
    clean.update(app_state.env(CLEANUP_RETENTON_DAYS="90"))
    before = app_state.key_set()
    proc = subprocess.run(
        [sys.executable, "-m", "handler.app", "--event", "events/live.json"],
        cwd=REPO,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "CLEANUP_RETENTON_DAYS" in proc.stderr
    assert app_state.key_set() == before


def test_the_refusal_never_echoes_the_misspelt_variables_value(
    app_state: PgSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    app_state.use_env(monkeypatch, CLEANUP_DATABSE_PASSWORD="Canary5e2f9")
    assert main(["--execute"]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert "CLEANUP_DATABSE_PASSWORD" in captured.err
    assert "Canary5e2f9" not in captured.err + captured.out


def test_a_baileys_type_the_table_does_not_hold_yet_does_not_refuse(app_state: PgSchema) -> None:
    """No identity-key or pre-key rows in this table: the settings are right, only early."""
    settings = app_state.settings(
        CLEANUP_TYPE_RETENTION_DAYS="identity-key=90", CLEANUP_PROTECTED_KEY_TYPES="pre-key"
    )
    report = run_cleanup(settings, LIVE)
    assert report.status == "completed"
    assert kinds(app_state)["session"] == 3  # the three 60-day-old sessions went


def test_a_type_the_table_holds_passes_even_if_baileys_does_not_write_it(
    app_state: PgSchema,
) -> None:
    """An application's own type beside Baileys' is not a typo: it matches keys."""
    app_state.insert_keys([KeyRow("c", "app-own", "x", 60)])
    report = run_cleanup(app_state.settings(CLEANUP_PROTECTED_KEY_TYPES="app-own"), FORCE)
    assert report.status == "completed"
    assert kinds(app_state)["app-own"] == 1


def test_a_misspelt_type_in_the_encoded_layout_stops_a_live_run(pg: PgSchema) -> None:
    """Encoded, the types are parsed as Baileys spells them: `pre-keys` can match nothing."""
    layout = Layout(timestamp=True)
    create(pg, layout)
    add_creds(pg, layout, {"s": baileys_creds(10)})
    insert(pg, layout, "s", ["pre-key-1", "session-5511999.0"], age_days=60)
    before = keys_left(pg, layout)
    settings = pg.settings(**layout.env(CLEANUP_PROTECTED_KEY_TYPES="pre-keys"))
    with pytest.raises(ConfigError, match=r"CLEANUP_PROTECTED_KEY_TYPES.*'pre-keys'.*'pre-key'"):
        run_cleanup(settings, Flags(dry_run=False, force=True))
    assert keys_left(pg, layout) == before
