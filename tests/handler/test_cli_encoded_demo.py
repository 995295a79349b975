"""`keys-cleanup --demo --layout encoded`: an embedded PostgreSQL seeded with an encoded key
table (keys as "<type>-<id>", creds rows beside them, no timestamp), cleaned live."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from handler.cli import EXIT_OK, main
from handler.demo import ENCODED_DEMO_SESSIONS


def test_the_encoded_demo_takes_the_prekeys_outside_each_window() -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "handler.cli", "--demo", "--layout", "encoded"),
            *("--demo-rows", "8000", "--execute", "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith(("CLEANUP_", "DATABASE_"))},
    )
    assert result.returncode == EXIT_OK, result.stderr
    report = json.loads(result.stdout)
    assert (report["status"], report["timestamp_column"]) == ("completed", None)
    # 2,000 keys a session, 1,200 of them pre-keys: all but the newest 1,000 of each of the
    # three sessions with creds go; the logged-out session is a candidate for the next run.
    assert (
        report["deleted"]
        == report["by_type"]["pre-key"]["deleted"]
        == 200 * len(ENCODED_DEMO_SESSIONS)
    )
    assert (report["orphan_rule"], report["orphan_candidates"]) == ("applied", 1)
    assert report["by_type"]["(null)"]["keys"] == 7  # creds and settings rows: unknown, kept
    assert any("the age rule is off" in note for note in report["notes"])


def test_layout_without_demo_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--layout", "encoded"]) != EXIT_OK
    assert "--layout goes with --demo" in capsys.readouterr().err
