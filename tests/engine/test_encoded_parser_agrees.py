"""The encoded layout's SQL parser and its Python twin (handler/keyparse.py) give the same
session, type and id for every generated key, on a real PostgreSQL."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from handler import db
from handler.db.predicates import encoded_key_id, encoded_session, key_type_text
from handler.keyparse import KEY_TYPES, parse_key
from tests.support.db import PgSchema

# PostgreSQL text holds no NUL and no lone surrogate.
chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
pieces = st.one_of(
    st.sampled_from([f"{t}-" for t in KEY_TYPES] + [t for t in KEY_TYPES] + ["-", ":", "::"]),
    st.text(chars, max_size=6),
)
keys = st.lists(pieces, max_size=5).map("".join)


@pytest.fixture
def table(pg: PgSchema) -> PgSchema:
    with pg.connect() as conn:
        conn.execute("CREATE TABLE auth_keys (key text)")
    return pg


def _sql_parse(pg: PgSchema, separator: str | None, stored: list[str]) -> list[tuple[object, ...]]:
    target = db.Target(
        0,
        pg.schema,
        "auth_keys",
        None,
        None,
        (),
        encoded=db.Encoded("key", "value", "creds", separator=separator),
    )
    session = encoded_session(target, True) if separator else sql.SQL("NULL::text")
    with pg.connect() as conn:
        conn.execute("TRUNCATE auth_keys")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO auth_keys VALUES (%s)", [(k,) for k in stored])
        query = sql.SQL("SELECT key, {s}, {t}, {i} FROM {table}").format(
            s=session,
            t=key_type_text(target, qualified=True),
            i=encoded_key_id(target),
            table=target.ident,
        )
        return conn.execute(query).fetchall()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(keys, min_size=1, max_size=30), st.sampled_from([None, ":", "|"]))
def test_sql_and_python_parse_every_key_alike(
    table: PgSchema, stored: list[str], separator: str | None
) -> None:
    rows = _sql_parse(table, separator, stored)
    assert len(rows) == len(stored)
    for key, session, key_type, key_id in rows:
        assert (session, key_type, key_id) == tuple(parse_key(key, separator)), key
