"""The projects' layouts as tests/support/baileys_layouts.py reproduces them: each seed writes
rows the way its project's source does (key names, escapes, value encodings, creds rows), and
the expected deletions computed from the seed are the ones docs/layouts.md describes.
"""

from __future__ import annotations

import base64
import json

import pytest

from tests.support.baileys_layouts import (
    ALPHA_PREKEYS,
    BAILEYS_STORE,
    POSTGRES_BAILEYS,
    PROJECTS,
    TICKETZ,
    WAHA,
    Project,
    fix_id,
    logical_seed,
    one_blob_rows,
    seed_one_blob,
)
from tests.support.db import PgSchema

SEED = logical_seed()
# alpha's pre-keys below its window (ids 1..10 and 280..289) and above its newest id
# (1,300..1,302), and the logged-out session's keys
BELOW_WINDOW = 20
ABOVE_NEXT = 3
GONE_KEYS = sum(1 for k in SEED.keys if k.session == "gone")


def _value(pg: PgSchema, query: str, *params: object) -> object:
    with pg.connect() as conn:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None, query
    return row[0]


@pytest.mark.parametrize("project", PROJECTS, ids=lambda p: p.table)
def test_each_seed_writes_one_row_per_key_and_creds(pg: PgSchema, project: Project) -> None:
    project.seed(pg)
    rows = project.rows(pg)
    # ticketz keeps a Whatsapps row for every session, the others a creds row per session
    creds_rows = len(SEED.sessions) if project is TICKETZ else len(SEED.creds)
    assert len(rows) == len(SEED.keys) + creds_rows
    assert project.expected_deleted(SEED, orphans=False) <= rows
    assert project.expected_deleted(SEED, orphans=True) <= rows


def test_expected_deletions_are_the_timestamp_free_rules() -> None:
    for project in (WAHA, BAILEYS_STORE, POSTGRES_BAILEYS):
        window_only = project.expected_deleted(SEED, orphans=False, above_next=False)
        assert len(window_only) == BELOW_WINDOW
        both = project.expected_deleted(SEED, orphans=False, above_next=True)
        assert len(both) == BELOW_WINDOW + ABOVE_NEXT
        orphaned = project.expected_deleted(SEED, orphans=True, above_next=False)
        assert len(orphaned) == BELOW_WINDOW + GONE_KEYS
    # ticketz's creds are read from Whatsapps.session (CLEANUP_AUTH_TENANT_COLUMN=id,
    # CLEANUP_CREDS_PATH=creds): the pre-key window takes as much as in the others
    window_only = TICKETZ.expected_deleted(SEED, orphans=False, above_next=False)
    assert len(window_only) == BELOW_WINDOW
    gone = WAHA.expected_deleted(SEED, orphans=False, above_next=True)
    ids = {int(k[1].removeprefix("pre-key-")) for k in gone}
    assert ids == {*range(1, 11), *range(280, 290), 1300, 1301, 1302}


def test_waha_writes_jsonb_with_byte_array_buffers(pg: PgSchema) -> None:
    WAHA.seed(pg)
    kind = _value(pg, "SELECT pg_typeof(value)::text FROM waha_auth LIMIT 1")
    assert kind == "jsonb"
    nxt = _value(
        pg,
        "SELECT value->>'nextPreKeyId' FROM waha_auth WHERE session_id = 'alpha' AND key = %s",
        "creds",
    )
    assert nxt == "1300"
    public = _value(
        pg,
        "SELECT value->'public' FROM waha_auth WHERE session_id = 'alpha' AND key = %s",
        "pre-key-1",
    )
    assert isinstance(public, dict)
    assert public["type"] == "Buffer"
    assert isinstance(public["data"], list)
    assert len(public["data"]) == 33


def test_baileys_store_escapes_slash_and_colon_and_writes_base64_buffers(pg: PgSchema) -> None:
    BAILEYS_STORE.seed(pg)
    ids = {r[1] for r in BAILEYS_STORE.rows(pg) if r[0] == "alpha"}
    assert "app-state-sync-key-AAAAAMz__" in ids
    assert "sender-key-120363025246125888@g.us--5511988887777--0" in ids
    assert not any(":" in i or "/" in i for i in ids)
    assert fix_id("a/b:c") == "a__b-c"
    data = _value(
        pg, 'SELECT data FROM "Session" WHERE "sessionId" = %s AND id = %s', "alpha", "pre-key-1"
    )
    assert isinstance(data, str)
    public = json.loads(data)["public"]
    assert public["type"] == "Buffer"
    assert len(base64.b64decode(public["data"])) == 33


def test_postgres_baileys_prefixes_the_session_and_names_the_creds_auth_creds(
    pg: PgSchema,
) -> None:
    POSTGRES_BAILEYS.seed(pg)
    keys = {r[0] for r in POSTGRES_BAILEYS.rows(pg)}
    assert {"alpha:auth_creds", "beta:auth_creds", "gamma:auth_creds"} <= keys
    assert "gone:auth_creds" not in keys
    assert "alpha:sender-key-120363025246125888@g.us::5511988887777::0" in keys
    assert "alpha:pre-key-1" in keys
    data = _value(pg, "SELECT data FROM auth_data WHERE session_key = %s", "alpha:auth_creds")
    assert isinstance(data, str)
    assert json.loads(data)["firstUnuploadedPreKeyId"] == 1290


def test_ticketz_keeps_creds_in_whatsapps_session(pg: PgSchema) -> None:
    TICKETZ.seed(pg)
    session = _value(pg, 'SELECT session FROM "Whatsapps" WHERE id = 1')
    assert isinstance(session, str)
    blob = json.loads(session)
    assert blob["keys"] == {}
    assert blob["creds"]["nextPreKeyId"] == 1300
    assert _value(pg, 'SELECT session FROM "Whatsapps" WHERE id = 4') is None
    types = {r[1] for r in TICKETZ.rows(pg) if r[0] == "1"}
    assert {"pre-key", "sender-key-memory", "app-state-sync-version", "webhook-state"} <= types


def test_the_one_blob_layout_holds_every_key_in_one_column(pg: PgSchema) -> None:
    blobs = seed_one_blob(pg)
    assert one_blob_rows(pg) == blobs
    alpha = json.loads(blobs[1])
    assert set(alpha) == {"creds", "keys"}
    assert len(alpha["keys"]["preKeys"]) == len(ALPHA_PREKEYS)
