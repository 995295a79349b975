"""The Docker-free local invoke: `python -m handler.app --event FILE` (or `python -m
handler.local`) runs the Lambda handler here, with a stand-in context.

stdout gets the returned report only; logs and EMF metric lines go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from aws_lambda_powertools.utilities.typing import LambdaContext

from handler.app import lambda_handler
from handler.errors import ConfigError
from handler.report import Report, exit_code, render_text


@dataclass
class LocalContext:
    """The parts of Lambda's context object the handler and Powertools read."""

    timeout_s: float = 900.0
    function_name: str = "keys-cleanup-local"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "local"
    log_stream_name: str = "local"
    _started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:local:000000000000:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._started + self.timeout_s - time.monotonic()) * 1000))


def _load_event(path: str) -> Any:
    if path == "-":
        return json.load(sys.stdin)
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send file descriptor 1 to stderr for a while.

    In Lambda, log lines and EMF blobs all go to the function's log. Here they would mix with
    the report on stdout, and the loggers hold on to the original stream object, so the
    descriptor itself is redirected.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# Lambda's own bounds: a function's timeout is more than 0 and at most 900 seconds.
MAX_TIMEOUT_S = 900.0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m handler.app --event FILE`: the Lambda handler, run here with a fake context.

    stdout gets the returned report only (JSON, or text with --text); logs and EMF metric
    lines go to stderr. Exit codes as the CLI: 0 ok, 1 failure, 2 bad input, 3 stopped by the
    safety guard (in a dry run: a live run would be).
    """
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m handler.app",
        description="Invoke the Lambda handler locally with an event file, without Docker.",
    )
    parser.add_argument(
        "--event", "-e", default=None, help="event JSON file, or - for stdin (default: {})"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=MAX_TIMEOUT_S,
        help="seconds the fake context grants, more than 0 and at most 900 (900)",
    )
    parser.add_argument("--text", action="store_true", help="print the report as text")
    args = parser.parse_args(argv)
    # nan or inf is no deadline at all; Lambda grants more than 0 and at most 900 seconds.
    if not (math.isfinite(args.timeout) and 0 < args.timeout <= MAX_TIMEOUT_S):
        sys.stderr.write(
            f"error: --timeout takes seconds, more than 0 and at most {MAX_TIMEOUT_S:.0f} "
            "(Lambda's limits)\n"
        )
        return 2
    try:
        event = {} if args.event is None else _load_event(args.event)
    except OSError as exc:
        sys.stderr.write(f"error: --event {args.event}: {exc.strerror or type(exc).__name__}\n")
        return 2
    except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError
        sys.stderr.write(f"error: --event {args.event}: not valid JSON ({exc})\n")
        return 2

    try:
        with _stdout_to_stderr():
            result = lambda_handler(
                event, cast(LambdaContext, LocalContext(timeout_s=args.timeout))
            )
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except Exception as exc:
        sys.stderr.write(f"error: {type(exc).__name__}: {exc}\n")
        return 1
    if args.text:
        sys.stdout.write(render_text(Report.model_validate(result)) + "\n")
    else:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return exit_code(Report.model_validate(result))


if __name__ == "__main__":
    sys.exit(main())
