"""`keys-cleanup --demo --layout encoded`: an embedded PostgreSQL seeded with an encoded key
table (keys as "<type>-<id>", creds rows beside them, no timestamp), cleaned live."""

from __future__ import annotations

import pytest

from handler.cli import EXIT_OK, main
from handler.demo import ENCODED_DEMO_SESSIONS
from tests.support.demo import run_demo_json


def test_the_encoded_demo_takes_the_prekeys_outside_each_window() -> None:
    report = run_demo_json("--layout", "encoded", "--demo-rows", "8000")
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
