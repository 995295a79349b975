"""Every exception the job raises on purpose, in one place. Each message is safe to log: it
names what is wrong and never holds a DSN, password, token or key value.

This module imports nothing from handler: every layer may raise these.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad settings or flags. The message names what is wrong and never holds a value."""


class TargetNotFound(ConfigError):
    """The target table, or one of its configured columns, is not there (or not a table the
    job may clean: a system table, a view)."""


class TargetTypeError(ConfigError):
    """A configured column of the target table has the wrong type (a timestamp is needed)."""


class DatabaseError(RuntimeError):
    """A database failure, with a message safe to log (no DSN, no password, no key value)."""


class CleanupError(RuntimeError):
    """The run failed. The message is safe to log: no DSN, password or key value."""


class SecretError(RuntimeError):
    """The secret could not be read. The message names the setting, never a value."""


class TelegramError(Exception):
    """Delivery failed. The message names the cause and never contains the token."""


class DemoUnavailableError(RuntimeError):
    """The embedded PostgreSQL for the demo could not be started."""


def error_text(exc: BaseException) -> str:
    """An exception's message with the notes added to it (`add_note`, as a failed run's "run
    history not recorded" is), as logs and alerts show it. The notes are this job's own, safe
    to log like its messages."""
    return "; ".join([str(exc), *getattr(exc, "__notes__", ())])


def refused(exc: BaseException) -> bool:
    """True for a run refused before it deleted anything: bad settings, flags, event, target
    or secret (each checked before the first batch)."""
    return isinstance(exc, ConfigError | SecretError)
