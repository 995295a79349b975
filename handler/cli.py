"""`keys-cleanup`: argv -> flags -> run -> print. A dry run unless --execute.

Subcommands: `keys-cleanup run` (the default: `keys-cleanup --execute` is `keys-cleanup run
--execute`), `keys-cleanup init-db` creates the run-history table, `keys-cleanup history`
prints the trend per day. The database: --database-url, else DATABASE_URL, else the
RDS-style secret in DATABASE_SECRET_ARN (with AWS credentials), as the function reads it.

Exit codes: 0 completed, partial or skipped; 1 unexpected failure; 2 bad input or
configuration; 3 stopped by the safety guard (a dry run: a live run would be stopped); 4 a dry
run found that a live run would fail (the role lacks DELETE on the key table).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, TextIO

import psycopg
from pydantic import SecretStr

from handler import __version__, db
from handler.cleanup import open_database, run_cleanup
from handler.deleteloop import Progress
from handler.errors import CleanupError, ConfigError
from handler.history import trend_points
from handler.report import (  # noqa: F401 - exit_code and the codes: the CLI's, re-exported
    EXIT_ABORTED,
    EXIT_LIVE_WOULD_FAIL,
    EXIT_OK,
    TREND_RUNS,
    Report,
    exit_code,
    human_bytes,
    render_text,
    trend_lines,
)
from handler.secrets import SecretError, with_database_url
from handler.settings import Flags, Settings

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
# history --days: 100 years; far more is a PostgreSQL "interval out of range" error.
MAX_HISTORY_DAYS = 36500


class _Parser(argparse.ArgumentParser):
    def __init__(self, **kwargs: Any) -> None:
        # No prefix matching: `--exec` must not pass for `--execute` in a tool that deletes.
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        # One line that names the problem, then the pointer to --help; exit 2 like argparse.
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


DATABASE_HELP = "PostgreSQL URL (default: DATABASE_URL, else the secret in DATABASE_SECRET_ARN)"


def _resolve_database(settings: Settings) -> Settings:
    """DATABASE_URL as it is, else the URL built from DATABASE_SECRET_ARN, as the function does."""
    if settings.database_url is None and settings.database_secret_arn:
        return with_database_url(settings)
    return settings


def _database_url_flag(args: argparse.Namespace) -> str | None:
    """--database-url, never blank: an empty URL (`--database-url "$UNSET"`) would win over
    DATABASE_URL and let libpq connect wherever its PG* variables or defaults point."""
    url: str | None = args.database_url
    if url is not None and not url.strip():
        raise ConfigError(
            "--database-url is empty: give a database URL, or leave the flag out to use "
            "DATABASE_URL"
        )
    return url


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="keys-cleanup",
        description=(
            "Measure the WhatsApp (Baileys) key table and delete keys nobody has touched for "
            "N days. A dry run unless --execute."
        ),
        epilog=(
            "Other commands: `keys-cleanup init-db` (create the run-history table), "
            "`keys-cleanup history` (the trend per day). `run` may be left out. "
            "The database: --database-url, DATABASE_URL, or DATABASE_SECRET_ARN. "
            "Exit codes: 0 completed/partial/skipped, 1 failure, 2 bad input, 3 the safety "
            "guard stopped the run (or, in a dry run, would stop a live one), 4 a dry run found "
            "that a live run would fail (a missing DELETE grant)."
        ),
    )
    parser.add_argument("--execute", action="store_true", help="really delete (default: dry run)")
    parser.add_argument("--verbose", "-v", action="store_true", help="list the affected keys")
    parser.add_argument(
        "--retention-days", type=int, metavar="N", help="override CLEANUP_RETENTION_DAYS"
    )
    parser.add_argument("--force", action="store_true", help="override the safety guard")
    parser.add_argument("--vacuum", action="store_true", help="VACUUM (ANALYZE) afterwards")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--database-url", metavar="URL", help=DATABASE_HELP)
    parser.add_argument(
        "--demo",
        action="store_true",
        help="run against an embedded PostgreSQL seeded with a realistic key table",
    )
    parser.add_argument(
        "--demo-rows", type=int, default=None, metavar="N", help="keys to seed for --demo"
    )
    parser.add_argument(
        "--layout",
        choices=("columns", "encoded"),
        default=None,
        help="with --demo: the key table's layout (encoded: keys as <type>-<id>, no timestamp)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=0,
        metavar="N",
        help="with --demo: the key table partitioned by hash of company_id into N partitions",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress display")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on failure")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


# Below this many seconds a run is short: a rate or an ETA would only flicker.
PROGRESS_ESTIMATE_AFTER_S = 2.0


def _clock_text(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_estimate(p: Progress, elapsed_s: float) -> str:
    """` · 12,400 keys/s · ETA 0:42` once the run is long enough to estimate, else "".

    The ETA follows the pages still to walk (the loop's pace is per page, not per key)."""
    if elapsed_s < PROGRESS_ESTIMATE_AFTER_S or not p.pages_done or not p.pages_total:
        return ""
    rate = p.deleted / elapsed_s
    left_s = elapsed_s * max(0, p.pages_total - p.pages_done) / p.pages_done
    return f" · {rate:,.0f} keys/s · ETA {_clock_text(left_s)}"


class _ProgressLine:
    """A one-line progress display on a terminal's stderr; silent elsewhere."""

    def __init__(
        self, stream: TextIO, enabled: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stream = stream
        self.enabled = enabled and stream.isatty()
        self.shown = False
        self.clock = clock
        self.started = clock()
        self.width = 0

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        share = p.pages_done / p.pages_total if p.pages_total else 1.0
        filled = round(share * 30)
        line = (
            f"deleting [{'#' * filled}{'.' * (30 - filled)}] {share:4.0%} "
            f"{p.deleted:,} keys in {p.batches} batches"
            + progress_estimate(p, self.clock() - self.started)
        )
        # Pad over a longer previous line (the ETA shrinks).
        self.stream.write(f"\r{line:<{self.width}}")
        self.width = max(self.width, len(line))
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


@contextlib.contextmanager
def _demo_database(
    rows: int | None, stderr: TextIO, *, encoded: bool = False, partitions: int = 0
) -> Iterator[str]:
    from handler.demo import (  # noqa: PLC0415 - demo only
        DEMO_ROWS,
        embedded_postgres,
        seed_demo,
        seed_encoded_demo,
    )

    count = DEMO_ROWS if rows is None else rows
    shape = "an encoded key table" if encoded else "the reference key table"
    if partitions:
        shape += f", {partitions} hash partitions"
    stderr.write(f"demo: starting an embedded PostgreSQL and seeding {count:,} keys ({shape})…\n")
    with embedded_postgres() as dsn:
        if encoded:
            seed_encoded_demo(dsn, count)
        else:
            seed_demo(dsn, count, partitions=partitions)
        yield dsn


def run(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    flags = Flags.parse(
        {
            "dry_run": not args.execute,
            "verbose": args.verbose,
            "retention_days": args.retention_days,
            "force": args.force,
            "vacuum": args.vacuum,
        }
    )
    settings = Settings.from_env()
    if args.demo_rows is not None and (not args.demo or args.demo_rows < 1):
        raise ConfigError("--demo-rows takes a positive number and goes with --demo")
    if args.layout is not None and not args.demo:
        raise ConfigError("--layout goes with --demo (otherwise set CLEANUP_LAYOUT)")
    encoded = args.layout == "encoded"
    if args.partitions and (not args.demo or encoded or not 1 < args.partitions <= 64):
        raise ConfigError(
            "--partitions takes 2..64 and goes with --demo (the reference layout, not encoded)"
        )
    url = _database_url_flag(args)
    with contextlib.ExitStack() as stack:
        if args.demo:
            url = stack.enter_context(
                _demo_database(args.demo_rows, stderr, encoded=encoded, partitions=args.partitions)
            )
        if encoded:
            from handler.demo import encoded_demo_settings  # noqa: PLC0415 - demo only

            settings = settings.model_copy(update=encoded_demo_settings())
        if url is not None:
            settings = settings.model_copy(update={"database_url": SecretStr(url)})
        settings = _resolve_database(settings)
        if args.demo and "orphan_rule" not in settings.model_fields_set:
            # The demo seeds a logged-out tenant: show the (opt-in) orphan rule too.
            settings = settings.model_copy(update={"orphan_rule": True})
        progress = _ProgressLine(stderr, enabled=not args.no_progress and not flags.dry_run)
        try:
            report = run_cleanup(settings, flags, progress=progress)
        finally:
            progress.close()
    if args.json:
        stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        stdout.write(render_text(report) + "\n")
        if flags.dry_run and report.status == "completed" and report.eligible:
            stdout.write("\nThis was a dry run: nothing was deleted. Add --execute to delete.\n")
    return exit_code(report)


def build_admin_parser(command: str) -> argparse.ArgumentParser:
    descriptions = {
        "init-db": "Create the run-history table (CLEANUP_HISTORY_TABLE); safe to repeat.",
        "history": "Print the trend of live runs per day: keys, size, deleted, duration.",
    }
    parser = _Parser(prog=f"keys-cleanup {command}", description=descriptions[command])
    parser.add_argument("--database-url", metavar="URL", help=DATABASE_HELP)
    if command == "history":
        parser.add_argument(
            "--days", type=int, default=30, help="how far back, 1 to 36500 (default 30)"
        )
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.add_argument(
            "--all-tables",
            action="store_true",
            help="every table's runs, with a table column (default: CLEANUP_TABLE's only)",
        )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on failure")
    return parser


def _admin_connection(args: argparse.Namespace) -> tuple[Settings, db.Conn]:
    url = _database_url_flag(args)
    settings = Settings.from_env()
    if url is None:
        settings = _resolve_database(settings)
    else:
        settings = settings.model_copy(update={"database_url": SecretStr(url)})
    return settings, open_database(settings)  # the run's own URL check and connection


def init_db(args: argparse.Namespace, stdout: TextIO) -> int:
    settings, conn = _admin_connection(args)
    schema, name = settings.history_table_parts
    with conn:
        existed = db.history_exists(conn, schema, name)
        db.create_history(conn, schema, name)
    state = "already existed" if existed else "created"
    stdout.write(f"run-history table {settings.history_table}: {state}\n")
    return EXIT_OK


def history(args: argparse.Namespace, stdout: TextIO) -> int:
    if not 1 <= args.days <= MAX_HISTORY_DAYS:
        raise ConfigError(f"--days takes 1 to {MAX_HISTORY_DAYS} (100 years)")
    settings, conn = _admin_connection(args)
    schema, name = settings.history_table_parts
    with conn:
        if not db.history_exists(conn, schema, name):
            raise ConfigError(
                f"no run-history table {settings.history_table} yet: run `keys-cleanup init-db` "
                "or one live run"
            )
        table = None if args.all_tables else _history_table(conn, settings)
        trend = db.history_trend(conn, schema, name, args.days, table)
        recent = db.recent_runs(conn, schema, name, table, TREND_RUNS)
    if args.json:
        rows = [
            {
                "day": t.day.date().isoformat(),
                "table": t.table,
                "runs": t.runs,
                "statuses": t.statuses.split(","),
                "keys": t.keys,
                "total_bytes": t.total_bytes,
                "deleted": t.deleted,
                "duration_ms": t.duration_ms,
                "remaining": t.remaining,
            }
            for t in trend
        ]
        stdout.write(json.dumps(rows, indent=2) + "\n")
        return EXIT_OK
    if table is None:  # every table: no one trend line spans them, the table column says
        stdout.write(render_trend(trend, with_table=True) + "\n")
        return EXIT_OK
    points = trend_points(recent)
    lines = [f"table {table}", *trend_lines(points)]
    if points:  # not one run recorded, ever: one line says it
        lines += ["", render_trend(trend)]
    stdout.write("\n".join(lines) + "\n")
    return EXIT_OK


def _history_table(conn: db.Conn, settings: Settings) -> str:
    """CLEANUP_TABLE as runs record it (schema.table, resolved on the search path)."""
    schema, name = settings.table_parts
    found = db.find_relation(conn, schema, name)
    if found is None:
        raise ConfigError(
            f"table {settings.table} (CLEANUP_TABLE) does not exist (or is not visible to this "
            "role); --all-tables shows every table's runs"
        )
    return f"{found[1]}.{found[2]}"


def render_trend(trend: list[db.DayTrend], *, with_table: bool = False) -> str:
    if not trend:
        return "no live runs recorded in that period"
    width = max(len("table"), *(len(t.table) for t in trend))
    table_head = f"{'table':<{width}}  " if with_table else ""
    header = (
        f"{'day (UTC)':<10}  {table_head}{'runs':>4}  {'status':<18} {'keys':>12}  "
        f"{'size':>10}  {'deleted':>10}  {'duration':>9}"
    )
    lines = [header, "-" * len(header)]
    for t in trend:
        keys = "-" if t.keys is None else f"{t.keys:,}"
        size = "-" if t.total_bytes is None else human_bytes(t.total_bytes)
        table = f"{t.table:<{width}}  " if with_table else ""
        lines.append(
            f"{t.day.date().isoformat():<10}  {table}{t.runs:>4}  {t.statuses:<18} {keys:>12}  "
            f"{size:>10}  {t.deleted:>10,}  {t.duration_ms / 1000:>8.1f}s"
        )
    return "\n".join(lines)


ADMIN_COMMANDS = {"init-db": init_db, "history": history}


def main(argv: Sequence[str] | None = None) -> int:
    stdout, stderr = sys.stdout, sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    action: Callable[[], int]
    if argv and argv[0] in ADMIN_COMMANDS:
        args = build_admin_parser(argv[0]).parse_args(argv[1:])
        action = functools.partial(ADMIN_COMMANDS[argv[0]], args, stdout)
    else:
        # `keys-cleanup run [flags]` and `keys-cleanup [flags]` are the same command.
        args = build_parser().parse_args(argv[1:] if argv[:1] == ["run"] else argv)
        action = functools.partial(run, args, stdout, stderr)
    try:
        return action()
    except psycopg.Error as exc:  # init-db and history talk to the database directly
        if args.debug:
            raise
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        stderr.write(f"keys-cleanup: error: database error ({type(exc).__name__}): {detail}\n")
        return EXIT_FAILURE
    except ConfigError as exc:
        stderr.write(f"keys-cleanup: error: {exc}\n")
        return EXIT_BAD_INPUT
    except SecretError as exc:  # names the setting and the AWS error, never a value
        if args.debug:
            raise
        stderr.write(f"keys-cleanup: error: {exc}\n")
        return EXIT_FAILURE
    except CleanupError as exc:
        if args.debug:
            raise
        stderr.write(f"keys-cleanup: error: {exc}\n")
        return EXIT_FAILURE
    except Exception as exc:
        if args.debug:
            raise
        stderr.write(
            f"keys-cleanup: unexpected failure: {type(exc).__name__}"
            " (rerun with --debug for the traceback)\n"
        )
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
