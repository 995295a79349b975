"""The auth (creds) table beside the key table: found, and its creds read for the key lifecycle.

The orphan rule (handler/orphans.py) reads the same table. Creds that cannot be read are a
note, never a failed run: those tenants keep every pre-key (docs/key-lifecycle.md).
"""

from __future__ import annotations

from dataclasses import replace

import psycopg
from psycopg import errors as pg_errors

from handler import db, lifecycle
from handler.settings import Settings

# The reference deployment's creds table, looked for beside the key table when
# CLEANUP_AUTH_TABLE is unset.
DEFAULT_AUTH_TABLE = "whatsapp_auth"


def find_auth(conn: db.Conn, settings: Settings, target: db.Target) -> db.AuthTable | None:
    """The creds table: CLEANUP_AUTH_TABLE, else `whatsapp_auth` beside the key table; in the
    encoded layout the key table itself (its creds rows)."""
    if target.encoded is not None:
        return db.AuthTable(target.schema, target.name, {}, target.oid)
    parts = settings.auth_table_parts
    if parts is None:
        return db.find_auth_table(conn, target.schema, DEFAULT_AUTH_TABLE)
    return db.find_auth_table(conn, parts[0], parts[1])


def auth_table_name(settings: Settings, target: db.Target) -> str:
    """How the auth table is named in a note: as configured, or the default beside the keys."""
    if target.encoded is not None:
        return target.qualified
    return settings.auth_table or f"{target.schema}.{DEFAULT_AUTH_TABLE}"


def locked_problem(settings: Settings, table: str) -> str:
    return (
        f"{table} is locked by another session (waited CLEANUP_LOCK_TIMEOUT_MS="
        f"{settings.lock_timeout_ms:,}; is it being reloaded?)"
    )


def _creds_problem(
    settings: Settings, target: db.Target, auth: db.AuthTable | None, *, auth_locked: bool
) -> str | None:
    """Why the creds cannot be read, or None when they can be tried."""
    s = settings
    if target.encoded is not None:
        return locked_problem(s, target.qualified) if auth_locked else None
    if auth is None:
        return f"no auth table {auth_table_name(s, target)} (CLEANUP_AUTH_TABLE)"
    if target.tenant_column is None:
        named = s.tenant_column or "none"
        return f"{target.qualified} has no tenant column (CLEANUP_TENANT_COLUMN={named})"
    tenant_setting = (
        "CLEANUP_AUTH_TENANT_COLUMN" if s.auth_tenant_column else "CLEANUP_TENANT_COLUMN"
    )
    for what, column, setting in (
        ("tenant", s.auth_tenant, tenant_setting),
        ("creds", s.creds_column, "CLEANUP_CREDS_COLUMN"),
    ):
        if column not in auth.columns:
            return f"{auth.qualified} has no {what} column {column} ({setting})"
    if (kind := auth.columns[s.creds_column]) not in db.JSON_TYPES | db.TEXT_TYPES:
        return f"{auth.qualified}.{s.creds_column} is {kind}, not JSON or text"
    if auth_locked:
        return locked_problem(s, auth.qualified)
    return None


def _recheck(
    settings: Settings,
    target: db.Target,
    auth: db.AuthTable | None,
    rows: list[tuple[str | None, object, str]],
    facts: lifecycle.Lifecycle,
) -> db.CredsCheck:
    """What each DELETE checks again without a timestamp: the creds rows of the sessions
    with a window, as they were read."""
    hashes = {t: h for t, _, h in rows if t is not None and t in facts.windows}
    if target.encoded is not None or auth is None or not hashes:
        # No creds read (no window: every pre-key is kept): nothing to look up again, and the
        # auth table may lack the columns a lookup would name.
        return db.CredsCheck(hashes)
    return db.CredsCheck(
        hashes, (auth.schema, auth.name, settings.auth_tenant or "", settings.creds_column)
    )


def _counted_windows(
    conn: db.Conn,
    target: db.Target,
    facts: lifecycle.Lifecycle,
    s: Settings,
    notes: list[str],
) -> dict[str, tuple[int, int]]:
    """The pre-key windows, each reaching down to the CLEANUP_PREKEY_WINDOW highest ids the
    table still holds below firstUnuploadedPreKeyId (`db.prekey_floors`): retry receipts move
    that counter without an upload, so the ids below it are not all gone from the server."""
    # prekey_window: the low end is firstUnuploadedPreKeyId - window.
    firsts = {t: lo + s.prekey_window for t, (lo, _) in facts.windows.items()}
    try:
        floors = db.prekey_floors(conn, target, firsts, s.prekey_window)
    except psycopg.Error as exc:
        if conn.broken:
            raise
        # Without the count the windows could reach above the server's pool: no window, so
        # every pre-key stays this run.
        notes.append(f"pre-key ids not counted ({type(exc).__name__}): every pre-key is kept")
        return {}
    return {
        t: (min(lo, floors[t]) if t in floors else lo, hi) for t, (lo, hi) in facts.windows.items()
    }


def read_lifecycle(
    conn: db.Conn,
    settings: Settings,
    target: db.Target,
    auth: db.AuthTable | None,
    *,
    auth_locked: bool,
    notes: list[str],
) -> lifecycle.Lifecycle | None:
    """The key-lifecycle facts from the creds (docs/key-lifecycle.md), or None without a
    key-type column. Creds that cannot be read are a note: those tenants keep every pre-key,
    their sender keys wait for their groups' memory rows, and, where their own devices should
    be known (a creds row, or an auth table that could not be read), every session stays."""
    s = settings
    if not target.has_key_types:
        return None
    problem = _creds_problem(s, target, auth, auth_locked=auth_locked)
    rows: list[tuple[str | None, object, str]] = []
    if problem is None and auth is not None:
        try:
            rows = (
                db.read_encoded_creds(conn, target)
                if target.encoded is not None
                else db.read_creds(conn, auth, s.auth_tenant or "", s.creds_column, s.creds_path)
            )
        except pg_errors.LockNotAvailable:
            problem = locked_problem(s, auth.qualified)
        except psycopg.Error as exc:
            if conn.broken:
                raise
            problem = f"{auth.qualified} not readable ({type(exc).__name__})"
    # A JSON column's creds path is followed in SQL; a text column's in lifecycle.parse_creds.
    json_column = auth is not None and auth.columns.get(s.creds_column) in db.JSON_TYPES
    facts, problems = lifecycle.build(
        [(tenant, creds) for tenant, creds, _ in rows],
        window=s.prekey_window,
        prekey_age_only=s.prekey_age_only,
        path=s.creds_path,
        path_in_sql=json_column,
    )
    if facts.windows and not s.prekey_age_only:
        facts = replace(facts, windows=_counted_windows(conn, target, facts, s, notes))
    # An auth table is there (or named) but its creds were not read: no tenant's own devices
    # are known, so no session goes this run. Without one, sessions go by the retention; so
    # they do in a key table without a tenant column (columns layout), whose keys no creds row
    # can be matched to (a table of one session).
    unread = (
        problem is not None
        and (auth is not None or s.auth_table is not None)
        and (target.encoded is not None or target.tenant_column is not None)
    )
    if unread:
        facts = replace(facts, own_unread=True)
    if target.timestamp_column is None:
        facts = replace(facts, recheck=_recheck(s, target, auth, rows, facts))
    if s.prekey_age_only:
        notes.append(
            "CLEANUP_PREKEY_AGE_ONLY=true: pre-keys go by age alone, including ones the "
            "server may still hand out (their first messages then fail)"
        )
    kept = [] if s.prekey_age_only else ["every pre-key"]
    kept += ["every session"] if unread else []
    if problem is not None and kept:
        notes.append(f"creds not read, so {' and '.join(kept)} is kept: {problem}")
    for why, tenants in sorted(problems.items()):
        notes.append(f"pre-keys of {tenants:,} tenant{'' if tenants == 1 else 's'} kept: {why}")
    if facts.unknown_own and not unread:
        n = len(facts.unknown_own)
        notes.append(
            f"sessions of {n:,} tenant{'' if n == 1 else 's'} kept: their creds do not name the "
            "account (unreadable, or no `me`), so any session may be with its own devices"
        )
    return facts
