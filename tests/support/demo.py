"""The console script's demo, run as the README runs it: `python -m handler.cli --demo ...`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, cast

from handler.report import EXIT_OK


def run_demo_json(*options: str) -> dict[str, Any]:
    """`keys-cleanup --demo <options> --execute --json` in a child process, without the
    environment's CLEANUP_/DATABASE_ settings; it must exit OK, and its JSON report is returned.
    """
    result = subprocess.run(
        [sys.executable, "-m", "handler.cli", "--demo", *options, "--execute", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith(("CLEANUP_", "DATABASE_"))},
    )
    assert result.returncode == EXIT_OK, result.stderr
    return cast(dict[str, Any], json.loads(result.stdout))
