"""The Docker-free local invoke: the report alone on stdout, live events, bad events exit 2, text
output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.db import PgSchema
from tests.support.handler import FRESH, PROTECTED, REPO, SETTING_VARS, idents


def run_local(pg: PgSchema, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SETTING_VARS}
    clean.update(pg.env(**env))
    return subprocess.run(
        [sys.executable, "-m", "handler.app", *args],
        cwd=REPO,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_local_invoke_prints_only_the_report_on_stdout(mixed: PgSchema) -> None:
    proc = run_local(mixed, "--event", "events/dry-run.json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # stdout is the report and nothing else
    assert (report["dry_run"], report["eligible"], report["deleted"]) == (True, 70, 0)
    assert '"run finished"' in proc.stderr  # the logs went to stderr
    assert mixed.count() == 235


def test_local_invoke_runs_live_events(mixed: PgSchema) -> None:
    proc = run_local(mixed, "--event", "events/live.json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["deleted"] == 70
    assert mixed.key_set() == idents(PROTECTED + FRESH)


def test_local_invoke_bad_event_exits_2_naming_the_field(mixed: PgSchema, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"dry_run": false, "dryrun": true}')
    proc = run_local(mixed, "--event", str(bad))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "dryrun" in proc.stderr
    assert mixed.count() == 235


def test_local_invoke_text_output(mixed: PgSchema) -> None:
    proc = run_local(mixed, "--text")
    assert proc.returncode == 0, proc.stderr
    assert "DRY RUN" in proc.stdout


@pytest.mark.parametrize("timeout", ["nan", "inf", "-inf", "0", "-5", "901"])
def test_local_invoke_timeout_that_is_no_lambda_timeout_exits_2_naming_it(
    mixed: PgSchema, timeout: str
) -> None:
    """nan and inf were a bare Python error and exit 1."""
    proc = run_local(mixed, "--event", "events/live.json", "--timeout", timeout)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "--timeout" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert mixed.count() == 235
