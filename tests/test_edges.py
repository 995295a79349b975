"""Safety at the edges (issue 9): configuration mistakes and odd rows, against real PostgreSQL.

Each test here failed before its fix: a wrong deletion, a run that failed for no good reason,
an error that leaked or misled.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import boto3
import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext
from moto import mock_aws
from psycopg import sql
from psycopg.conninfo import make_conninfo
from pytest_httpserver import HTTPServer

from handler import secrets as db_secrets
from handler.app import lambda_handler
from handler.cleanup import run_cleanup
from handler.cli import EXIT_ABORTED, EXIT_BAD_INPUT, main
from handler.local import LocalContext
from handler.notify import secrets as notify_secrets
from handler.observability import report_fields
from handler.report import render_text
from handler.secrets import PROVIDERS
from handler.settings import ConfigError, Flags, Settings
from tests.conftest import KeyRow, PgSchema
from tests.notify_support import capture_logs, find_log

LIVE = Flags(dry_run=False)
DRY = Flags()
FORCE = Flags(dry_run=False, force=True)


def with_timezone(pg: PgSchema, zone: str) -> str:
    """The schema's DSN as on a server whose default TimeZone is `zone`."""
    return make_conninfo(pg.server_dsn, options=f"-c search_path={pg.schema} -c TimeZone={zone}")


# --- 1. timestamp columns without a time zone ------------------------------------------------


def naive_table(pg: PgSchema, writer_zone: str, ages_days: list[float]) -> None:
    """`updated_at timestamp`, each row written as `writer_zone` wall time, `age` days ago."""
    with pg.connect() as conn:
        conn.execute(
            "CREATE TABLE naive_keys (id int PRIMARY KEY, key_type text, updated_at timestamp)"
        )
        for i, age in enumerate(ages_days):
            conn.execute(
                "INSERT INTO naive_keys VALUES "
                "(%s, 'session', (now() - make_interval(secs => %s * 86400)) AT TIME ZONE %s)",
                (i, age, writer_zone),
            )


def ids(pg: PgSchema, table: str = "naive_keys") -> set[int]:
    with pg.connect() as conn:
        query = sql.SQL("SELECT id FROM {}").format(sql.Identifier(table))
        return {r[0] for r in conn.execute(query)}


@pytest.mark.parametrize("writer_zone", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_timestamp_column_is_compared_in_the_zone_the_application_writes(
    pg: PgSchema, writer_zone: str
) -> None:
    # Ages within half a day of the 30-day cutoff: a 9-hour error (Tokyo) deletes the first.
    naive_table(pg, writer_zone, [29.7, 30.3])
    settings = pg.settings(
        DATABASE_URL=with_timezone(pg, "Asia/Tokyo"),
        CLEANUP_TABLE="naive_keys",
        CLEANUP_KEY_ID_COLUMN="id",
        CLEANUP_TIMESTAMP_TIMEZONE=writer_zone,
    )
    report = run_cleanup(settings, FORCE)
    assert report.deleted == 1
    assert ids(pg) == {0}


def test_live_run_on_a_timestamp_column_without_its_zone_refuses_naming_the_setting(
    pg: PgSchema,
) -> None:
    naive_table(pg, "UTC", [40, 50])
    settings = pg.settings(CLEANUP_TABLE="naive_keys", CLEANUP_KEY_ID_COLUMN="id")
    with pytest.raises(ConfigError, match="CLEANUP_TIMESTAMP_TIMEZONE") as caught:
        run_cleanup(settings, FORCE)
    assert "\n" not in str(caught.value)
    assert ids(pg) == {0, 1}


def test_dry_run_on_a_timestamp_column_without_its_zone_goes_ahead_with_a_note(
    pg: PgSchema,
) -> None:
    naive_table(pg, "UTC", [40, 1])
    report = run_cleanup(pg.settings(CLEANUP_TABLE="naive_keys", CLEANUP_KEY_ID_COLUMN="id"), DRY)
    assert report.status == "completed"
    assert report.eligible == 1
    assert any("CLEANUP_TIMESTAMP_TIMEZONE" in note for note in report.notes)
    assert "CLEANUP_TIMESTAMP_TIMEZONE" in render_text(report)


def test_report_times_are_utc_whatever_the_server_zone(pg: PgSchema) -> None:
    pg.create_reference_table()
    pg.insert_keys([KeyRow("c", "session", "k", 3)])
    report = run_cleanup(pg.settings(DATABASE_URL=with_timezone(pg, "Asia/Tokyo")), DRY)
    for instant in (report.started_at, report.cutoff, report.oldest, report.newest):
        assert instant is not None
        assert instant.utcoffset() == timedelta(0)


def test_retention_is_n_times_24_hours_across_daylight_saving_changes(pg: PgSchema) -> None:
    # A session in New York: `now() - interval '30 days'` keeps the wall-clock time, so across
    # a daylight-saving change (1 November 2026 falls within 30 days of late November) it
    # is 721 or 719 hours. The retention is 30 x 24 hours, in any zone and any season.
    pg.create_reference_table()
    for days in (30, 45, 120):
        settings = pg.settings(
            DATABASE_URL=with_timezone(pg, "America/New_York"), CLEANUP_RETENTION_DAYS=str(days)
        )
        report = run_cleanup(settings, DRY)
        assert report.started_at is not None
        assert report.cutoff is not None
        # As instants: Python subtracts two datetimes of the same zone as wall times.
        elapsed = report.started_at.timestamp() - report.cutoff.timestamp()
        assert round(elapsed, 3) == 24 * days * 3600


def test_unknown_time_zone_is_refused_naming_the_setting_and_the_closest_zone() -> None:
    with pytest.raises(ConfigError, match=r"CLEANUP_TIMESTAMP_TIMEZONE.*Europe/Berlin"):
        Settings.from_env({"CLEANUP_TIMESTAMP_TIMEZONE": "Europe/Berlinn"})


# --- 2. a typo must never strip protection ---------------------------------------------------


@pytest.fixture
def app_state(pg: PgSchema) -> PgSchema:
    pg.create_reference_table()
    pg.insert_keys(
        [KeyRow("c", "app-state-sync-key", f"a{i}", 60) for i in range(3)]
        + [KeyRow("c", "lid-mapping", f"l{i}", 60) for i in range(3)]
        + [KeyRow("c", "session", f"s{i}", 60) for i in range(3)]
        + [KeyRow("c", "session", f"n{i}", 1) for i in range(3)]
    )
    return pg


def kinds(pg: PgSchema) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, key_type, _ in pg.key_set():
        counts[key_type] = counts.get(key_type, 0) + 1
    return counts


def test_misspelt_protected_types_leave_the_builtin_protection_in_place(
    app_state: PgSchema,
) -> None:
    settings = app_state.settings(CLEANUP_PROTECTED_KEY_TYPES="app-state-sync-keys,lid-maping")
    report = run_cleanup(settings, FORCE)
    assert kinds(app_state) == {"app-state-sync-key": 3, "lid-mapping": 3, "session": 3}
    assert report.deleted == 3
    notes = "\n".join(report.notes)
    assert "'app-state-sync-keys' matches no key" in notes
    assert "did you mean 'app-state-sync-key'?" in notes
    assert "'lid-maping' matches no key" in notes
    assert "did you mean 'lid-mapping'?" in notes
    # The same notes in the human output and the log line.
    assert "lid-maping" in render_text(report)
    assert any("lid-maping" in note for note in report_fields(report)["notes"])


def test_the_explicit_opt_out_lifts_protection_from_the_types_it_names(
    app_state: PgSchema,
) -> None:
    settings = app_state.settings(CLEANUP_UNPROTECT_KEY_TYPES="lid-mapping")
    report = run_cleanup(settings, FORCE)
    assert kinds(app_state) == {"app-state-sync-key": 3, "session": 3}
    assert "lid-mapping" not in report.protected_types
    assert "app-state-sync-key" in report.protected_types


def test_the_opt_out_refuses_a_name_that_is_not_a_builtin_protected_type() -> None:
    with pytest.raises(ConfigError, match=r"CLEANUP_UNPROTECT_KEY_TYPES.*lid-maping"):
        Settings.from_env({"CLEANUP_UNPROTECT_KEY_TYPES": "lid-maping"})


def test_a_retention_override_for_no_existing_type_is_noted_and_not_applied(
    app_state: PgSchema,
) -> None:
    # `sesion=90` would keep the 60-day sessions if it were matched loosely: it is not.
    report = run_cleanup(app_state.settings(CLEANUP_TYPE_RETENTION_DAYS="sesion=90"), FORCE)
    assert kinds(app_state)["session"] == 3
    assert any(
        "CLEANUP_TYPE_RETENTION_DAYS: key type 'sesion' matches no key" in note
        and "did you mean 'session'?" in note
        for note in report.notes
    )


# --- 3. no abbreviated flags -----------------------------------------------------------------


@pytest.fixture
def cli_env(app_state: PgSchema, monkeypatch: pytest.MonkeyPatch) -> PgSchema:
    app_state.use_env(monkeypatch)
    return app_state


@pytest.mark.parametrize(
    "argv",
    [["--exec"], ["--execute", "--forc"], ["--exe", "--retention-day", "1"], ["history", "--js"]],
)
def test_abbreviated_flags_are_refused_and_nothing_is_deleted(
    cli_env: PgSchema, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == EXIT_BAD_INPUT
    assert "unrecognized arguments" in capsys.readouterr().err
    assert cli_env.count() == 12


@pytest.mark.parametrize(
    ("module", "flag"),
    [("handler.app", "--ev"), ("handler.app", "--tex"), ("handler.notify", "--htm")],
)
def test_module_entry_points_refuse_abbreviated_flags(module: str, flag: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, flag],
        capture_output=True,
        text=True,
        timeout=60,
        input="{}",
        check=False,
    )
    assert result.returncode == 2
    assert "unrecognized arguments" in result.stderr


# --- 4. non-finite timestamps ----------------------------------------------------------------

ODD_TIMESTAMPS = ("infinity", "-infinity", "4713-01-01 00:00:00+00 BC", "20000-01-01 00:00+00")


@pytest.fixture
def odd_rows(pg: PgSchema) -> PgSchema:
    pg.create_reference_table()
    pg.insert_keys(
        [KeyRow("c", "session", "old", 40), KeyRow("c", "session", "new", 2)]
        + [KeyRow("c", "session", f"odd{i}", 0) for i in range(len(ODD_TIMESTAMPS))]
    )
    with pg.connect() as conn:
        for i, value in enumerate(ODD_TIMESTAMPS):
            conn.execute(
                "UPDATE whatsapp_keys SET updated_at = %s::timestamptz WHERE key_id = %s",
                (value, f"odd{i}"),
            )
            # The touch trigger set it to now(); put the odd value back underneath it.
            conn.execute("ALTER TABLE whatsapp_keys DISABLE TRIGGER USER")
            conn.execute(
                "UPDATE whatsapp_keys SET updated_at = %s::timestamptz WHERE key_id = %s",
                (value, f"odd{i}"),
            )
            conn.execute("ALTER TABLE whatsapp_keys ENABLE TRIGGER USER")
    return pg


@pytest.mark.parametrize("flags", [DRY, FORCE], ids=["dry", "live"])
def test_runs_complete_with_infinite_and_bc_timestamps_and_never_delete_them(
    odd_rows: PgSchema, flags: Flags
) -> None:
    report = run_cleanup(odd_rows.settings(), flags)
    assert report.status == "completed"
    assert report.out_of_range_timestamps == len(ODD_TIMESTAMPS)
    assert report.eligible == 1
    assert report.oldest is not None
    assert report.newest is not None
    assert 39 < (report.started_at - report.oldest).total_seconds() / 86400 < 41  # type: ignore[operator]
    assert 1 < (report.started_at - report.newest).total_seconds() / 86400 < 3  # type: ignore[operator]
    assert sum(report.age_distribution.values()) == 2
    survivors = {key_id for _, _, key_id in odd_rows.key_set()}
    expected = {"new", *(f"odd{i}" for i in range(len(ODD_TIMESTAMPS)))}
    assert survivors == (expected if not flags.dry_run else expected | {"old"})
    assert "out-of-range timestamp: 4" in render_text(report)


# --- 5. VACUUM trouble -----------------------------------------------------------------------


def init_history(pg: PgSchema) -> None:
    subprocess.run(
        [sys.executable, "-m", "handler.cli", "init-db"],
        env={**os.environ, **pg.env()},
        check=True,
        capture_output=True,
    )


def history(pg: PgSchema) -> list[tuple[Any, ...]]:
    with pg.connect() as conn:
        return conn.execute("SELECT event_id, status FROM keys_cleanup_runs").fetchall()


def test_vacuum_that_cannot_get_its_lock_is_a_note_and_the_run_completes(
    app_state: PgSchema,
) -> None:
    settings = app_state.settings(CLEANUP_LOCK_TIMEOUT_MS="300")
    with app_state.connect() as other, other.transaction():
        # What a concurrent VACUUM or CREATE INDEX CONCURRENTLY holds; batches don't need it.
        other.execute("LOCK TABLE whatsapp_keys IN SHARE UPDATE EXCLUSIVE MODE")
        report = run_cleanup(settings, Flags(dry_run=False, force=True, vacuum=True), event_id="e")
    assert report.status == "completed"
    assert report.deleted == 3
    assert not report.vacuumed
    assert any("VACUUM not done" in note for note in report.notes)
    assert history(app_state) == [("e", "completed")]


def test_vacuum_is_skipped_when_too_little_time_is_left(app_state: PgSchema) -> None:
    report = run_cleanup(
        app_state.settings(),
        Flags(dry_run=False, force=True, vacuum=True),
        deadline=time.monotonic() + 5,
    )
    assert report.status == "completed"
    assert report.deleted == 3
    assert not report.vacuumed
    assert any("VACUUM skipped" in note for note in report.notes)


def test_session_timeouts_are_restored_after_a_deadline_shortened_vacuum(
    app_state: PgSchema,
) -> None:
    init_history(app_state)
    with app_state.connect() as conn:
        # The history row records the statement timeout the job's session had when it wrote.
        conn.execute(
            "ALTER TABLE keys_cleanup_runs ADD COLUMN seen_timeout text "
            "DEFAULT current_setting('statement_timeout')"
        )
    run_cleanup(
        app_state.settings(CLEANUP_STATEMENT_TIMEOUT_MS="300000"),
        Flags(dry_run=False, force=True, vacuum=True),
        deadline=time.monotonic() + 120,
    )
    with app_state.connect() as conn:
        assert conn.execute("SELECT seen_timeout FROM keys_cleanup_runs").fetchall() == [("5min",)]


# --- 6. unreadable run history ---------------------------------------------------------------


@pytest.fixture
def no_history_role(app_state: PgSchema) -> Iterator[Settings]:
    """A role that may delete keys but may not read the run history (made by the owner)."""
    init_history(app_state)
    with app_state.role("nohist", "GRANT SELECT, DELETE ON whatsapp_keys TO {role}") as role:
        yield app_state.settings(DATABASE_URL=app_state.dsn + f" user={role}")


def test_unreadable_history_is_a_note_and_the_scheduled_run_goes_on(
    app_state: PgSchema, no_history_role: Settings
) -> None:
    report = run_cleanup(no_history_role, FORCE, event_id="evt-1")
    assert report.status == "completed"
    assert report.deleted == 3
    assert any("run history not readable (InsufficientPrivilege)" in n for n in report.notes)
    assert any("run history not recorded" in n for n in report.notes)


# --- 7. bounded secret reads -----------------------------------------------------------------


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    PROVIDERS.reset()
    yield
    PROVIDERS.reset()


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A TCP server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def test_a_secret_read_from_an_endpoint_that_never_answers_gives_up_quickly(
    aws_env: None, silent_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", silent_endpoint)
    started = time.monotonic()
    with pytest.raises(db_secrets.SecretError, match="DATABASE_SECRET_ARN"):
        db_secrets.read_secret("arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf")
    # botocore's defaults took 180 s here: 60 s read timeout, 3 attempts.
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("region", "partition"), [("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov")]
)
def test_secrets_manager_arns_of_every_partition_go_to_secrets_manager(
    aws_env: None, monkeypatch: pytest.MonkeyPatch, region: str, partition: str
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    with mock_aws():
        client = boto3.client("secretsmanager", region_name=region)
        arn = client.create_secret(Name="sentry-dsn", SecretString="https://k@sentry.invalid/1")[
            "ARN"
        ]
        assert arn.startswith(f"arn:{partition}:secretsmanager:")
        assert notify_secrets.resolve(None, arn) == "https://k@sentry.invalid/1"


def test_an_unreadable_sentry_dsn_is_read_once_per_invocation(
    app_state: PgSchema,
    aws_env: None,
    httpserver: HTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    httpserver.expect_request("/").respond_with_json(
        {"__type": "ParameterNotFound", "message": "no such parameter"}, status=400
    )
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", httpserver.url_for("/"))
    app_state.use_env(monkeypatch, SENTRY_DSN_PARAMETER="/keys-cleanup/sentry-dsn")
    result = lambda_handler({}, cast(LambdaContext, LocalContext()))
    assert result["status"] == "completed"
    assert len(httpserver.log) == 1


# --- 8. passwords with an unencoded @ --------------------------------------------------------

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


# --- 9. bad --event files --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "No such file"), ('{"dry_run": tru', "not valid JSON")],
    ids=["missing", "malformed"],
)
def test_a_bad_event_file_is_one_line_and_exit_2(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "event.json"
    if content is not None:
        path.write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "handler.app", "--event", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")},
    )
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


# --- 10. unknown settings --------------------------------------------------------------------


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


# --- 11. wording that misled -----------------------------------------------------------------


def test_a_dry_run_the_guard_would_stop_says_so_and_exits_3(
    cli_env: PgSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLEANUP_GUARD_MIN_KEYS", "1")
    monkeypatch.setenv("CLEANUP_MAX_DELETE_FRACTION", "0.1")
    assert main([]) == EXIT_ABORTED
    out = capsys.readouterr().out
    assert "aborted" not in out
    assert "a live run would stop here" in out
    assert "--execute --force" in out
    assert cli_env.count() == 12
    assert main(["--json"]) == EXIT_ABORTED
    report = json.loads(capsys.readouterr().out)
    assert (report["status"], report["guard_triggered"]) == ("completed", True)


def test_a_table_that_grew_shows_growth_not_negative_release(pg: PgSchema) -> None:
    pg.create_reference_table()
    pg.insert_keys([KeyRow("c", "session", "k", 40)])
    report = run_cleanup(pg.settings(), FORCE)
    grown = report.model_copy(update={"released_bytes": -8192})
    text = render_text(grown)
    assert "-8.0 KiB" not in text
    assert "grew 8.0 KiB" in text


def test_an_exact_key_count_is_not_marked_approximate(pg: PgSchema) -> None:
    pg.create_reference_table()
    pg.insert_keys([KeyRow("c", "session", "k", 1)])
    report = run_cleanup(pg.settings(), FORCE)
    assert report.deleted == 0
    assert "≈" not in render_text(report)
