"""The `keys-cleanup` command: exit codes, --json, one-line errors, dry run by default."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from psycopg.conninfo import conninfo_to_dict

from handler import cli
from handler.cli import (
    EXIT_ABORTED,
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_OK,
    _ProgressLine,
    main,
    progress_estimate,
)
from handler.deleteloop import Progress
from handler.notify import secrets as notify_secrets
from handler.report import TrendPoint, trend_lines
from handler.secrets import PROVIDERS, conninfo_from_secret
from tests.support.db import KeyRow, PgSchema, baileys_creds
from tests.support.demo import run_demo_json


@pytest.fixture
def seeded(pg: PgSchema, monkeypatch: pytest.MonkeyPatch) -> PgSchema:
    pg.create_reference_table()
    pg.insert_keys(
        [KeyRow("c", "session", f"old{i}", 40) for i in range(4)]
        + [KeyRow("c", "session", f"new{i}", 1) for i in range(6)]
    )
    pg.use_env(monkeypatch)
    return pg


def test_default_is_a_dry_run(seeded: PgSchema, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_OK
    out = capsys.readouterr().out
    assert "DRY RUN" in out
    assert "Add --execute to delete" in out
    assert seeded.count() == 10


def test_execute_deletes_and_json_is_the_only_stdout(
    seeded: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--execute", "--json"]) == EXIT_OK
    out = capsys.readouterr().out
    report = json.loads(out)  # nothing but JSON on stdout
    assert report["status"] == "completed"
    assert report["deleted"] == 4
    assert report["dry_run"] is False
    assert set(report["age_distribution"]) == {"<1d", "1-7d", "7-14d", "14-30d", ">30d"}
    assert seeded.count() == 6


def test_retention_days_flag(seeded: PgSchema, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--execute", "--json", "--retention-days", "50"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["deleted"] == 0
    assert seeded.count() == 10


def test_guard_abort_exits_3_then_force(
    seeded: PgSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLEANUP_GUARD_MIN_KEYS", "1")
    monkeypatch.setenv("CLEANUP_MAX_DELETE_FRACTION", "0.3")
    assert main(["--execute"]) == EXIT_ABORTED
    assert "--force" in capsys.readouterr().out
    assert seeded.count() == 10
    assert main(["--execute", "--force"]) == EXIT_OK
    assert seeded.count() == 6


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--retention-days", "0"], {}, "retention_days"),
        (["--retention-days", "abc"], {}, "invalid int value"),
        (["--execute", "--dryrun"], {}, "unrecognized arguments: --dryrun"),
        (["--execute"], {"CLEANUP_BATCH_SIZE": "lots"}, "CLEANUP_BATCH_SIZE"),
        (["--execute"], {"CLEANUP_TABLE": "whatsapp_keys; DROP TABLE x"}, "CLEANUP_TABLE"),
        (["--execute"], {"CLEANUP_TABLE": "missing_table"}, "missing_table does not exist"),
        (["--execute", "--demo-rows", "5"], {}, "--demo-rows"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_deletes_nothing(
    seeded: PgSchema,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: dict[str, str],
    needle: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    assert code == EXIT_BAD_INPUT
    assert needle in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert "Traceback" not in captured.err
    assert captured.out == ""
    assert seeded.count() == 10


def test_unreachable_database_exits_1_without_traceback_or_password(
    seeded: PgSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLEANUP_CONNECT_TIMEOUT_S", "2")
    code = main(["--database-url", "postgresql://u:pa55-canary@127.0.0.1:1/x", "--execute"])
    err = capsys.readouterr().err
    assert code == EXIT_FAILURE
    assert "could not connect" in err
    assert "pa55-canary" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_database_url_is_bad_input(
    seeded: PgSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL")
    assert main([]) == EXIT_BAD_INPUT
    assert "set DATABASE_URL or DATABASE_SECRET_ARN" in capsys.readouterr().err


def test_skipped_run_exits_0(seeded: PgSchema, capsys: pytest.CaptureFixture[str]) -> None:
    from handler.db import LOCK_CLASS  # noqa: PLC0415

    with seeded.connect() as holder:
        oid = holder.execute("SELECT 'whatsapp_keys'::regclass::oid").fetchone()
        assert oid is not None
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_CLASS + oid[0],))
        assert main(["--execute", "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["status"] == "skipped"
    assert seeded.count() == 10


def test_console_script_runs_the_demo_as_json() -> None:
    """The README's first command, end to end: embedded PostgreSQL, seed, live run, JSON."""
    report = run_demo_json("--demo-rows", "3000")
    assert report["status"] == "completed"
    # 3000 keys, plus the copies held by the tenant that logged out.
    keys = report["before"]["keys"]
    assert 3000 < keys < 3300
    assert 0 < report["deleted"] < keys
    assert report["after"]["keys"] == keys - report["deleted"]
    # The rules show: age, the key lifecycle's kept keys with their reasons, and the
    # logged-out tenant's keys (the demo turns the orphan rule on). TTL is opt-in: off.
    assert (report["expires_column"], report["expired"]) == (None, 0)
    kept = {k["key_type"] for k in report["kept"]}
    assert {"pre-key", "session", "sender-key", "tctoken"} <= kept
    assert all(k["keys"] > 0 and k["reason"] for k in report["kept"])
    # The logged-out tenant is a candidate: its keys go on a run at least an hour later.
    assert (report["orphan_rule"], report["orphan_candidates"]) == ("applied", 1)
    assert (report["orphaned_tenants"], report["orphaned"]) == (0, 0)
    assert report["by_type"]["app-state-sync-key"]["deleted"] == 0
    assert report["top_tenants"][-1]["tenant"] == "company-logged-out"


# --- the human output ---------------------------------------------------------------------------


def test_dry_run_text_says_what_a_live_run_would_do_without_zeros(
    seeded: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--verbose"]) == EXIT_OK
    out = capsys.readouterr().out

    assert "would delete 4" in out
    assert re.search(r"space: a live run would make ≈\d[\d.]* (B|KiB) reusable \(estimated\)", out)
    header = next(line for line in out.splitlines() if "key type" in line)
    assert header.split() == ["key", "type", "keys", "would", "delete", "protected", "retention"]
    assert re.search(r"^  session +10 +4 +0  30d$", out, re.MULTILINE)
    for nothing_happened in ("batches:", "released", "deleted 0"):
        assert nothing_happened not in out, nothing_happened
    assert "duration " in out
    # The verbose listing names each key once: its key type is part of the primary key.
    listed = [line for line in out.splitlines() if "key_id=old" in line]
    assert len(listed) == 4
    assert all("[session]" not in line for line in listed)


def test_text_report_shows_the_trend_or_that_there_is_none(
    seeded: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([]) == EXIT_OK
    assert "trend: no run history" in capsys.readouterr().out
    assert main(["--execute"]) == EXIT_OK
    out = capsys.readouterr().out
    assert re.search(r"trend: keys 1 run: 6 · size 1 run: [\d.]+ KiB", out), out


def test_history_command_prints_the_trend_of_the_last_runs(
    seeded: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init-db"]) == EXIT_OK
    capsys.readouterr()
    assert main(["history"]) == EXIT_OK
    assert capsys.readouterr().out == f"table {seeded.schema}.whatsapp_keys\nno run history\n"
    assert main(["--execute"]) == EXIT_OK
    seeded.insert_keys([KeyRow("c", "session", "late", 40)])
    assert main(["--execute"]) == EXIT_OK
    capsys.readouterr()

    assert main(["history"]) == EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"table {seeded.schema}.whatsapp_keys"
    assert out[1] == "keys 2 runs: 6 → 6"
    assert re.fullmatch(r"size 2 runs: [\d.]+ → [\d.]+ KiB", out[2])


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_adds_rate_and_eta_once_the_run_is_long() -> None:
    now = [100.0]
    stream = Tty()
    line = _ProgressLine(stream, enabled=True, clock=lambda: now[0])

    now[0] = 101.0  # one second in: too early to estimate
    line(Progress(pages_done=100, pages_total=1000, deleted=5_000, batches=2))
    assert "keys/s" not in stream.getvalue()

    now[0] = 110.0  # ten seconds for a quarter of the pages: 30 s to go
    line(Progress(pages_done=250, pages_total=1000, deleted=25_000, batches=10))
    last = stream.getvalue().split("\r")[-1]
    assert "25,000 keys in 10 batches · 2,500 keys/s · ETA 0:30" in last
    line.close()


@pytest.mark.parametrize(
    ("done", "total", "deleted", "elapsed", "expected"),
    [
        (0, 100, 0, 5.0, ""),  # nothing walked yet: no basis for an estimate
        (50, 100, 1_000, 1.0, ""),  # a short run
        (50, 100, 1_000, 10.0, " · 100 keys/s · ETA 0:10"),
        (1, 1_000, 10, 4.0, " · 2 keys/s · ETA 1:06:36"),
        (100, 100, 9, 30.0, " · 0 keys/s · ETA 0:00"),
    ],
)
def test_progress_estimate(
    done: int, total: int, deleted: int, elapsed: float, expected: str
) -> None:
    assert progress_estimate(Progress(done, total, deleted, 1), elapsed) == expected


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([], ["no run history"]),
        ([(10, 900)], ["keys 1 run: 10", "size 1 run: 900 B"]),
        ([(10, 900), (12, 1_000)], ["keys 2 runs: 10 → 12", "size 2 runs: 900 → 1000 B"]),
        (
            [(41_230, 431_000_000), (0, 5), (24_272, 417_000_000)],
            ["keys 3 runs: 41,230 → 24,272", "size 3 runs: 411.0 → 397.7 MiB"],
        ),
        (
            [(1, 3 * 1024**3), (1, 512 * 1024**2)],
            ["keys 2 runs: 1 → 1", "size 2 runs: 3.0 → 0.5 GiB"],
        ),
    ],
)
def test_trend_lines_put_both_sizes_in_one_unit(
    points: list[tuple[int, int]], expected: list[str]
) -> None:
    when = datetime(2026, 11, 29, tzinfo=UTC)
    trend = [TrendPoint(finished_at=when, keys=k, total_bytes=b) for k, b in points]
    assert trend_lines(trend) == expected


REGION = "eu-west-1"


PASSWORD = "pa55 'w0rd' host=evil \\ canary"  # trust auth ignores it; it must never show


CLI_KEYS = [KeyRow("c1", "session", f"old{i}", 60) for i in range(12)]


CLI_KEYS += [KeyRow("c1", "session", f"new{i}", 1) for i in range(30)]


@pytest.fixture
def cli_seeded(pg: PgSchema, monkeypatch: pytest.MonkeyPatch) -> PgSchema:
    pg.create_reference_table()
    pg.insert_keys(CLI_KEYS)
    pg.use_env(monkeypatch)
    return pg


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- subcommands ----------------------------------------------------------------------------------


def test_run_is_the_default_command_and_takes_the_same_flags(
    cli_seeded: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    code, plain, _ = run_cli(capsys, "--json")
    assert code == 0
    code, explicit, _ = run_cli(capsys, "run", "--json")
    assert code == 0
    assert json.loads(plain)["eligible"] == json.loads(explicit)["eligible"] == 12
    assert cli_seeded.count() == len(CLI_KEYS)
    code, _, _ = run_cli(capsys, "run", "--execute", "--no-progress")
    assert code == 0
    assert cli_seeded.count() == len(CLI_KEYS) - 12


def test_run_refuses_another_subcommand_as_its_argument(
    cli_seeded: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "init-db"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: init-db" in capsys.readouterr().err


def test_init_db_and_history_are_subcommands(
    cli_seeded: PgSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLEANUP_HISTORY_TABLE", f"{cli_seeded.schema}.keys_cleanup_runs")
    code, out, _ = run_cli(capsys, "init-db")
    assert (code, out) == (0, f"run-history table {cli_seeded.schema}.keys_cleanup_runs: created\n")
    assert run_cli(capsys, "run", "--execute", "--no-progress")[0] == 0
    code, out, _ = run_cli(capsys, "history", "--json")
    assert code == 0
    (day,) = json.loads(out)
    assert (day["runs"], day["deleted"]) == (1, 12)


@pytest.fixture
def secret_arn(cli_seeded: PgSchema, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An RDS-style secret for the test server, and the environment of the function: only
    DATABASE_SECRET_ARN, no DATABASE_URL."""
    for name, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = conninfo_to_dict(cli_seeded.server_dsn)
    secret: dict[str, Any] = {
        "engine": "postgres",
        "host": server.get("host", "127.0.0.1"),
        "username": server.get("user", "postgres"),
        "password": PASSWORD,
        "dbname": server["dbname"],
        "sslmode": "disable",
    }
    if "port" in server:
        secret["port"] = int(str(server["port"]))
    # The auth table the settings below name: the creds are read, so old sessions go.
    cli_seeded.add_auth({"c1": baileys_creds(1)})
    PROVIDERS.reset()
    with mock_aws():
        client = boto3.client("secretsmanager", region_name=REGION)
        arn = client.create_secret(Name="db", SecretString=json.dumps(secret))["ARN"]
        monkeypatch.delenv("DATABASE_URL")
        monkeypatch.setenv("DATABASE_SECRET_ARN", arn)
        monkeypatch.setenv("CLEANUP_TABLE", f"{cli_seeded.schema}.whatsapp_keys")
        monkeypatch.setenv("CLEANUP_AUTH_TABLE", f"{cli_seeded.schema}.whatsapp_auth")
        monkeypatch.setenv("CLEANUP_HISTORY_TABLE", f"{cli_seeded.schema}.keys_cleanup_runs")
        yield arn
    PROVIDERS.reset()


def test_the_cli_connects_with_the_functions_secret(
    secret_arn: str, cli_seeded: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "--json")
    assert code == 0, err
    assert json.loads(out)["eligible"] == 12
    code, out, err = run_cli(capsys, "init-db")
    assert (code, err) == (0, "")
    assert "created" in out
    code, out, err = run_cli(capsys, "run", "--execute", "--no-progress")
    assert code == 0, err
    assert cli_seeded.count() == len(CLI_KEYS) - 12
    code, out, err = run_cli(capsys, "history")
    assert code == 0, err
    assert PASSWORD not in out + err


def test_an_unreadable_secret_fails_naming_the_setting(
    secret_arn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_SECRET_ARN", secret_arn.replace(":secret:db", ":secret:nope"))
    for argv in ([], ["init-db"], ["history"]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 1, argv
        assert err.startswith("keys-cleanup: error: DATABASE_SECRET_ARN: could not read")
        assert PASSWORD not in out + err


def test_without_any_database_setting_the_cli_says_which_to_set(
    cli_seeded: PgSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL")
    for argv in ([], ["init-db"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2
        assert "DATABASE_URL or DATABASE_SECRET_ARN" in err


def test_the_password_of_a_conninfo_from_the_secret_is_redacted() -> None:
    conninfo = conninfo_from_secret(
        {"host": "db.internal", "username": "cleanup", "password": PASSWORD, "dbname": "app"}
    ).get_secret_value()
    notify_secrets.register_conninfo(conninfo)
    assert PASSWORD not in notify_secrets.redact(f"connection failed; password was {PASSWORD}")


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
