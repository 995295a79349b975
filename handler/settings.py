"""The one place that reads the environment, and the strict flags model for events and argv.

`Settings.from_env()` validates every variable once and raises `ConfigError`, whose message
names each bad variable and never echoes its value (a value may be a secret).
`notification_settings()` reads the notifiers' variables alone (SENTRY_*, TELEGRAM_*), with
the same fields: Settings extends NotifySettings. It serves what must not depend on the rest:
a scheduled run's first check-in, and the report of settings that fail to load.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from handler.errors import ConfigError as ConfigError  # noqa: PLC0414 - re-exported
from handler.keyparse import KEY_TYPES, key_type_of

# A plain SQL identifier. Quoted, unicode or dotted names are refused rather than guessed at:
# this tool deletes rows, so an odd name is far more likely a typo or an attack than a need.
IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})

# Losing these breaks history sync and phone-number/LID mapping, and they are few. They stay
# protected whatever CLEANUP_PROTECTED_KEY_TYPES says (a typo there must not strip protection);
# only CLEANUP_UNPROTECT_KEY_TYPES, which accepts nothing but these names, lifts it.
DEFAULT_PROTECTED_KEY_TYPES = (
    "app-state-sync-key",
    "app-state-sync-version",
    # Read only by migrateSession, when a contact's LID is learnt, but written only when we
    # fetch the contact's devices to send: a contact who writes to us looks idle here, and
    # without the row its session is not moved to the LID (docs/key-lifecycle.md).
    "device-list",
    "lid-mapping",
)
# Every type Baileys writes (SignalDataTypeMap in src/Types/Auth.ts), spelt as it spells them.
BAILEYS_KEY_TYPES = frozenset(KEY_TYPES)
MAX_RETENTION_DAYS = 3650
# Baileys' INITIAL_PREKEY_COUNT (src/Defaults/index.ts): the largest single upload. A window
# below it could delete pre-keys of the last upload that the server still holds.
INITIAL_PREKEY_COUNT = 812
DEFAULT_PREKEY_WINDOW = 1000


# A column setting whose value `none` (any case) says "no such column". An empty value means
# "unset, the default" here too: an env file or docker-compose `${VAR}` passes an unset
# variable as '', and that must not switch the built-in protection off.
NO_COLUMN = "none"
# Variables with this prefix are ours: an unknown one is most likely a misspelt setting.
SETTINGS_PREFIX = "CLEANUP_"


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem: `NAME: message`, without the offending input (it may be secret)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        name = ".".join(str(p) for p in err["loc"]) or "(settings)"
        # pydantic prefixes a validator's own message with "Value error, ": noise to a reader.
        parts.append(f"{prefix}{name}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _identifier(value: str) -> str:
    if not IDENTIFIER_RE.fullmatch(value):
        raise ValueError(
            "must be a plain SQL identifier (letters, digits, _ or $; starting with a letter "
            "or _; at most 63 characters)"
        )
    return value


def _split_table(value: str) -> tuple[str | None, str]:
    parts = value.split(".")
    if len(parts) == 1:
        return None, _identifier(parts[0])
    if len(parts) == 2:
        return _identifier(parts[0]), _identifier(parts[1])
    raise ValueError("must be `table` or `schema.table`")


def _table(value: str) -> str:
    schema, _ = _split_table(value)
    if schema is not None and (
        schema.lower() in SYSTEM_SCHEMAS or schema.lower().startswith("pg_")
    ):
        raise ValueError(f"refusing a table in the system schema {schema}")
    return value


def _optional_table(value: str | None) -> str | None:
    return None if value is None else _table(value)


def closest(name: str, candidates: Sequence[str]) -> str | None:
    """The candidate closest to `name` when one is close enough to be a likely typo."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
    return matches[0] if matches else None


UNPARSABLE_DSN = (
    "DATABASE_URL cannot be parsed: in a URL percent-encode the user name and password (% as "
    "%25); in a key=value string quote a value holding spaces, as password='...'"
)


def _parsable(url: str) -> None:
    """Refuse what libpq cannot parse: its parse error quotes the token it stopped at, which
    may be the password (a raw % in a URL, an unquoted space in a key=value string)."""
    try:
        conninfo_to_dict(url)
    except psycopg.Error:
        raise ConfigError(UNPARSABLE_DSN) from None


def check_database_url(url: str) -> None:
    """Refuse a postgres URL whose password breaks the URL syntax, before libpq sees it.

    libpq splits userinfo at the last `@` no more than a browser does: a password holding a raw
    `@` makes the rest of the password the host name, and "could not translate host name"
    then prints that fragment. The message names the problem and never echoes any part.
    """
    _parsable(url)
    if not url.startswith(("postgresql://", "postgres://")):
        return  # a key=value conninfo string: libpq parses it, quoting and all
    rest = url.split("://", 1)[1]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if authority.count("@") > 1:
        raise ConfigError(
            "DATABASE_URL: the user name or password holds an unencoded '@'; percent-encode "
            "it (@ as %40, : as %3A, / as %2F, # as %23, ? as %3F, % as %25)"
        )
    try:
        urlsplit(url).port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ConfigError(
            "DATABASE_URL is not a valid URL (a bad port, or a password holding ':', '/', '#' "
            "or '?' unencoded); percent-encode the user name and password"
        ) from None


def _database_url(value: SecretStr | None) -> SecretStr | None:
    if value is not None:
        try:
            check_database_url(value.get_secret_value())
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("DATABASE_URL: ")) from None
    return value


_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _telegram_api_url(value: str) -> str:
    """The Bot API's base URL: https with a host (plain http only to this machine, where a
    local fake or proxy listens), and nothing the token's path would be appended to badly.
    Checked at load, so a live run never deletes and then fails to send its alert."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError("must be a URL such as https://api.telegram.org (a bad port)") from None
    host = parts.hostname or ""
    if parts.scheme == "http" and host not in _LOOPBACK_HOSTS:
        raise ValueError(
            "must use https:// (http:// only to localhost, which would send the token in clear)"
        )
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError("must be an https:// URL with a host, such as https://api.telegram.org")
    if "@" in parts.netloc or parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError(
            "must be a base URL without user name, password, query or fragment, such as "
            "https://api.telegram.org"
        )
    if re.search(r"/bot[^/]*:", parts.path):
        raise ValueError("must be the base URL only: the bot token is added to it, not part of it")
    return value


def _timezone(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        hint = closest(value, sorted(available_timezones()))
        raise ValueError(
            "must be an IANA time zone name such as UTC or Europe/Berlin"
            + (f" (did you mean {hint}?)" if hint else "")
        ) from None
    return value


def _unprotect(value: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [v for v in value if v not in DEFAULT_PROTECTED_KEY_TYPES]
    if unknown:
        raise ValueError(
            "lists only built-in protected types ("
            + ", ".join(DEFAULT_PROTECTED_KEY_TYPES)
            + "); not "
            + ", ".join(unknown)
        )
    return value


def _csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _retention_map(value: Any) -> Any:
    """`pre-key=60,session=45` -> {"pre-key": 60, "session": 45}."""
    if not isinstance(value, str):
        return value
    result: dict[str, str] = {}
    for item in _csv(value):
        key_type, sep, days = item.partition("=")
        if not sep or not key_type.strip() or not days.strip():
            raise ValueError("must be a comma-separated list of key-type=days")
        if key_type.strip() in result:
            raise ValueError(f"names {key_type.strip()[:64]} twice: give each type one value")
        result[key_type.strip()] = days.strip()
    return result


def _separator(value: str | None) -> str | None:
    """The session prefix's separator: short, printable, and not "-" (types hold it)."""
    if value is None:
        return None
    if len(value) > 8 or not value.isprintable() or "-" in value or value.strip() != value:
        raise ValueError(
            "must be 1 to 8 printable characters without '-' or surrounding spaces, such as ':'"
        )
    return value


def _creds_key(value: str) -> str:
    if len(value) > 255 or not value.isprintable() or value.strip() != value:
        raise ValueError("must be 1 to 255 printable characters without surrounding spaces")
    if (key_type := key_type_of(value)) is not None:
        # It would be read as a key of that type, and could then be deleted.
        raise ValueError(f"reads as a key of type {key_type}: name the creds row's own key")
    return value


# One key of CLEANUP_CREDS_PATH: a plain JSON object key, no spaces, dots or quotes.
CREDS_PATH_KEY_RE = re.compile(r"[A-Za-z_$][A-Za-z0-9_$-]{0,62}")
MAX_CREDS_PATH_DEPTH = 8


def _creds_path(value: Any) -> Any:
    """`creds` or `a.b` -> ("creds",) / ("a", "b"); each key a plain name, at most 8 deep."""
    if not isinstance(value, str):
        return value
    keys = value.split(".")
    if len(keys) > MAX_CREDS_PATH_DEPTH or not all(CREDS_PATH_KEY_RE.fullmatch(k) for k in keys):
        raise ValueError(
            "must be dot-separated JSON keys such as creds (each a letter, _ or $ then letters, "
            f"digits, _, $ or -, at most {MAX_CREDS_PATH_DEPTH} keys)"
        )
    return tuple(keys)


RetentionDays = Annotated[int, Field(ge=1, le=MAX_RETENTION_DAYS)]
Identifier = Annotated[str, AfterValidator(_identifier)]


# Every settings model: aliases are the variable names, others are ignored, values are final.
SETTINGS_CONFIG = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class SentrySettings(BaseModel):
    """The SENTRY_* settings: errors, run messages and the Crons monitor."""

    model_config = SETTINGS_CONFIG

    sentry_dsn: SecretStr | None = Field(None, alias="SENTRY_DSN")
    sentry_dsn_parameter: str | None = Field(None, alias="SENTRY_DSN_PARAMETER")
    sentry_environment: str = Field("production", alias="SENTRY_ENVIRONMENT")
    sentry_monitor_slug: str = Field("whatsapp-keys-cleanup", alias="SENTRY_MONITOR_SLUG")
    sentry_schedule: str = Field("0 3 * * *", alias="SENTRY_CRON_SCHEDULE")
    sentry_checkin_margin_min: int = Field(10, ge=1, alias="SENTRY_CHECKIN_MARGIN_MINUTES")
    sentry_max_runtime_min: int = Field(16, ge=1, alias="SENTRY_MAX_RUNTIME_MINUTES")


class TelegramSettings(BaseModel):
    """The TELEGRAM_* settings: the chat that gets the summaries and alerts."""

    model_config = SETTINGS_CONFIG

    telegram_bot_token: SecretStr | None = Field(None, alias="TELEGRAM_BOT_TOKEN")
    telegram_bot_token_parameter: str | None = Field(None, alias="TELEGRAM_BOT_TOKEN_PARAMETER")
    telegram_chat_id: str | None = Field(None, alias="TELEGRAM_CHAT_ID")
    telegram_api_url: Annotated[str, AfterValidator(_telegram_api_url)] = Field(
        "https://api.telegram.org", alias="TELEGRAM_API_URL"
    )
    telegram_notify_dry_run: bool = Field(False, alias="TELEGRAM_NOTIFY_DRY_RUN")
    telegram_timeout_s: float = Field(10.0, gt=0, le=60, alias="TELEGRAM_TIMEOUT_S")


class NotifySettings(SentrySettings, TelegramSettings):
    """What the notifiers need, and nothing of the cleanup's: Settings is one of these.

    `notification_settings()` reads it on its own, so that a scheduled run checks in before the
    full settings are read, and a run whose full settings fail to load is still reported.
    """


class Settings(NotifySettings):
    """Every setting, read from the environment once. Field aliases are the variable names.

    The Sentry and Telegram fields come from NotifySettings (SentrySettings, TelegramSettings).
    """

    # Target
    database_url: Annotated[SecretStr | None, AfterValidator(_database_url)] = Field(
        None, alias="DATABASE_URL"
    )
    database_secret_arn: str | None = Field(None, alias="DATABASE_SECRET_ARN")
    table: Annotated[str, AfterValidator(_table)] = Field("whatsapp_keys", alias="CLEANUP_TABLE")
    # How keys are stored (docs/layouts.md): `columns`, a key-type and a key-id column beside an
    # auth table; `encoded`, one key column holding "<type>-<id>" and the creds in the same table.
    layout: Literal["columns", "encoded"] = Field("columns", alias="CLEANUP_LAYOUT")
    # None (`none`): the table has no timestamp; the age rule is off.
    timestamp_column: Identifier | None = Field("updated_at", alias="CLEANUP_TIMESTAMP_COLUMN")
    key_type_column: Identifier | None = Field("key_type", alias="CLEANUP_KEY_TYPE_COLUMN")
    # The zone the application writes a `timestamp without time zone` column in. Without it
    # such a column is read as UTC wall time in dry runs, and live runs refuse.
    timestamp_timezone: Annotated[str | None, AfterValidator(_timezone)] = Field(
        None, alias="CLEANUP_TIMESTAMP_TIMEZONE"
    )

    # Policy
    retention_days: RetentionDays = Field(30, alias="CLEANUP_RETENTION_DAYS")
    min_retention_days: RetentionDays = Field(7, alias="CLEANUP_MIN_RETENTION_DAYS")
    # Extra protected types, added to the built-in ones.
    extra_protected_key_types: tuple[str, ...] = Field((), alias="CLEANUP_PROTECTED_KEY_TYPES")
    unprotected_key_types: Annotated[tuple[str, ...], AfterValidator(_unprotect)] = Field(
        (), alias="CLEANUP_UNPROTECT_KEY_TYPES"
    )
    type_retention_days: dict[str, RetentionDays] = Field(
        default_factory=dict, alias="CLEANUP_TYPE_RETENTION_DAYS"
    )
    max_delete_fraction: float = Field(0.5, gt=0, le=1, alias="CLEANUP_MAX_DELETE_FRACTION")
    guard_min_keys: int = Field(1000, ge=0, alias="CLEANUP_GUARD_MIN_KEYS")
    dry_run_scheduled: bool = Field(False, alias="CLEANUP_DRY_RUN")
    # The TTL rule (opt-in): a key whose expiry has passed is deleted whatever its age. Off by
    # default: the reference adapter stamps 7-day TTLs on sessions and pre-keys, which would
    # silently override the retention (docs/key-lifecycle.md).
    expires_column: Identifier | None = Field(None, alias="CLEANUP_EXPIRES_COLUMN")
    # One row per connected tenant holding its Baileys creds. Unset: `whatsapp_auth` beside
    # the key table, when it exists. The pre-key window and the own-device rules read it.
    auth_table: Annotated[str | None, AfterValidator(_optional_table)] = Field(
        None, alias="CLEANUP_AUTH_TABLE"
    )
    creds_column: Identifier = Field("creds", alias="CLEANUP_CREDS_COLUMN")
    # The auth table's own tenant column (unset: CLEANUP_TENANT_COLUMN), and where the creds
    # sit inside the creds column's JSON (unset: the value itself; ticketz: `creds`).
    auth_tenant_column: Identifier | None = Field(None, alias="CLEANUP_AUTH_TENANT_COLUMN")
    creds_path: tuple[str, ...] = Field((), alias="CLEANUP_CREDS_PATH")
    # None (`none`): one session per table (or, encoded, the session prefix of the key).
    tenant_column: Identifier | None = Field("company_id", alias="CLEANUP_TENANT_COLUMN")
    key_id_column: Identifier = Field("key_id", alias="CLEANUP_KEY_ID_COLUMN")
    # The encoded layout (CLEANUP_LAYOUT=encoded): the key column ("<type>-<id>"), the separator
    # after a session prefix inside the key ("<session>:<type>-<id>"; unset: no prefix), the
    # value column and the key of the creds row (per session).
    key_column: Identifier = Field("key", alias="CLEANUP_KEY_COLUMN")
    session_separator: Annotated[str | None, AfterValidator(_separator)] = Field(
        None, alias="CLEANUP_KEY_SESSION_SEPARATOR"
    )
    value_column: Identifier = Field("value", alias="CLEANUP_VALUE_COLUMN")
    creds_key: Annotated[str, AfterValidator(_creds_key)] = Field(
        "creds", alias="CLEANUP_CREDS_KEY"
    )
    # Pre-keys kept per tenant below the first un-uploaded id: the newest uploaded ones, which
    # the server may still hand out. Baileys uploads 812 at most at once (INITIAL_PREKEY_COUNT).
    prekey_window: int = Field(
        DEFAULT_PREKEY_WINDOW, ge=INITIAL_PREKEY_COUNT, le=1_000_000, alias="CLEANUP_PREKEY_WINDOW"
    )
    # The old rule, opt-in only: pre-keys by updated_at alone, which breaks first messages.
    prekey_age_only: bool = Field(False, alias="CLEANUP_PREKEY_AGE_ONLY")
    # The orphaned-tenant rule (opt-in): keys of tenants without an auth row.
    orphan_rule: bool = Field(False, alias="CLEANUP_ORPHAN_RULE")
    orphan_grace_days: RetentionDays = Field(1, alias="CLEANUP_ORPHAN_GRACE_DAYS")
    # A quarter, not a half: see docs/rules.md (a half-loaded auth table passed 0.5).
    max_orphan_tenant_fraction: float = Field(
        0.25, gt=0, le=1, alias="CLEANUP_MAX_ORPHAN_TENANT_FRACTION"
    )
    # More orphaned tenants than this in one run: the rule is refused (a note).
    max_orphan_tenants: int = Field(100, ge=1, le=1_000_000, alias="CLEANUP_MAX_ORPHAN_TENANTS")

    # Execution
    batch_size: int = Field(2500, ge=1, le=1_000_000, alias="CLEANUP_BATCH_SIZE")
    lock_timeout_ms: int = Field(2000, ge=1, le=600_000, alias="CLEANUP_LOCK_TIMEOUT_MS")
    batch_timeout_ms: int = Field(5000, ge=10, le=600_000, alias="CLEANUP_BATCH_TIMEOUT_MS")
    statement_timeout_ms: int = Field(
        300_000, ge=100, le=3_600_000, alias="CLEANUP_STATEMENT_TIMEOUT_MS"
    )
    batch_attempts: int = Field(3, ge=1, le=20, alias="CLEANUP_BATCH_ATTEMPTS")
    connect_timeout_s: int = Field(10, ge=1, le=120, alias="CLEANUP_CONNECT_TIMEOUT_S")
    deadline_margin_ms: int = Field(60_000, ge=0, alias="CLEANUP_DEADLINE_MARGIN_MS")

    # Pacing (handler/pacing.py, docs/pacing.md)
    target_batch_ms: int = Field(50, ge=5, le=60_000, alias="CLEANUP_TARGET_BATCH_MS")
    # None: derived from max_wal_size and checkpoint_timeout; 0: unlimited.
    wal_bytes_per_s: int | None = Field(None, ge=0, alias="CLEANUP_WAL_BYTES_PER_S")
    # 64 MiB: a few seconds of replay behind at worst, ~30 batches of WAL; 0: not watched.
    max_replica_lag_bytes: int = Field(64 << 20, ge=0, alias="CLEANUP_MAX_REPLICA_LAG_BYTES")
    throttle_max_wait_s: float = Field(300.0, ge=0, le=3600, alias="CLEANUP_THROTTLE_MAX_WAIT_S")

    # Reporting
    warning_threshold: int = Field(1000, ge=0, alias="CLEANUP_WARNING_THRESHOLD")
    verbose_limit: int = Field(100, ge=0, le=100_000, alias="CLEANUP_VERBOSE_LIMIT")
    top_tenants: int = Field(5, ge=0, le=100, alias="CLEANUP_TOP_TENANTS")
    history_enabled: bool = Field(True, alias="CLEANUP_HISTORY")
    history_table: Annotated[str, AfterValidator(_table)] = Field(
        "keys_cleanup_runs", alias="CLEANUP_HISTORY_TABLE"
    )

    # Set by from_env, not by a variable: unknown CLEANUP_* names, with the closest known one
    # (a warning; a live run refuses them, see check_flags), and settings left off.
    config_warnings: tuple[str, ...] = ()
    unknown_settings: tuple[str, ...] = ()

    _split_lists = field_validator(
        "extra_protected_key_types", "unprotected_key_types", mode="before"
    )(_csv)
    _split_map = field_validator("type_retention_days", mode="before")(_retention_map)
    _split_path = field_validator("creds_path", mode="before")(_creds_path)

    @field_validator(
        "key_type_column", "expires_column", "timestamp_column", "tenant_column", mode="before"
    )
    @classmethod
    def _none_is_no_column(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() == NO_COLUMN else value

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        if self.retention_days < self.min_retention_days:
            raise ValueError(
                f"CLEANUP_RETENTION_DAYS ({self.retention_days}) is below "
                f"CLEANUP_MIN_RETENTION_DAYS ({self.min_retention_days})"
            )
        for key_type, days in self.type_retention_days.items():
            if days < self.min_retention_days:
                raise ValueError(
                    f"CLEANUP_TYPE_RETENTION_DAYS: {key_type}={days} is below "
                    f"CLEANUP_MIN_RETENTION_DAYS ({self.min_retention_days})"
                )
        overlap = set(self.type_retention_days) & set(self.protected_key_types)
        if overlap:
            raise ValueError(
                "CLEANUP_TYPE_RETENTION_DAYS names protected key types: "
                + ", ".join(sorted(overlap))
            )
        self._coherent_layout()
        if self.key_type_column is not None and self.key_type_column == self.timestamp_column:
            raise ValueError("CLEANUP_KEY_TYPE_COLUMN and CLEANUP_TIMESTAMP_COLUMN are the same")
        if self.expires_column is not None and self.expires_column == self.timestamp_column:
            raise ValueError("CLEANUP_EXPIRES_COLUMN and CLEANUP_TIMESTAMP_COLUMN are the same")
        return self

    def _coherent_layout(self) -> None:
        """The layout's settings and the timestamp's absence, each refused with its own line."""
        if self.timestamp_column is None:
            if self.type_retention_days:
                raise ValueError(
                    "CLEANUP_TYPE_RETENTION_DAYS needs a timestamp: CLEANUP_TIMESTAMP_COLUMN=none "
                    "turns the age rule off"
                )
            if self.prekey_age_only:
                raise ValueError(
                    "CLEANUP_PREKEY_AGE_ONLY needs a timestamp: CLEANUP_TIMESTAMP_COLUMN=none "
                    "turns the age rule off"
                )
        if self.layout == "encoded":
            self._coherent_encoded()
        else:
            self._coherent_columns()

    def _coherent_columns(self) -> None:
        """The columns layout: the encoded layout's own settings refused, one line each. Set,
        they most likely mean CLEANUP_LAYOUT=encoded was forgotten or misspelt, and the table
        would be read with the columns layout's defaults instead."""
        for name in ENCODED_ONLY:
            if _FIELD_OF[name] in self.model_fields_set:
                raise ValueError(
                    f"{name} has no use in the columns layout (the default): it is a setting of "
                    "CLEANUP_LAYOUT=encoded; set that, or unset it"
                )

    def _coherent_encoded(self) -> None:
        """The encoded layout: the settings of the columns layout refused, one line each."""
        for name in ("CLEANUP_AUTH_TABLE", "CLEANUP_AUTH_TENANT_COLUMN"):
            if getattr(self, _FIELD_OF[name]) is not None:
                raise ValueError(
                    f"{name} has no use in the encoded layout: the creds are the rows "
                    "keyed CLEANUP_CREDS_KEY in the key table; unset it"
                )
        if self.creds_path:
            raise ValueError(
                "CLEANUP_CREDS_PATH has no use in the encoded layout: the creds row's value is "
                "the creds; unset it"
            )
        for name in ("CLEANUP_KEY_TYPE_COLUMN", "CLEANUP_KEY_ID_COLUMN"):
            if _FIELD_OF[name] in self.model_fields_set:
                raise ValueError(
                    f"{name} has no use in the encoded layout: the type and id are read from "
                    "CLEANUP_KEY_COLUMN; unset it"
                )
        if self.session_separator is not None and self.tenant_column is not None:
            raise ValueError(
                "CLEANUP_KEY_SESSION_SEPARATOR and CLEANUP_TENANT_COLUMN both name the session: "
                "set CLEANUP_TENANT_COLUMN=none when the key holds it"
            )
        named = {
            "CLEANUP_KEY_COLUMN": self.key_column,
            "CLEANUP_VALUE_COLUMN": self.value_column,
            "CLEANUP_TENANT_COLUMN": self.tenant_column,
            "CLEANUP_TIMESTAMP_COLUMN": self.timestamp_column,
        }
        seen: dict[str, str] = {}
        for name, column in named.items():
            if column is None:
                continue
            if column in seen:
                raise ValueError(f"{seen[column]} and {name} are the same column ({column})")
            seen[column] = name

    @property
    def auth_tenant(self) -> str | None:
        """The auth table's tenant column: CLEANUP_AUTH_TENANT_COLUMN, else the key table's."""
        return self.auth_tenant_column or self.tenant_column

    @property
    def has_key_types(self) -> bool:
        """Keys have types: a key-type column, or the encoded layout's parsed types."""
        return self.layout == "encoded" or self.key_type_column is not None

    @property
    def protected_key_types(self) -> tuple[str, ...]:
        """Built-in protected types less the explicit opt-out, plus the configured extras."""
        kept = [t for t in DEFAULT_PROTECTED_KEY_TYPES if t not in self.unprotected_key_types]
        extras = [t for t in self.extra_protected_key_types if t not in kept]
        return (*kept, *extras)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Validate the process environment (or `environ`) into Settings, or raise ConfigError."""
        env = os.environ if environ is None else environ
        names = variables_of(cls)
        values: dict[str, Any] = given(env, names)
        unknown = unknown_variables(env, names)
        values["unknown_settings"] = tuple(f"{name}{hint}" for name, hint in unknown)
        values["config_warnings"] = (
            *(
                f"unknown setting {name} ignored{hint}; a live run refuses it"
                for name, hint in unknown
            ),
            *half_configured(values),
        )
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError("invalid settings: " + format_validation_error(exc)) from None

    def check_flags(self, flags: Flags) -> None:
        """Refuse flags these settings forbid: a retention below CLEANUP_MIN_RETENTION_DAYS, and
        a live run with an unknown CLEANUP_* variable (forced or not: a misspelt setting is one
        the operator meant to apply, such as a longer retention, and a dry run shows it)."""
        days = flags.retention_days
        if days is not None and days < self.min_retention_days:
            raise ConfigError(
                f"invalid flags: retention_days: {days} is below "
                f"CLEANUP_MIN_RETENTION_DAYS ({self.min_retention_days})"
            )
        if self.unknown_settings and not flags.dry_run:
            raise ConfigError(
                "refusing a live run: unknown setting "
                + ", ".join(self.unknown_settings)
                + "; a misspelt setting is not applied, so correct or unset it (a dry run only "
                "warns; --force does not override)"
            )

    def misspelt_key_types(self, existing: Collection[str]) -> list[str]:
        """A configured key type (CLEANUP_TYPE_RETENTION_DAYS, CLEANUP_PROTECTED_KEY_TYPES) that
        Baileys never writes and that names no key in `existing`: a typo that would keep
        nothing it was meant to keep. Each names the closest type (names are not secrets)."""
        problems = []
        candidates = sorted(BAILEYS_KEY_TYPES | set(existing))
        configured = {
            "CLEANUP_TYPE_RETENTION_DAYS": list(self.type_retention_days),
            "CLEANUP_PROTECTED_KEY_TYPES": list(self.extra_protected_key_types),
        }
        for setting, names in configured.items():
            for name in names:
                if name in BAILEYS_KEY_TYPES or name in existing:
                    continue
                hint = closest(name, candidates)
                problems.append(
                    f"{setting} names {name[:64]!r}: no key type Baileys writes, and no key in "
                    "the table" + (f" (did you mean {hint!r}?)" if hint else "")
                )
        return problems

    @property
    def table_parts(self) -> tuple[str | None, str]:
        return _split_table(self.table)

    @property
    def history_table_parts(self) -> tuple[str | None, str]:
        return _split_table(self.history_table)

    @property
    def auth_table_parts(self) -> tuple[str | None, str] | None:
        return None if self.auth_table is None else _split_table(self.auth_table)


_FIELD_OF = {
    "CLEANUP_KEY_COLUMN": "key_column",
    "CLEANUP_KEY_SESSION_SEPARATOR": "session_separator",
    "CLEANUP_VALUE_COLUMN": "value_column",
    "CLEANUP_CREDS_KEY": "creds_key",
    "CLEANUP_AUTH_TABLE": "auth_table",
    "CLEANUP_AUTH_TENANT_COLUMN": "auth_tenant_column",
    "CLEANUP_KEY_TYPE_COLUMN": "key_type_column",
    "CLEANUP_KEY_ID_COLUMN": "key_id_column",
}


def variables_of(model: type[BaseModel]) -> set[str]:
    """The variables a settings model reads: its fields' aliases."""
    return {field.alias for field in model.model_fields.values() if field.alias}


def given(env: Mapping[str, str], names: set[str]) -> dict[str, str]:
    """The variables among `names` that are set. An empty value means "not set", everywhere
    (`none` says "no column" where it may)."""
    return {name: env[name] for name in names if name in env and env[name].strip() != ""}


NOTIFY_CHANNELS: dict[str, type[BaseModel]] = {
    "sentry": SentrySettings,
    "telegram": TelegramSettings,
}


def notification_settings(
    environ: Mapping[str, str] | None = None,
) -> tuple[NotifySettings, dict[str, str]]:
    """The notifiers' settings read on their own (the SENTRY_* and TELEGRAM_* variables), with
    the problems of each channel whose variables are invalid.

    For what must work before, or without, the full settings: a scheduled run's Crons check-in
    opens before they are read, and a run whose settings fail to load is still reported. Each
    channel is validated apart, with the very fields and validators of Settings: a channel with
    an invalid variable is left off (its variables ignored), and the other one still works.
    The problems name the variables, never their values. Raises nothing that validation raises.
    """
    env = os.environ if environ is None else environ
    values: dict[str, str] = {}
    problems: dict[str, str] = {}
    for channel, model in NOTIFY_CHANNELS.items():
        own = given(env, variables_of(model))
        try:
            model.model_validate(own)
        except ValidationError as exc:
            problems[channel] = format_validation_error(exc)
        else:
            values.update(own)
    return NotifySettings.model_validate(values), problems


# The encoded layout's own settings (docs/layouts.md): refused in the columns layout.
ENCODED_ONLY = (
    "CLEANUP_KEY_COLUMN",
    "CLEANUP_KEY_SESSION_SEPARATOR",
    "CLEANUP_VALUE_COLUMN",
    "CLEANUP_CREDS_KEY",
)


def half_configured(values: Mapping[str, Any]) -> list[str]:
    """A warning when Telegram has a token but no chat, or a chat but no token: it stays off."""
    token = "TELEGRAM_BOT_TOKEN" in values or "TELEGRAM_BOT_TOKEN_PARAMETER" in values
    chat = "TELEGRAM_CHAT_ID" in values
    if token and not chat:
        return ["Telegram is off: a bot token is set but TELEGRAM_CHAT_ID is empty"]
    if chat and not token:
        return [
            "Telegram is off: TELEGRAM_CHAT_ID is set but neither TELEGRAM_BOT_TOKEN nor "
            "TELEGRAM_BOT_TOKEN_PARAMETER is"
        ]
    return []


def unknown_variables(env: Mapping[str, str], known: set[str]) -> list[tuple[str, str]]:
    """Each CLEANUP_* variable that is no setting, and " (did you mean <the closest one>?)"
    or "" (never its value)."""
    unknown = []
    ours = sorted(n for n in known if n.startswith(SETTINGS_PREFIX))
    for name in sorted(n for n in env if n.startswith(SETTINGS_PREFIX) and n not in known):
        hint = closest(name, ours)
        unknown.append((name, f" (did you mean {hint}?)" if hint else ""))
    return unknown


class Flags(BaseModel):
    """What one run is asked to do: from a console event, an EventBridge detail, or argv.

    Strict: unknown keys and wrong types are errors (`"dry_run": "false"` is not false).
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    dry_run: bool = True
    verbose: bool = False
    retention_days: RetentionDays | None = None
    force: bool = False
    vacuum: bool = False

    @classmethod
    def parse(cls, data: Any) -> Flags:
        """Validate a flags object, raising ConfigError that names the field."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"invalid flags: expected a JSON object, got {type(data).__name__}")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigError("invalid flags: " + format_validation_error(exc)) from None
