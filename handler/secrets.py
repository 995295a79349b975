"""Database credentials: DATABASE_URL as given, or an RDS-style Secrets Manager secret.

The secret is read through Powertools Parameters, whose provider caches it in the process, so
warm invocations skip the Secrets Manager call. Nothing here logs or echoes a value: errors
name the setting or the secret's field, never its content.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Literal

import botocore.session
from aws_lambda_powertools.utilities import parameters
from botocore.config import Config  # botocore comes with boto3, which the runtime ships
from botocore.exceptions import BotoCoreError, NoRegionError
from psycopg.conninfo import make_conninfo
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from handler.errors import ConfigError
from handler.errors import SecretError as SecretError  # noqa: PLC0414 - re-exported
from handler.settings import Settings, format_validation_error

# Five minutes: a warm container reuses the value (one run a day rarely finds one warm, but
# Lambda's retry and hand-triggered runs do), and a rotated password is picked up soon after.
SECRET_MAX_AGE_S = 300

# botocore's defaults (60 s connect, 60 s read, 3 attempts) let one read of an endpoint that
# never answers take 180 s of a 15-minute run. A secret is a few hundred bytes from a regional
# endpoint: a second to connect and a few to answer are plenty, and one retry covers a blip.
AWS_CONFIG = Config(
    connect_timeout=2, read_timeout=5, retries={"max_attempts": 2, "mode": "standard"}
)

# A Secrets Manager ARN in any partition: aws, aws-cn, aws-us-gov, aws-iso, ...
_SECRETS_MANAGER_ARN = re.compile(r"arn:aws[a-z-]*:secretsmanager:")
# arn:<partition>:secretsmanager:<region>:<account>:secret:<name>
_ARN_REGION = re.compile(r"arn:aws[a-z-]*:secretsmanager:([a-z]{2}(?:-[a-z]+)+-\d+):")


def is_secrets_manager(reference: str) -> bool:
    return _SECRETS_MANAGER_ARN.match(reference) is not None


def region_of(reference: str) -> str | None:
    """The region a Secrets Manager ARN names, or None (a secret's name names none)."""
    match = _ARN_REGION.match(reference)
    return match.group(1) if match else None


def _configured_region() -> str | None:
    """The region boto3 would use: AWS_REGION, AWS_DEFAULT_REGION or the AWS config file (read
    only when neither variable is set, as on a laptop: a Lambda always has AWS_REGION)."""
    if region := os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
        return region
    region = botocore.session.get_session().get_config_variable("region")
    return region if isinstance(region, str) and region else None


class _Providers:
    """The process's Powertools providers, built with AWS_CONFIG instead of botocore's defaults.

    Module-level, so their cache spans warm invocations; each is made on first use, because a
    boto3 client made at import needs a region, which a local CLI run may not have.
    """

    def __init__(self) -> None:
        self._secrets: dict[str | None, parameters.SecretsProvider] = {}
        self._ssm: parameters.SSMProvider | None = None

    def secrets_for(self, arn: str) -> parameters.SecretsProvider:
        """The Secrets Manager provider for `arn`: in the configured region (the Lambda always
        has one), else in the region the ARN names, as on a laptop without an AWS region.
        botocore's errors (NoRegionError, ...) reach the caller."""
        region = None if _configured_region() else region_of(arn)
        if region not in self._secrets:
            config = AWS_CONFIG if region is None else AWS_CONFIG.merge(Config(region_name=region))
            self._secrets[region] = parameters.SecretsProvider(boto_config=config)
        return self._secrets[region]

    @property
    def ssm(self) -> parameters.SSMProvider:
        if self._ssm is None:
            self._ssm = parameters.SSMProvider(boto_config=AWS_CONFIG)
        return self._ssm

    def reset(self) -> None:
        """Forget the providers and their cached values (a new container, for the tests)."""
        self._secrets = {}
        self._ssm = None


PROVIDERS = _Providers()


def get_secret(arn: str, max_age: int) -> str | bytes:
    value = PROVIDERS.secrets_for(arn).get(arn, max_age=max_age)
    return value if isinstance(value, str | bytes) else ""


def get_parameter(name: str, max_age: int) -> str | bytes:
    value = PROVIDERS.ssm.get(name, decrypt=True, max_age=max_age)
    return value if isinstance(value, str | bytes) else ""


SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class RdsSecret(BaseModel):
    """The fields of an RDS-style secret that make a connection; the rest is ignored.

    `sslmode` is not part of the RDS format. It defaults to `require` because RDS always offers
    TLS and the connection leaves the function; a secret may set it for other servers.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    host: str = Field(min_length=1)
    port: int = Field(5432, ge=1, le=65535)
    username: str = Field(min_length=1)
    password: SecretStr
    dbname: str = Field("postgres", min_length=1)
    sslmode: SslMode = "require"


def conninfo_from_secret(secret: Mapping[str, Any]) -> SecretStr:
    """A libpq connection string from an RDS-style secret, built by psycopg's make_conninfo.

    make_conninfo quotes every value, so a password holding spaces, quotes, backslashes or
    `host=` stays one value and cannot change where or how libpq connects.
    """
    try:
        fields = RdsSecret.model_validate(dict(secret))
    except ValidationError as exc:
        raise ConfigError(
            "DATABASE_SECRET_ARN: invalid secret: "
            + format_validation_error(exc, prefix="field ")
            + ". An RDS-style secret holds host, port, username, password and dbname."
        ) from None
    return SecretStr(
        make_conninfo(
            "",
            host=fields.host.strip("[]"),  # an IPv6 literal, written as in a URL
            port=fields.port,
            user=fields.username,
            password=fields.password.get_secret_value(),
            dbname=fields.dbname,
            sslmode=fields.sslmode,
        )
    )


def read_secret(arn: str) -> Mapping[str, Any]:
    """The secret's JSON object (Powertools' json transform), cached for SECRET_MAX_AGE_S
    across warm invocations."""
    try:
        provider = PROVIDERS.secrets_for(arn)
    except BotoCoreError as exc:  # no region anywhere, a broken AWS config: no secret in it
        hint = (
            " (set AWS_REGION, or give the secret's full ARN, which names its region)"
            if isinstance(exc, NoRegionError)
            else ""
        )
        raise SecretError(
            f"DATABASE_SECRET_ARN: could not read the secret: {type(exc).__name__}: {exc}{hint}"
        ) from None
    try:
        data = provider.get(arn, max_age=SECRET_MAX_AGE_S, transform="json")
    except parameters.exceptions.TransformParameterError:
        raise ConfigError("DATABASE_SECRET_ARN: the secret is not JSON") from None
    except parameters.exceptions.GetParameterError as exc:
        # Powertools' message is the AWS error (code and text), which holds no secret value.
        raise SecretError(f"DATABASE_SECRET_ARN: could not read the secret: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("DATABASE_SECRET_ARN: the secret is not a JSON object")
    return data


def database_url(settings: Settings) -> SecretStr:
    """DATABASE_URL when set (it wins, for local runs), else the URL built from the secret."""
    if settings.database_url is not None:
        return settings.database_url
    if settings.database_secret_arn:
        return conninfo_from_secret(read_secret(settings.database_secret_arn))
    raise ConfigError("no database: set DATABASE_URL or DATABASE_SECRET_ARN")


def with_database_url(settings: Settings) -> Settings:
    """`settings` with `database_url` resolved, the form the engine and notifiers take."""
    url = database_url(settings)
    if url is settings.database_url:
        return settings
    return settings.model_copy(update={"database_url": url})
