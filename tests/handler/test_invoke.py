"""The function as Lambda runs it: the SAM build for this machine, started by the AWS Lambda
Runtime Interface Emulator with the awslambdaric runtime client (tools/invoke.py, `make invoke`).

This is the path `python -m handler.app` never takes: a cold import of the packaged artifact by
its handler string, the Runtime API, the real context and its deadline, the response's
serialisation, the error payload, and a warm second invocation in the same runtime process.

The artifact is built once per session into .aws-sam/invoke-tests; a file lock lets the
pytest-xdist workers share it. Every emulator binds its own free ports.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from handler.schema import seed_keys
from tests.support.db import PgSchema
from tests.support.handler import (
    FRESH,
    MASS_FRESH,
    MASS_OLD,
    OLD,
    PROTECTED,
    REPO,
    SCHEDULED_EVENT_ID,
    SETTING_VARS,
    idents,
)
from tests.support.handler import seed_mixed as seed_mixed_keys
from tests.support.notify import CHAT_ID, TOKEN, FakeBot, SentryEndpoint
from tools.invoke import (
    Build,
    Emulator,
    Function,
    Invocation,
    build,
    function_environment,
    load_function,
    resolve,
)

EVENTS = REPO / "events"


BUILD_DIR = REPO / ".aws-sam" / "invoke-tests"


@pytest.fixture(scope="session")
def artifact() -> Build:
    return build(BUILD_DIR, log=None)


@pytest.fixture(scope="session")
def function() -> Function:
    return load_function()


@pytest.fixture
def run(artifact: Build, function: Function) -> Iterator[Any]:
    """Start an emulator for the given function environment; every one is stopped after."""
    started: list[Emulator] = []

    def start(env: dict[str, str], timeout_s: int | None = None) -> Emulator:
        # caller={}: the developer's shell (a DATABASE_URL of their own) never leaks in.
        full = function_environment(
            function, artifact, caller={}, overrides=env, timeout_s=timeout_s
        )
        emulator = Emulator(artifact, function, full)
        started.append(emulator)
        emulator.start()
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


def json_lines(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if line.startswith("{")]


def emf_blobs(lines: list[str]) -> list[dict[str, Any]]:
    return [blob for blob in json_lines(lines) if "_aws" in blob]


def logs(lines: list[str], message: str) -> list[dict[str, Any]]:
    return [r for r in json_lines(lines) if r.get("message") == message]


def ok_payload(result: Invocation) -> dict[str, Any]:
    assert result.status == 200, result.body
    assert result.error is None, result.body
    payload = result.payload
    assert isinstance(payload, dict)
    return payload


@pytest.fixture
def mixed(pg: PgSchema) -> PgSchema:
    seed_mixed_keys(pg)
    return pg


@pytest.fixture
def mass(pg: PgSchema) -> PgSchema:
    pg.create_reference_table()
    pg.insert_keys(MASS_OLD + MASS_FRESH)
    return pg


# --- the template, resolved as `sam local` would --------------------------------------------


def test_template_gives_handler_timeout_memory_and_parameter_defaults(function: Function) -> None:
    assert (function.handler, function.runtime) == ("handler.app.lambda_handler", "python3.13")
    assert (function.timeout_s, function.memory_mb, function.log_format) == (900, 512, "Text")
    env = function.environment
    # !Ref to a parameter -> its default; the pseudo parameter AWS::StackName -> samconfig's.
    assert env["CLEANUP_RETENTION_DAYS"] == "30"
    assert env["SENTRY_ENVIRONMENT"] == "production"
    assert env["POWERTOOLS_SERVICE_NAME"] == "whatsapp-keys-cleanup"
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "WhatsAppKeysCleanup"
    assert env["SENTRY_DSN_PARAMETER"] == ""
    # A parameter without a default has no local value: left unset, not set to garbage.
    assert "DATABASE_SECRET_ARN" not in env
    assert function.unresolved == ("DATABASE_SECRET_ARN",)


def test_parameter_overrides_and_unresolvable_intrinsics() -> None:
    params = {"TableName": "keys", "AWS::Region": "eu-west-1"}
    assert resolve({"Ref": "TableName"}, params) == "keys"
    assert resolve({"Fn::Sub": "arn:${AWS::Region}:${TableName}"}, params) == "arn:eu-west-1:keys"
    assert resolve({"Fn::Sub": "${Missing}"}, params) is None
    assert resolve({"Fn::GetAtt": ["Queue", "Arn"]}, params) is None
    assert resolve(True, {}) == "true"
    assert resolve(512, {}) == "512"
    overridden = load_function(parameter_overrides={"RetentionDays": "45"})
    assert overridden.environment["CLEANUP_RETENTION_DAYS"] == "45"


def test_short_form_intrinsics_and_globals_are_read(tmp_path: Path) -> None:
    template = tmp_path / "template.yaml"
    template.write_text(
        """
Parameters:
  Table: {Type: String, Default: keys}
  Secret: {Type: String}
Globals:
  Function:
    Timeout: 30
    Environment:
      Variables: {SHARED: "yes", CLEANUP_TABLE: global}
Resources:
  Queue: {Type: AWS::SQS::Queue}
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.handler
      Runtime: python3.13
      Environment:
        Variables:
          CLEANUP_TABLE: !Ref Table
          QUEUE_ARN: !GetAtt Queue.Arn
          QUEUE_URL: !Ref Queue
          SECRET: !Ref Secret
          REGION_TABLE: !Sub "${AWS::Region}/${Table}"
          PICKED: !If [IsProd, a, b]
          ENABLED: true
"""
    )
    function = load_function(template, "Fn", region="eu-west-1")
    assert (function.timeout_s, function.memory_mb) == (30, 128)  # Globals, then Lambda's default
    assert function.environment == {
        "SHARED": "yes",
        "CLEANUP_TABLE": "keys",
        "REGION_TABLE": "eu-west-1/keys",
        "ENABLED": "true",
    }
    assert set(function.unresolved) == {"QUEUE_ARN", "QUEUE_URL", "SECRET", "PICKED"}


def test_caller_variables_win_over_the_template_and_nothing_else_leaks(
    function: Function, artifact: Build
) -> None:
    caller = {
        "DATABASE_URL": "postgresql://db.example/app",
        "CLEANUP_RETENTION_DAYS": "60",
        "AWS_REGION": "eu-central-1",
        "EDITOR": "vim",
        "VIRTUAL_ENV": "/somewhere/.venv",
        "AWS_LAMBDA_FUNCTION_TIMEOUT": "1",
    }
    env = function_environment(function, artifact, caller=caller, timeout_s=7, memory_mb=1024)
    assert env["DATABASE_URL"] == "postgresql://db.example/app"
    assert env["CLEANUP_RETENTION_DAYS"] == "60"
    assert env["CLEANUP_MIN_RETENTION_DAYS"] == "7"  # the template's, not overridden
    assert (env["AWS_REGION"], env["AWS_DEFAULT_REGION"]) == ("eu-central-1", "eu-central-1")
    assert "EDITOR" not in env
    assert "VIRTUAL_ENV" not in env
    # The timeout and memory come from the options, never from a stray shell variable.
    assert env["AWS_LAMBDA_FUNCTION_TIMEOUT"] == "7"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "1024"
    assert env["_HANDLER"] == "handler.app.lambda_handler"
    assert env["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.13"
    default = function_environment(function, artifact, caller={})
    assert (default["AWS_LAMBDA_FUNCTION_TIMEOUT"], default["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]) == (
        "900",
        "512",
    )


# What each file in events/ does to the mixed table (70 stale, 15 protected, 150 fresh), or to
# the mass table (80 of 100 stale: the safety guard trips) for force.json.
EXPECTED: dict[str, tuple[str, str, bool, int, set[tuple[str, str, str]]]] = {
    "scheduled.json": ("mixed", "completed", False, 70, idents(PROTECTED + FRESH)),
    "dry-run.json": ("mixed", "completed", True, 0, idents(OLD + PROTECTED + FRESH)),
    "verbose.json": ("mixed", "completed", True, 0, idents(OLD + PROTECTED + FRESH)),
    "live.json": ("mixed", "completed", False, 70, idents(PROTECTED + FRESH)),
    "force.json": ("mass", "completed", False, 80, idents(MASS_FRESH)),
}


def test_every_sample_event_has_an_expectation() -> None:
    assert {p.name for p in EVENTS.glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_event_through_the_emulator(pg: PgSchema, run: Any, name: str) -> None:
    table, status, dry_run, deleted, remaining = EXPECTED[name]
    if table == "mixed":
        seed_mixed_keys(pg)
    else:
        pg.create_reference_table()
        pg.insert_keys(MASS_OLD + MASS_FRESH)
    env = pg.env(CLEANUP_GUARD_MIN_KEYS="10")
    result = run(env).invoke(json.loads((EVENTS / name).read_text()))
    report = ok_payload(result)
    assert (report["status"], report["dry_run"], report["deleted"]) == (status, dry_run, deleted)
    assert pg.key_set() == remaining
    if name == "scheduled.json":
        assert report["event_id"] == SCHEDULED_EVENT_ID
    if name == "verbose.json":
        listed = {
            (e["key"]["company_id"], e["key_type"], e["key"]["key_id"]) for e in report["keys"]
        }
        assert listed == idents(OLD)
        assert "secret-" not in result.body.decode()  # the value column never leaves
    # The response is the report exactly as Lambda serialises the handler's return value.
    assert result.request_id is not None
    assert result.duration_ms is not None


def test_live_event_is_stopped_by_the_guard_in_the_emulator(mass: PgSchema, run: Any) -> None:
    result = run(mass.env(CLEANUP_GUARD_MIN_KEYS="10")).invoke({"dry_run": False})
    report = ok_payload(result)
    assert (report["status"], report["deleted"]) == ("aborted", 0)
    assert mass.count() == 100


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        pytest.param({"dry_run": "false"}, id="string-for-bool"),
        pytest.param({"dryrun": False}, id="unknown-key"),
        pytest.param([{"dry_run": False}], id="list"),
    ],
)
def test_invalid_event_is_a_configerror_function_error_and_deletes_nothing(
    mixed: PgSchema, run: Any, event: Any
) -> None:
    before = mixed.key_set()
    result = run(mixed.env()).invoke(event)
    assert result.error is not None
    error_type, message = result.error
    assert error_type == "ConfigError"
    assert "invalid flags" in message
    # Lambda's error payload: type, message, the request id and a stack trace.
    assert result.payload["requestId"] == result.request_id
    assert isinstance(result.payload["stackTrace"], list)
    assert mixed.key_set() == before


def test_unreachable_database_is_a_function_error_without_the_password(
    pg: PgSchema, run: Any
) -> None:
    password = "invokepasswordcanary_93f1"
    url = f"postgresql://cleanup:{password}@127.0.0.1:1/app?connect_timeout=2"
    result = run({"DATABASE_URL": url}).invoke({"dry_run": True})
    assert result.error is not None
    assert password not in result.body.decode()


SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:keys-cleanup-db-AbCdEf"


class SecretsManager:
    """Secrets Manager's GetSecretValue on pytest-httpserver (AWS_ENDPOINT_URL_SECRETS_MANAGER
    points the function's boto3 at it); counts the reads the function makes."""

    def __init__(self, server: HTTPServer, secret: dict[str, Any]) -> None:
        self.server = server
        self.secret = secret
        self.reads = 0
        server.expect_request(
            "/", method="POST", headers={"X-Amz-Target": "secretsmanager.GetSecretValue"}
        ).respond_with_handler(self._handle)

    @property
    def env(self) -> dict[str, str]:
        return {
            "DATABASE_SECRET_ARN": SECRET_ARN,
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": f"http://{self.server.host}:{self.server.port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }

    def _handle(self, request: Request) -> Response:
        self.reads += 1
        asked = json.loads(request.get_data())["SecretId"]
        body = {
            "ARN": SECRET_ARN,
            "Name": "keys-cleanup-db",
            "VersionId": "00000000-0000-4000-8000-000000000001",
            "SecretString": json.dumps(self.secret),
            "VersionStages": ["AWSCURRENT"],
            "CreatedDate": 1700000000.0,
        }
        status = 200 if asked == SECRET_ARN else 400
        return Response(json.dumps(body), status=status, content_type="application/x-amz-json-1.1")


def rds_secret(pg: PgSchema) -> dict[str, Any]:
    """The test server as an RDS-style secret (a socket directory for the embedded server)."""
    parts = conninfo_to_dict(pg.server_dsn)
    return {
        "host": parts.get("host") or "127.0.0.1",
        "port": int(parts.get("port") or 5432),
        "username": parts.get("user") or "postgres",
        "password": parts.get("password") or "unused-trust-auth",
        "dbname": parts["dbname"],
        "sslmode": "disable",
    }


def test_warm_invocation_behaves_like_the_cold_one(
    mixed: PgSchema, run: Any, httpserver: HTTPServer, sentry: SentryEndpoint
) -> None:
    """Two invocations in one runtime process: module state (Powertools, Sentry, the secret
    cache) is created once and reused, while each run is reported once, under its own id."""
    secrets = SecretsManager(httpserver, rds_secret(mixed))
    schema = mixed.schema
    env = {
        **secrets.env,
        # The secret holds no search_path: name the schema.
        "CLEANUP_TABLE": f"{schema}.whatsapp_keys",
        "CLEANUP_HISTORY_TABLE": f"{schema}.keys_cleanup_runs",
        "CLEANUP_MIN_RETENTION_DAYS": "1",
        "SENTRY_DSN": sentry.dsn,
        "SENTRY_ENVIRONMENT": "invoke-test",
    }
    emulator = run(env)
    cold = emulator.invoke({"dry_run": True})
    warm = emulator.invoke({"dry_run": True})
    first, second = ok_payload(cold), ok_payload(warm)
    emulator.stop()  # every line of output is in

    # The same run, twice: the warm one measures and reports exactly as the cold one did.
    for report in (first, second):
        assert (report["status"], report["eligible"], report["deleted"]) == ("completed", 70, 0)
        assert report["before"]["keys"] == 235
    assert mixed.count() == 235

    # Each invocation logs under its own request id, and only the first is a cold start.
    assert cold.request_id
    assert warm.request_id
    assert cold.request_id != warm.request_id
    for invocation, cold_start in ((cold, True), (warm, False)):
        (finished,) = [
            r
            for r in logs(emulator.lines, "run finished")
            if r["function_request_id"] == invocation.request_id
        ]
        assert finished["correlation_id"] == invocation.request_id
        assert finished["cold_start"] is cold_start

    # Metrics: two EMF blobs per run (the figures, then Runs), each value emitted once. A
    # Metrics object that kept the first run's values would double them on the warm run.
    blobs = emf_blobs(emulator.lines)
    assert len(blobs) == 4
    for blob in blobs:
        for metric in blob["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
            value = blob[metric["Name"]]
            assert not isinstance(value, list) or len(value) == 1, (metric["Name"], value)
    assert [b.get("Runs") for b in blobs if "Runs" in b] in ([[1.0], [1.0]], [1.0, 1.0])
    assert [b["status"] for b in blobs if "Runs" in b] == ["completed", "completed"]

    # The secret was read once: Powertools' cache held across the warm invocation.
    assert secrets.reads == 1
    # Sentry was initialised once, and reported each run.
    assert len(logs(emulator.lines, "sentry initialised")) == 1
    messages = [
        e for e in sentry.events() if e.get("message") == "WhatsApp session keys cleanup completed"
    ]
    assert len(messages) == 2


TIMEOUT_S = 10


# Every batch of the cleanup takes at least this long, as on a slow disk: with one page per
# batch the table below needs ~2,900 batches (14 s or more), over twice the handler's budget
# (the timeout less 3 s of reserve and the cold start), however fast this machine is.
SLOW_BATCH_S = 0.005


@pytest.mark.slow
def test_short_timeout_on_a_big_table_returns_partial_and_telegram_hears_of_it(
    pg: PgSchema, run: Any, httpserver: HTTPServer
) -> None:
    """The template's timeout overridden to a few seconds on a table that cannot be cleaned in
    that time: the handler stops deleting before the emulator would kill it, returns `partial`,
    and the Telegram summary reaches the (local) Bot API."""
    pg.create_reference_table()
    with pg.connect() as conn:
        seed_keys(conn, 60_000)
        conn.execute(
            "CREATE FUNCTION slow_disk() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_sleep({SLOW_BATCH_S}); RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE TRIGGER slow_disk BEFORE DELETE ON whatsapp_keys "
            "FOR EACH STATEMENT EXECUTE FUNCTION slow_disk()"
        )
    before = pg.count()
    bot = FakeBot(httpserver).install()
    env = pg.env(
        CLEANUP_BATCH_SIZE="1",  # one heap page per batch
        CLEANUP_DEADLINE_MARGIN_MS="0",
        TELEGRAM_BOT_TOKEN=TOKEN,
        TELEGRAM_CHAT_ID=CHAT_ID,
        TELEGRAM_API_URL=bot.api_url,
    )
    result = run(env, timeout_s=TIMEOUT_S).invoke({"dry_run": False, "force": True})
    report = ok_payload(result)  # not "Task timed out": the function answered in time
    assert report["status"] == "partial", report
    assert 0 < report["deleted"] < report["eligible"]
    assert "deadline" in report["reason"]
    assert pg.count() == before - report["deleted"]
    assert result.duration_ms is not None
    assert result.duration_ms < TIMEOUT_S * 1000
    (text,) = bot.texts
    assert "partial" in text
    assert bot.requests[0]["chat_id"] == CHAT_ID


def test_a_function_still_running_at_its_timeout_is_reported_as_timed_out(
    mixed: PgSchema, run: Any
) -> None:
    """What `make invoke` reports when the emulator does kill the function: here the table is
    locked by another session, and the measurement waits on it past the timeout."""
    env = mixed.env(CLEANUP_LOCK_TIMEOUT_MS="600000")
    with mixed.connect() as conn, conn.transaction():
        conn.execute("LOCK TABLE whatsapp_keys IN ACCESS EXCLUSIVE MODE")
        result = run(env, timeout_s=3).invoke({"dry_run": False})
    assert result.error is not None
    assert result.error[0] == "Sandbox.Timedout"
    assert result.body.startswith(b"Task timed out after 3.00 seconds")
    assert mixed.count() == 235


def make_invoke(pg: PgSchema, event: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTING_VARS}
    env.update(pg.env())
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            "invoke",
            f"EVENT={event}",
            f"INVOKE_DIR={BUILD_DIR}",
            *extra,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_make_invoke_prints_the_payload_on_stdout_and_size_and_duration_on_stderr(
    mixed: PgSchema, artifact: Build
) -> None:
    done = make_invoke(mixed, EVENTS / "dry-run.json", "TIMEOUT=60")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["status"], report["dry_run"], report["eligible"]) == ("completed", True, 70)
    summary = [line for line in done.stderr.splitlines() if line.startswith("invoke: HTTP 200")]
    assert len(summary) == 1, done.stderr
    assert f"response {len(done.stdout.strip().encode())} bytes" in summary[0]
    assert "ms round trip" in summary[0]
    assert "timeout 60 s, memory 512 MB" in summary[0]
    # The function's own log lines and metrics went to stderr, not into the payload.
    assert '"message":"run finished"' in done.stderr
    assert mixed.count() == 235


def test_make_invoke_fails_on_a_function_error_naming_type_and_message(
    mixed: PgSchema, artifact: Build, tmp_path: Path
) -> None:
    event = tmp_path / "bad.json"
    event.write_text('{"dry_run": false, "retention_days": "30"}')
    done = make_invoke(mixed, event)
    assert done.returncode != 0
    assert "function error: ConfigError: invalid flags: retention_days" in done.stderr
    assert json.loads(done.stdout)["errorType"] == "ConfigError"
    assert mixed.count() == 235
