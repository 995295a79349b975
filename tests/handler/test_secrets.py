"""Credentials and notifier secrets: DATABASE_URL or an RDS-style secret, SSM parameters, bounded
reads, the CLI with the function's secret.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import boto3
import pytest
import sentry_sdk
from aws_lambda_powertools.utilities.typing import LambdaContext
from moto import mock_aws
from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr
from pytest_httpserver import HTTPServer

from handler import notify
from handler import secrets as db_secrets
from handler.app import lambda_handler
from handler.cli import EXIT_FAILURE
from handler.cli import main as cli_main
from handler.local import LocalContext
from handler.notify import secrets as notify_secrets
from handler.secrets import (
    PROVIDERS,
    SecretError,
    conninfo_from_secret,
    database_url,
    read_secret,
    with_database_url,
)
from handler.settings import ConfigError, Settings
from tests.support.db import KeyRow, PgSchema
from tests.support.handler import invoke, set_lambda_env
from tests.support.notify import (
    CHAT_ID,
    TOKEN,
    FakeBot,
    SentryEndpoint,
    capture_logs,
    find_log,
    make_report,
    make_settings,
)

# No Sentry client enters or leaves a test here (another module's test may have left one).
pytestmark = pytest.mark.usefixtures("isolated_sentry")


REGION = "eu-west-1"


# Every character that means something in a URI or a keyword conninfo, and some that don't.
NASTY_PASSWORD = "p@ss:w/o#r?d%20&x=y 'q\" \\ é😀 host=evil"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A moto Secrets Manager, and Powertools' cache emptied before and after."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # The process keeps its providers (and their boto3 clients and caches): drop them, so the
    # clients are made inside this mock.
    PROVIDERS.reset()
    with mock_aws():
        yield boto3.client("secretsmanager", region_name=REGION)
    PROVIDERS.reset()


def rds_secret(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "engine": "postgres",
        "host": "db.cluster-abc.eu-west-1.rds.amazonaws.com",
        "port": 5432,
        "username": "cleanup",
        "password": "s3cret-value",
        "dbname": "app",
        "dbInstanceIdentifier": "app-db",
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def parsed(url: SecretStr) -> dict[str, Any]:
    return conninfo_to_dict(url.get_secret_value())


# --- building the conninfo ----------------------------------------------------------------


def test_conninfo_round_trips_every_field() -> None:
    info = parsed(conninfo_from_secret(rds_secret()))
    assert info == {
        "host": "db.cluster-abc.eu-west-1.rds.amazonaws.com",
        "port": "5432",
        "user": "cleanup",
        "password": "s3cret-value",
        "dbname": "app",
        "sslmode": "require",
    }


def test_conninfo_keeps_a_password_with_uri_and_conninfo_syntax_intact() -> None:
    secret = rds_secret(password=NASTY_PASSWORD, username="us@er:/x", dbname="d b/?#")
    info = parsed(conninfo_from_secret(secret))
    assert info["password"] == NASTY_PASSWORD
    assert info["user"] == "us@er:/x"
    assert info["dbname"] == "d b/?#"
    # The password's "host=evil" stayed inside the password.
    assert info["host"] == "db.cluster-abc.eu-west-1.rds.amazonaws.com"


def test_conninfo_brackets_an_ipv6_host() -> None:
    assert parsed(conninfo_from_secret(rds_secret(host="::1")))["host"] == "::1"
    assert parsed(conninfo_from_secret(rds_secret(host="[fd00::5]")))["host"] == "fd00::5"


def test_conninfo_defaults_port_dbname_and_sslmode() -> None:
    info = parsed(conninfo_from_secret(rds_secret(port=None, dbname=None)))
    assert (info["port"], info["dbname"], info["sslmode"]) == ("5432", "postgres", "require")


def test_conninfo_accepts_a_port_stored_as_text_and_an_sslmode_override() -> None:
    info = parsed(conninfo_from_secret(rds_secret(port="6543", sslmode="verify-full")))
    assert (info["port"], info["sslmode"]) == ("6543", "verify-full")


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"host": None}, "field host"),
        ({"username": None}, "field username"),
        ({"password": None}, "field password"),
        ({"port": "not-a-port"}, "field port"),
        ({"port": 70000}, "field port"),
        ({"sslmode": "sometimes"}, "field sslmode"),
        ({"host": ""}, "field host"),
    ],
)
def test_invalid_secret_names_the_field_and_never_the_password(
    fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError) as info:
        conninfo_from_secret(rds_secret(**{"password": NASTY_PASSWORD, **fields}))
    message = str(info.value)
    assert named in message
    assert "DATABASE_SECRET_ARN" in message
    assert NASTY_PASSWORD not in message
    assert "s3cret" not in message


# --- reading the secret (moto) --------------------------------------------------------------


def test_read_secret_returns_the_json_object(aws: Any) -> None:
    arn = aws.create_secret(Name="db", SecretString=json.dumps(rds_secret()))["ARN"]
    assert read_secret(arn)["username"] == "cleanup"


def test_secret_is_cached_across_warm_invocations(aws: Any) -> None:
    arn = aws.create_secret(Name="db", SecretString=json.dumps(rds_secret()))["ARN"]
    first = database_url(Settings.from_env({"DATABASE_SECRET_ARN": arn}))
    aws.put_secret_value(SecretId=arn, SecretString=json.dumps(rds_secret(password="rotated")))
    second = database_url(Settings.from_env({"DATABASE_SECRET_ARN": arn}))
    # The second "invocation" used the cached value: no new Secrets Manager read.
    assert parsed(second)["password"] == parsed(first)["password"] == "s3cret-value"
    PROVIDERS.reset()  # a new container, or the cache's max age passed
    third = database_url(Settings.from_env({"DATABASE_SECRET_ARN": arn}))
    assert parsed(third)["password"] == "rotated"


def test_missing_secret_is_a_secret_error_naming_the_setting(aws: Any) -> None:
    arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:missing-AbCdEf"
    with pytest.raises(SecretError, match="DATABASE_SECRET_ARN: could not read the secret"):
        read_secret(arn)


def test_non_json_secret_is_refused_without_echoing_it(aws: Any) -> None:
    arn = aws.create_secret(Name="db", SecretString="password=hunter2-canary")["ARN"]
    with pytest.raises(ConfigError, match="not JSON") as info:
        read_secret(arn)
    assert "hunter2" not in str(info.value)


def test_json_that_is_not_an_object_is_refused(aws: Any) -> None:
    arn = aws.create_secret(Name="db", SecretString='["hunter2-canary"]')["ARN"]
    with pytest.raises(ConfigError, match="not a JSON object") as info:
        read_secret(arn)
    assert "hunter2" not in str(info.value)


# --- choosing the source ----------------------------------------------------------------------


def test_database_url_wins_over_the_secret(aws: Any) -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://local@127.0.0.1/x",
            "DATABASE_SECRET_ARN": f"arn:aws:secretsmanager:{REGION}:123456789012:secret:n-AbCdEf",
        }
    )
    # The ARN does not exist: reading it would raise. It is never read.
    assert database_url(settings).get_secret_value() == "postgresql://local@127.0.0.1/x"
    assert with_database_url(settings) is settings


def test_no_database_setting_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL or DATABASE_SECRET_ARN"):
        database_url(Settings.from_env({}))


def test_handler_connects_with_the_secret_to_a_real_postgres(
    aws: Any, pg: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole path: secret -> URL -> engine -> report, with DATABASE_URL unset."""

    pg.create_reference_table()
    pg.insert_keys([KeyRow("c1", "session", "old", 60), KeyRow("c1", "session", "new", 1)])
    server = conninfo_to_dict(pg.dsn)
    arn = aws.create_secret(
        Name="db",
        SecretString=json.dumps(
            rds_secret(
                host=server.get("host", "127.0.0.1"),
                port=int(server.get("port", 5432)),
                username=server.get("user", "postgres"),
                # The test server trusts local connections; a password with URI syntax in
                # it proves the URL still parses into the right connection.
                password=NASTY_PASSWORD,
                dbname=server["dbname"],
                sslmode="disable",
            )
        ),
    )["ARN"]
    set_lambda_env(
        monkeypatch, pg, DATABASE_SECRET_ARN=arn, CLEANUP_TABLE=f"{pg.schema}.whatsapp_keys"
    )
    monkeypatch.delenv("DATABASE_URL")
    result = invoke({"dry_run": False})
    assert (result["status"], result["deleted"]) == ("completed", 1)
    assert pg.key_set() == {("c1", "session", "new")}
    assert NASTY_PASSWORD not in json.dumps(result)


@pytest.fixture
def no_region(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A laptop whose AWS configuration names no region (README step 1 runs the CLI there)."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    PROVIDERS.reset()
    yield
    PROVIDERS.reset()


def test_the_cli_reads_the_secret_in_its_arns_region_when_none_is_configured(
    pg: PgSchema,
    no_region: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`DATABASE_SECRET_ARN=<ARN> uv run keys-cleanup init-db` with no AWS region configured
    was "unexpected failure: NoRegionError"; the ARN names the region (eu-west-1)."""
    server = conninfo_to_dict(pg.dsn)
    with mock_aws():
        client = boto3.client("secretsmanager", region_name=REGION)
        arn = client.create_secret(
            Name="whatsapp-keys-cleanup/db",
            SecretString=json.dumps(
                rds_secret(
                    host=server.get("host", "127.0.0.1"),
                    port=int(server.get("port", 5432)),
                    username=server.get("user", "postgres"),
                    password=NASTY_PASSWORD,
                    dbname=server["dbname"],
                    sslmode="disable",
                )
            ),
        )["ARN"]
        assert f":{REGION}:" in arn
        monkeypatch.setenv("DATABASE_SECRET_ARN", arn)
        monkeypatch.setenv("CLEANUP_HISTORY_TABLE", f"{pg.schema}.keys_cleanup_runs")
        code = cli_main(["init-db"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "created" in captured.out


def test_a_secret_without_any_region_is_one_line_naming_the_setting(
    no_region: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A secret's name (not an ARN) carries no region: say so, not "NoRegionError"."""
    monkeypatch.setenv("DATABASE_SECRET_ARN", "whatsapp-keys-cleanup/db")
    code = cli_main(["init-db"])
    err = capsys.readouterr().err
    assert code == EXIT_FAILURE, err
    assert "unexpected failure" not in err
    assert "DATABASE_SECRET_ARN" in err
    assert "region" in err.lower()
    assert err.count("\n") == 1


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


@pytest.fixture
def aws_parameters(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    PROVIDERS.reset()
    with mock_aws():
        yield
    PROVIDERS.reset()


@pytest.mark.usefixtures("aws_parameters")
def test_dsn_from_secrets_manager_and_token_from_ssm(sentry: SentryEndpoint, bot: FakeBot) -> None:
    arn = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="keys-cleanup/sentry-dsn", SecretString=sentry.dsn
    )["ARN"]
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name="/keys-cleanup/telegram-token", Value=TOKEN, Type="SecureString"
    )
    settings = make_settings(
        sentry_dsn_parameter=arn,
        telegram_bot_token_parameter="/keys-cleanup/telegram-token",
        telegram_chat_id=CHAT_ID,
        telegram_api_url=bot.api_url,
    )

    notify.init(settings)
    notify.after_run(make_report(), settings, deadline=time.monotonic() + 10)

    assert sentry_sdk.is_initialized()
    assert [e["message"] for e in sentry.events()] == ["WhatsApp session keys cleanup completed"]
    assert bot.paths == [f"/bot{TOKEN}/sendMessage"]


@pytest.mark.usefixtures("aws_parameters")
def test_dsn_from_ssm_and_token_from_secrets_manager(sentry: SentryEndpoint, bot: FakeBot) -> None:
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name="/keys-cleanup/sentry-dsn", Value=sentry.dsn, Type="SecureString"
    )
    arn = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="keys-cleanup/telegram-token", SecretString=TOKEN
    )["ARN"]
    settings = make_settings(
        sentry_dsn_parameter="/keys-cleanup/sentry-dsn",
        telegram_bot_token_parameter=arn,
        telegram_chat_id=CHAT_ID,
        telegram_api_url=bot.api_url,
    )

    with notify.cron_monitor(settings):
        pass
    notify.after_run(make_report(), settings, deadline=time.monotonic() + 10)

    assert [c["status"] for c in sentry.checkins()] == ["in_progress", "ok"]
    assert bot.paths == [f"/bot{TOKEN}/sendMessage"]


@pytest.mark.usefixtures("aws_parameters")
def test_parameter_wins_over_the_environment(bot: FakeBot) -> None:
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name="/keys-cleanup/telegram-token", Value=TOKEN, Type="SecureString"
    )
    settings = make_settings(
        telegram_bot_token="111:stale-token-from-env",
        telegram_bot_token_parameter="/keys-cleanup/telegram-token",
        telegram_chat_id=CHAT_ID,
        telegram_api_url=bot.api_url,
    )
    notify.after_run(make_report(), settings, deadline=None)

    assert bot.paths == [f"/bot{TOKEN}/sendMessage"]


@pytest.mark.usefixtures("aws_parameters")
def test_unreadable_parameters_are_logged_and_the_run_goes_on(bot: FakeBot) -> None:
    settings = make_settings(
        sentry_dsn_parameter="/keys-cleanup/missing-dsn",
        telegram_bot_token_parameter="arn:aws:secretsmanager:eu-west-1:123456789012:secret:nope",
        telegram_chat_id=CHAT_ID,
        telegram_api_url=bot.api_url,
    )
    with capture_logs() as lines:
        notify.init(settings)
        notify.after_run(make_report(), settings, deadline=None)

    assert not sentry_sdk.is_initialized()
    disabled = find_log(lines(), "sentry disabled")
    assert disabled
    assert {line["reason"] for line in disabled} == {"dsn unreadable"}
    (failed,) = find_log(lines(), "notification failed")
    assert failed["channel"] == "telegram"
    assert failed["error"].startswith("GetParameterError: ")
    assert bot.requests == []
