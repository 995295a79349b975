"""Tables of the encoded layout (docs/layouts.md): one row per key, the key "<type>-<id>" in one
column, optionally after "<session><sep>", and the creds row in the same table."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from tests.support.db import PgSchema

TABLE = "auth_keys"


@dataclass(frozen=True)
class Layout:
    """How a test table stores its keys: a session column (or none), a separator inside the
    key (or none), the value column's type, and whether rows carry a timestamp."""

    session_column: str | None = "session_id"
    separator: str | None = None
    value_type: str = "jsonb"
    timestamp: bool = False
    creds_key: str = "creds"

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            "CLEANUP_LAYOUT": "encoded",
            "CLEANUP_TABLE": TABLE,
            "CLEANUP_KEY_COLUMN": "key",
            "CLEANUP_VALUE_COLUMN": "value",
            "CLEANUP_TENANT_COLUMN": self.session_column or "none",
            "CLEANUP_TIMESTAMP_COLUMN": "updated_at" if self.timestamp else "none",
            "CLEANUP_CREDS_KEY": self.creds_key,
            "CLEANUP_GUARD_MIN_KEYS": "1000000",
        }
        if self.separator is not None:
            env["CLEANUP_KEY_SESSION_SEPARATOR"] = self.separator
        return env | overrides

    def stored_key(self, session: str, key: str) -> str:
        return key if self.separator is None else f"{session}{self.separator}{key}"


def create(pg: PgSchema, layout: Layout) -> None:
    columns = [
        sql.SQL("key text NOT NULL"),
        sql.SQL("value {} NOT NULL").format(sql.SQL(layout.value_type)),
    ]
    pk = [sql.Identifier("key")]
    if layout.session_column is not None:
        columns.insert(0, sql.SQL("{} text NOT NULL").format(sql.Identifier(layout.session_column)))
        pk.insert(0, sql.Identifier(layout.session_column))
    if layout.timestamp:
        columns.append(sql.SQL("updated_at timestamptz NOT NULL DEFAULT now()"))
    with pg.connect() as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY ({}))").format(
                sql.Identifier(TABLE), sql.SQL(", ").join(columns), sql.SQL(", ").join(pk)
            )
        )


def _value(layout: Layout, value: object) -> object:
    if layout.value_type == "jsonb":
        return Jsonb(value)
    return json.dumps(value) if not isinstance(value, str) else value


def insert(
    pg: PgSchema, layout: Layout, session: str, keys: Iterable[str], *, age_days: float = 0
) -> None:
    """Keys ("<type>-<id>") of `session`, each with a small JSON value."""
    _insert(
        pg, layout, [(session, layout.stored_key(session, k), {"k": k}) for k in keys], age_days
    )


def add_creds(pg: PgSchema, layout: Layout, creds: Mapping[str, object]) -> None:
    """The creds row of each session (a value may be a str: stored as it is)."""
    _insert(
        pg, layout, [(s, layout.stored_key(s, layout.creds_key), c) for s, c in creds.items()], 0
    )


def _insert(
    pg: PgSchema, layout: Layout, rows: list[tuple[str, str, object]], age_days: float
) -> None:
    cols = [sql.Identifier("key"), sql.Identifier("value")]
    if layout.session_column is not None:
        cols.insert(0, sql.Identifier(layout.session_column))
    if layout.timestamp:
        cols.append(sql.Identifier("updated_at"))
    values: list[tuple[Any, ...]] = []
    for session, key, value in rows:
        row: list[Any] = [key, _value(layout, value)]
        if layout.session_column is not None:
            row.insert(0, session)
        values.append(tuple(row))
    placeholders = sql.SQL(", ").join(
        sql.Placeholder() for _ in range(len(cols) - layout.timestamp)
    )
    stamp = (
        sql.SQL(", now() - make_interval(secs => {})").format(sql.Literal(age_days * 86400))
        if layout.timestamp
        else sql.SQL("")
    )
    with pg.connect() as conn, conn.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO {} ({}) VALUES ({}{})").format(
                sql.Identifier(TABLE), sql.SQL(", ").join(cols), placeholders, stamp
            ),
            values,
        )


def keys_left(pg: PgSchema, layout: Layout) -> set[tuple[str | None, str]]:
    """(session, key as the application names it) of every row left."""
    session = (
        sql.Identifier(layout.session_column)
        if layout.session_column is not None
        else sql.SQL("NULL::text")
    )
    with pg.connect() as conn:
        rows = conn.execute(
            sql.SQL("SELECT {}, key FROM {}").format(session, sql.Identifier(TABLE))
        ).fetchall()
    if layout.separator is None:
        return {(s, k) for s, k in rows}
    return {tuple(k.split(layout.separator, 1)) for _, k in rows}  # type: ignore[misc]
