"""An unknown CLEANUP_* variable is warned about, naming the closest setting, by the CLI and the
Lambda handler.
"""

from __future__ import annotations

from typing import cast

import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext

from handler.app import lambda_handler
from handler.cleanup import run_cleanup
from handler.local import LocalContext
from handler.settings import Settings
from tests.support.db import PgSchema
from tests.support.notify import capture_logs, find_log
from tests.support.tables import DRY


def test_a_misspelt_setting_is_warned_about_naming_the_closest_one(app_state: PgSchema) -> None:
    env = app_state.env(CLEANUP_RETENTON_DAYS="60")
    report = run_cleanup(Settings.from_env(env), DRY)
    assert any(
        "unknown setting CLEANUP_RETENTON_DAYS ignored (did you mean CLEANUP_RETENTION_DAYS?)"
        in note
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
