"""What Baileys still needs, per key type: pure policies over the tenants' creds.

The facts behind each rule, with the Baileys source paths, are in docs/key-lifecycle.md. In
short: a pre-key row is written once and never touched, so its age says nothing about whether
WhatsApp's server still hands it out; the creds counters do. The account's own devices and our
own sender keys are identified by the user part of `creds.me.id` / `creds.me.lid`.

The SQL that applies these (db.lifecycle_keep) takes the result as two JSON parameters, so each
batch's DELETE re-checks the rule against the counters read once per run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from handler.domain import MAX_ID_DIGITS
from handler.domain import KeepReason as KeepReason  # noqa: PLC0414 - re-exported
from handler.domain import Lifecycle as Lifecycle  # noqa: PLC0414 - re-exported

KEEP_REASONS: dict[KeepReason, tuple[str, str]] = {
    # reason: (key type, why, as the report says it)
    "prekey_window": (
        "pre-key",
        "the server may still hand them out (not yet uploaded, or among the newest ids held)",
    ),
    "prekey_no_creds": (
        "pre-key",
        "their tenant has no readable creds counters (no auth row, or see notes)",
    ),
    "prekey_creds_changed": (
        "pre-key",
        "their session's creds changed during the run (paired again?): checked again next run",
    ),
    "own_session": ("session", "sessions with the account's own devices"),
    "own_unknown": (
        "session",
        "their tenant's own devices are unknown: creds not read, or without `me` (see notes)",
    ),
    "own_sender_key": (
        "sender-key",
        "our own sender keys whose group still has its sender-key-memory row",
    ),
    "index": ("tctoken", "Baileys' token index (__index)"),
}


@dataclass(frozen=True)
class Creds:
    """What the job reads of one tenant's Baileys creds."""

    next_prekey_id: int
    first_unuploaded_prekey_id: int
    own_users: tuple[str, ...]


def jid_user(jid: object) -> str | None:
    """`5511999:12@s.whatsapp.net` -> `5511999`; `1000_1:3@lid` -> `1000` (Baileys' jidDecode
    keeps the user before `:`; the signal address adds `_<domain>` for LID and hosted users)."""
    if not isinstance(jid, str) or "@" not in jid:
        return None
    user = jid.split("@", 1)[0].split(":", 1)[0].split("_", 1)[0]
    return user or None


def _counter(value: object) -> int | None:
    """A creds counter: a positive integer, as JSON number or decimal text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 1 else None
    if isinstance(value, str) and value.isdigit() and len(value) <= MAX_ID_DIGITS:
        return int(value) or None
    return None


def _unwrap(raw: object) -> object:
    """Text holding JSON (also JSON text stored as a JSON string) parsed; else as it is."""
    value = raw
    for _ in range(2):  # text, or a JSON string holding the object
        if isinstance(value, str | bytes):
            value = json.loads(value)
    return value


def _creds_object(
    raw: object, path: tuple[str, ...], *, path_in_sql: bool
) -> Mapping[str, object] | str:
    """The creds object inside `raw`, or why it cannot be read (see parse_creds)."""
    no_path = f"creds have no {'.'.join(path)} (CLEANUP_CREDS_PATH)"
    if path and path_in_sql and raw is None:
        return no_path + ", or are null"
    try:
        value = _unwrap(raw)
        for i, key in enumerate(() if path_in_sql else path):
            if not isinstance(value, Mapping):
                return "creds are not a JSON object" if i == 0 else no_path
            if key not in value:
                return no_path
            value = _unwrap(value[key])
    except ValueError:
        return "creds are not JSON"
    if not isinstance(value, Mapping):
        return "creds are not a JSON object"
    return value


def _own_users(creds: Mapping[str, object]) -> tuple[str, ...]:
    """The user parts of `creds.me.id` and `creds.me.lid`: the account's own."""
    me = creds.get("me")
    users = []
    if isinstance(me, Mapping):
        users = [u for u in (jid_user(me.get("id")), jid_user(me.get("lid"))) if u]
    return tuple(dict.fromkeys(users))


def _counters(creds: Mapping[str, object]) -> tuple[int, int] | str:
    """nextPreKeyId and firstUnuploadedPreKeyId, or why they cannot be used."""
    next_id = _counter(creds.get("nextPreKeyId"))
    first = _counter(creds.get("firstUnuploadedPreKeyId"))
    if next_id is None or first is None:
        return "creds have no pre-key counters"
    if first > next_id:
        # Baileys keeps firstUnuploadedPreKeyId <= nextPreKeyId (Utils/signal.ts getNextPreKeys)
        return "creds counters are inconsistent"
    return next_id, first


def parse_creds(
    raw: object, path: tuple[str, ...] = (), *, path_in_sql: bool = False
) -> Creds | str:
    """The counters and own users of one creds value, or why they cannot be read.

    `raw` is what the auth table holds: a JSON object (jsonb/json), or text holding JSON (also
    JSON text stored as a JSON string, as some adapters do). `path`: the keys leading to the
    creds inside it (CLEANUP_CREDS_PATH), followed here for text; `path_in_sql`: followed in
    SQL (a JSON column), where a missing path reads as null.
    """
    value = _creds_object(raw, path, path_in_sql=path_in_sql)
    if isinstance(value, str):
        return value
    counters = _counters(value)
    if isinstance(counters, str):
        return counters
    return Creds(counters[0], counters[1], _own_users(value))


def prekey_window(creds: Creds, window: int) -> tuple[int, int]:
    """The pre-key ids to keep: the newest `window` uploaded ids, every generated id not yet
    uploaded, and so the newest id (nextPreKeyId - 1), which Baileys checks at login.

    Ids above it are left over from an earlier registration (a re-paired account starts again
    from 1); ids below it were uploaded long enough ago that the server has handed them out.
    """
    return creds.first_unuploaded_prekey_id - window, creds.next_prekey_id - 1


def build(
    rows: Iterable[tuple[str | None, object]],
    *,
    window: int,
    prekey_age_only: bool,
    path: tuple[str, ...] = (),
    path_in_sql: bool = False,
) -> tuple[Lifecycle, dict[str, int]]:
    """The Lifecycle from the auth table's (tenant, creds) rows, and the count of tenants per
    problem (creds not readable: those tenants keep every pre-key)."""
    windows: dict[str, tuple[int, int]] = {}
    own: dict[str, tuple[str, ...]] = {}
    unknown: list[str] = []
    problems: dict[str, int] = {}
    for tenant, raw in rows:
        if tenant is None:
            continue
        value = _creds_object(raw, path, path_in_sql=path_in_sql)
        if isinstance(value, str):
            problems[value] = problems.get(value, 0) + 1
            unknown.append(tenant)
            continue
        counters = _counters(value)
        if isinstance(counters, str):
            problems[counters] = problems.get(counters, 0) + 1
        else:
            windows[tenant] = prekey_window(Creds(*counters, ()), window)
        # The account's own users, even when the counters are unusable: `me` is read apart.
        if users := _own_users(value):
            own[tenant] = users
        else:
            unknown.append(tenant)
    return Lifecycle(windows, own, prekey_age_only, unknown_own=tuple(unknown)), problems
