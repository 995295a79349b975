"""Keys stored as one string, "<type>-<id>" (or "<session><sep><type>-<id>"): the encoded
layout (docs/layouts.md). This is the Python twin of the SQL parser in handler/db/predicates.py;
tests hold the two to the same answers.

The type is the LONGEST known Baileys type that, followed by "-", starts the key:
`sender-key-memory-<id>` also starts with `sender-key-`, and `app-state-sync-version-<id>`
never starts with `app-state-sync-key-`, but reading by the longest match first is what keeps
every protected type apart from its neighbours whatever ids follow. Anything else is of no
known type: kept, and counted as unknown.
"""

from __future__ import annotations

from typing import NamedTuple

# Every type Baileys writes (SignalDataTypeMap in src/Types/Auth.ts); useMultiFileAuthState
# and the PostgreSQL stores built on it name a key `${type}-${id}`.
KEY_TYPES: tuple[str, ...] = (
    "pre-key",
    "session",
    "sender-key",
    "sender-key-memory",
    "app-state-sync-key",
    "app-state-sync-version",
    "lid-mapping",
    "device-list",
    "tctoken",
    "identity-key",
)
# The order the parser tries them in: longest first (ties by name, for a stable SQL text).
LONGEST_FIRST: tuple[str, ...] = tuple(sorted(KEY_TYPES, key=lambda t: (-len(t), t)))


class EncodedKey(NamedTuple):
    """A parsed key: its session (None without a session prefix, or when the separator is
    missing), its type (None: unknown) and its id (None when the type is unknown)."""

    session: str | None
    key_type: str | None
    key_id: str | None


def split_session(key: str, separator: str | None) -> tuple[str | None, str | None]:
    """(session, rest): the session is everything before the FIRST separator. Without a
    separator setting the whole key is the rest; with one the key lacks, both are None."""
    if separator is None:
        return None, key
    at = key.find(separator)
    if at < 0:
        return None, None
    return key[:at], key[at + len(separator) :]


def key_type_of(rest: str) -> str | None:
    """The longest known type `t` such that `rest` starts with `t + "-"`, else None."""
    for key_type in LONGEST_FIRST:
        if rest.startswith(key_type + "-"):
            return key_type
    return None


def parse_key(key: str, separator: str | None = None) -> EncodedKey:
    """Parse a stored key as the SQL of the encoded layout does."""
    session, rest = split_session(key, separator)
    if rest is None:
        return EncodedKey(None, None, None)
    key_type = key_type_of(rest)
    if key_type is None:
        return EncodedKey(session, None, None)
    return EncodedKey(session, key_type, rest[len(key_type) + 1 :])
