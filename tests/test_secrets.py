"""Database credentials from DATABASE_URL or an RDS-style Secrets Manager secret (moto).

The end-to-end test connects with the URL built from the secret, to a real PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from conftest import KeyRow, PgSchema
from moto import mock_aws
from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr

from handler.secrets import (
    PROVIDERS,
    SecretError,
    conninfo_from_secret,
    database_url,
    read_secret,
    with_database_url,
)
from handler.settings import ConfigError, Settings

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
    from test_app import invoke, set_lambda_env  # noqa: PLC0415 - shared handler helpers

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
