"""Secret resolution for the notifiers, and redaction of every text they emit.

The Telegram bot token travels in the request URL, and requests puts that URL into its
exception messages; the Sentry DSN and the database password could surface in an exception
from elsewhere. Every string that leaves through a log line, a Sentry event or a Telegram
alert therefore goes through `redact()` first.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr

from handler.secrets import get_parameter, get_secret, is_secrets_manager

REDACTED = "[redacted]"

# Values shorter than this are not registered: replacing "1" or "abc" everywhere would
# mangle every message while protecting nothing (real tokens and keys are far longer).
_MIN_SECRET_LEN = 6

# Cache resolved parameters across warm invocations; 5 minutes lets a rotation take effect
# without reading SSM/Secrets Manager on every run.
PARAMETER_MAX_AGE_S = 300

# Shapes that are secret whatever their value: a bot token in a Bot API path, and the
# userinfo part of any URL (a DSN key, a database password).
_PATTERNS = (
    (re.compile(r"bot\d+:[A-Za-z0-9_-]+"), "bot" + REDACTED),
    (re.compile(r"(?<=://)[^/@\s:]+(?::[^/@\s]*)?@"), REDACTED + "@"),
)

_known: set[str] = set()
_lock = threading.Lock()


def register(*values: str | None) -> None:
    """Remember secret values so that `redact()` removes them wherever they appear."""
    with _lock:
        for value in values:
            if value and len(value) >= _MIN_SECRET_LEN:
                _known.add(value)


def register_url(url: str | None, *, with_user: bool = False) -> None:
    """Register a URL and its password; its user name too when that is a secret (a DSN key).

    A database user name ("cleanup") is not a secret, and registering it would redact every
    occurrence of an ordinary word.
    """
    if not url:
        return
    try:
        parts = urlsplit(url)
        register(url, parts.password, parts.username if with_user else None)
    except ValueError:
        register(url)


def register_conninfo(conninfo: str | None) -> None:
    """Register a database URL or `key=value` connection string, and its password."""
    if not conninfo:
        return
    try:
        password = conninfo_to_dict(conninfo).get("password")
    except psycopg.ProgrammingError:  # not parseable: the whole string is all we know
        password = None
    register(conninfo, str(password) if password is not None else None)


def redact(text: str) -> str:
    """`text` with every registered secret and every token- or credential-shaped part removed."""
    with _lock:
        # Longest first, so a URL is replaced whole before its parts are.
        known = sorted(_known, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_obj(obj: Any) -> Any:
    """Redact every string inside nested dicts/lists/tuples (a Sentry event or breadcrumb)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {key: redact_obj(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_obj(value) for value in obj]
    return obj


def resolve(value: SecretStr | None, parameter: str | None) -> str | None:
    """The secret from its parameter when one is named, else from the environment.

    A Secrets Manager ARN (`arn:aws:secretsmanager:`, or `arn:aws-cn:`, `arn:aws-us-gov:` ...)
    is read from Secrets Manager (its plain SecretString); anything else is an SSM parameter
    name or ARN, read with decryption. Both with short timeouts (handler.secrets.AWS_CONFIG).
    Raises whatever Powertools raises when the parameter cannot be read.
    """
    if parameter:
        if is_secrets_manager(parameter):
            raw = get_secret(parameter, max_age=PARAMETER_MAX_AGE_S)
        else:
            raw = get_parameter(parameter, max_age=PARAMETER_MAX_AGE_S)
        secret = (raw.decode() if isinstance(raw, bytes) else str(raw)).strip()
    elif value is not None:
        secret = value.get_secret_value().strip()
    else:
        return None
    return secret or None
