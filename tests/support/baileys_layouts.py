"""Baileys-on-PostgreSQL layouts of other projects, reproduced from their own sources.

Each `Project` below is one project's key store as its source creates and writes it: the DDL
(tables, columns, types, primary keys), how a key is named (`"<type>-<id>"`, a session
prefix, escaped characters), how a value is encoded (jsonb or JSON text, and how Buffers are
written), and where the creds live. The source file and commit are cited on each. A seed
writes the same logical keys (`logical_seed`) in each project's encoding, and `expected`
computes, from that seed alone, which rows a run must delete: with no timestamp in any of
these tables, only the timestamp-free rules apply (docs/layouts.md):

- the pre-key window from the session's creds counters (docs/key-lifecycle.md): a pre-key id
  below `firstUnuploadedPreKeyId - CLEANUP_PREKEY_WINDOW` goes; ids above `nextPreKeyId - 1`
  stay (`ABOVE_NEXT_DELETED`);
- with CLEANUP_ORPHAN_RULE=true, every key of a session that has no creds row.

Nothing else goes: sessions, sender keys and their memory, the protected types, unknown keys
and the creds rows themselves stay.

Buffers: Baileys' `BufferJSON.replacer` writes `{"type": "Buffer", "data": "<base64>"}`;
`JSON.stringify` without it (node-postgres filling a jsonb parameter, or a hand-written
converter) writes `Buffer.prototype.toJSON`'s `{"type": "Buffer", "data": [<bytes>]}`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from tests.support.db import ME, ME_LID, PgSchema


@dataclass(frozen=True)
class Source:
    """Where a layout is read from: repository, file, commit."""

    repo: str
    path: str
    commit: str

    def __str__(self) -> str:
        return f"{self.repo} {self.path} @ {self.commit[:12]}"


# ---------------------------------------------------------------------------------------------
# The logical seed: what every project's store would hold after the same months of use.

# The pre-key window the expectations assume: the job's default CLEANUP_PREKEY_WINDOW.
WINDOW = 1000

GROUP = "120363025246125888@g.us"
CONTACT = "5511988887777"
CONTACT_LID = "123456789012345"


@dataclass(frozen=True)
class LogicalKey:
    """One Baileys key as `keys.set` hands it to a store: session, type, id, value. A
    `key_type` of None is a row of no Baileys type (`raw` is its whole key)."""

    session: str
    key_type: str | None
    key_id: str
    value: Any = field(compare=False)
    raw: str | None = None


@dataclass(frozen=True)
class Seed:
    """Sessions' creds (absent: a session without creds) and their keys."""

    creds: Mapping[str, Any]
    keys: tuple[LogicalKey, ...]
    sessions: tuple[str, ...]


def _buf(tag: str, n: int = 32) -> bytes:
    """Deterministic stand-in key material (never a real key)."""
    return (tag.encode() * (n // max(len(tag), 1) + 1))[:n]


def _key_pair(tag: str) -> dict[str, bytes]:
    return {"private": _buf(f"priv-{tag}"), "public": _buf(f"pub-{tag}", 33)}


def creds(next_id: int, first_unuploaded: int, *, own: str = ME, own_lid: str = ME_LID) -> dict:
    """Creds as Baileys' initAuthCreds/saveCreds leave them, the fields the job reads among
    the others (key material in Buffers)."""
    return {
        "noiseKey": _key_pair("noise"),
        "pairingEphemeralKeyPair": _key_pair("pairing"),
        "signedIdentityKey": _key_pair("identity"),
        "signedPreKey": {
            "keyPair": _key_pair("spk"),
            "signature": _buf("sig", 64),
            "keyId": 1,
        },
        "registrationId": 4242,
        "advSecretKey": base64.b64encode(_buf("adv")).decode(),
        "processedHistoryMessages": [],
        "nextPreKeyId": next_id,
        "firstUnuploadedPreKeyId": first_unuploaded,
        "accountSyncCounter": 1,
        "accountSettings": {"unarchiveChats": False},
        "registered": True,
        "me": {"id": f"{own}:12@s.whatsapp.net", "lid": f"{own_lid}:12@lid", "name": "Shop"},
    }


def _session_record(tag: str) -> dict[str, Any]:
    return {"_sessions": {base64.b64encode(_buf(tag, 33)).decode(): {"registrationId": 7}}}


def _session_keys(session: str, *, with_unknown: bool = True) -> list[LogicalKey]:
    """The non-pre-key keys of one connected session: sessions (a contact's PN and LID
    devices, the account's own device), a group's sender keys (a contact's and ours) and its
    memory, app-state keys, LID mappings, a device list, tctokens, and an unknown row."""
    s = session
    keys = [
        LogicalKey(s, "session", f"{CONTACT}.0", _session_record(f"{s}-c0")),
        LogicalKey(s, "session", f"{CONTACT_LID}_1.3", _session_record(f"{s}-c3")),
        LogicalKey(s, "session", f"{ME}.12", _session_record(f"{s}-own")),
        LogicalKey(
            s, "sender-key", f"{GROUP}::{CONTACT}::0", [{"senderKeyId": 9, "chainKey": "x"}]
        ),
        LogicalKey(s, "sender-key", f"{GROUP}::{ME_LID}_1::12", [{"senderKeyId": 3}]),
        LogicalKey(s, "sender-key-memory", GROUP, {f"{CONTACT}:0@s.whatsapp.net": True}),
        # an app-state key id is base64: "/" in it (escaped by baileys-store)
        LogicalKey(
            s, "app-state-sync-key", "AAAAAMz/", {"keyData": _buf("sync"), "timestamp": "1"}
        ),
        LogicalKey(s, "app-state-sync-version", "critical_block", {"version": 12, "hash": "h"}),
        LogicalKey(s, "lid-mapping", CONTACT, f"{CONTACT_LID}"),
        LogicalKey(s, "lid-mapping", f"{CONTACT_LID}_reverse", f"{CONTACT}"),
        LogicalKey(s, "device-list", CONTACT, ["0", "3"]),
        LogicalKey(s, "tctoken", f"{CONTACT}@s.whatsapp.net", {"token": _buf("tc", 16)}),
    ]
    if with_unknown:
        # rows of no Baileys type: kept whatever the rules
        keys.append(LogicalKey(s, None, "", {"note": "app row"}, raw="webhook-state"))
        keys.append(LogicalKey(s, None, "", {"v": 1}, raw="sessions"))
    return keys


def _prekeys(session: str, ids: Iterable[int]) -> list[LogicalKey]:
    return [LogicalKey(session, "pre-key", str(i), _key_pair(f"{session}-{i}")) for i in ids]


# alpha: uploaded up to 1,289, generated up to 1,299, and every id 290..1,289 held: the window
# keeps 290..1,299 (the 1,000 highest ids held below 1,290). Ids 1..10 and 280..289 are below
# it (20 go); 1,300..1,302 are above the newest id (kept: ABOVE_NEXT_DELETED).
ALPHA_NEXT, ALPHA_FIRST = 1300, 1290
ALPHA_PREKEYS = [*range(1, 11), *range(280, 1303)]
# beta: a young account, all 30 ids in its window: nothing of it goes.
BETA_NEXT = 31
BETA_PREKEYS = list(range(1, 31))
# gamma: creds without counters: every pre-key of it stays (a note says why).
GAMMA_PREKEYS = list(range(1, 6))
# gone: logged out, its creds row deleted, its keys left behind (the orphan rule's case).
GONE_PREKEYS = list(range(1, 8))


def logical_seed() -> Seed:
    gamma_creds = {k: v for k, v in creds(1, 1).items() if "PreKeyId" not in k}
    keys = [
        *_prekeys("alpha", ALPHA_PREKEYS),
        *_session_keys("alpha"),
        *_prekeys("beta", BETA_PREKEYS),
        *_session_keys("beta", with_unknown=False),
        *_prekeys("gamma", GAMMA_PREKEYS),
        LogicalKey("gamma", "session", f"{CONTACT}.0", _session_record("gamma")),
        *_prekeys("gone", GONE_PREKEYS),
        *_session_keys("gone", with_unknown=False),
    ]
    return Seed(
        creds={
            "alpha": creds(ALPHA_NEXT, ALPHA_FIRST),
            "beta": creds(BETA_NEXT, BETA_NEXT),
            "gamma": gamma_creds,
        },
        keys=tuple(keys),
        sessions=("alpha", "beta", "gamma", "gone"),
    )


# Without a timestamp, pre-key ids above `nextPreKeyId - 1` stay (docs/layouts.md, "The pre-key
# window without a timestamp"): Baileys writes new pre-keys (keys.set in getNextPreKeys) before
# it saves the counters (creds.update after the upload), so a key just uploaded can sit above
# the saved counter while a run reads it. `above_next=True` computes the other answer, for
# the tests that show the difference.
ABOVE_NEXT_DELETED = False


def window_low(held: Iterable[int], first: int, window: int = WINDOW) -> int:
    """The pre-key window's low end as the job counts it (docs/key-lifecycle.md): the lower of
    firstUnuploadedPreKeyId - window and the window-th highest id held below
    firstUnuploadedPreKeyId (retry receipts move that counter without an upload)."""
    top = sorted((i for i in held if i < first), reverse=True)[:window]
    return min(first - window, *top[-1:])


def deleted_keys(
    seed: Seed, *, window: int = WINDOW, orphans: bool, above_next: bool = ABOVE_NEXT_DELETED
) -> set[LogicalKey]:
    """The logical keys a run must delete (module docstring): pre-keys below each window (and
    above each newest id with `above_next`), and with `orphans` every key of a session without
    creds."""
    gone: set[LogicalKey] = set()
    held: dict[str, list[int]] = {}
    for key in seed.keys:
        if key.key_type == "pre-key" and key.key_id.isdigit():
            held.setdefault(key.session, []).append(int(key.key_id))
    for key in seed.keys:
        session_creds = seed.creds.get(key.session)
        if session_creds is None:
            if orphans:
                gone.add(key)
            continue
        if key.key_type != "pre-key":
            continue
        first = session_creds.get("firstUnuploadedPreKeyId")
        nxt = session_creds.get("nextPreKeyId")
        if not isinstance(first, int) or not isinstance(nxt, int):
            continue  # no counters: every pre-key stays
        key_id = int(key.key_id)
        low = window_low(held.get(key.session, []), first, window)
        if key_id < low or (above_next and key_id > nxt - 1):
            gone.add(key)
    return gone


# ---------------------------------------------------------------------------------------------
# Value encodings.


def buffer_json(value: Any) -> Any:
    """Baileys' `BufferJSON.replacer`: Buffers as {"type": "Buffer", "data": <base64>}."""
    return _walk(value, lambda b: {"type": "Buffer", "data": base64.b64encode(b).decode()})


def buffer_to_json(value: Any) -> Any:
    """`JSON.stringify` without a replacer: Buffer.prototype.toJSON's byte array."""
    return _walk(value, lambda b: {"type": "Buffer", "data": list(b)})


def _walk(value: Any, on_bytes: Callable[[bytes], Any]) -> Any:
    if isinstance(value, bytes):
        return on_bytes(value)
    if isinstance(value, Mapping):
        return {k: _walk(v, on_bytes) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, on_bytes) for v in value]
    return value


def _text(encode: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: json.dumps(encode(value), separators=(",", ":"))


def _jsonb(encode: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: Jsonb(encode(value))


# ---------------------------------------------------------------------------------------------
# The projects.


@dataclass(frozen=True)
class Project:
    """One project's key store."""

    name: str
    sources: tuple[Source, ...]
    ddl: tuple[str, ...]
    table: str
    # the settings that select this layout (docs/layouts.md), beside DATABASE_URL
    env: Mapping[str, str]
    # (session, logical key) -> the row's identity as `rows` returns it
    ident: Callable[[LogicalKey], tuple[str, ...]]
    # write the seed; return nothing (rows are read back with `rows`)
    write: Callable[[psycopg.Connection[Any], Seed], None]
    # every row's identity, as stored
    select: str
    # the engine reads this project's creds rows (False: neither the pre-key window nor the
    # orphan rule can apply, and nothing goes)
    creds_readable: bool = True
    notes: tuple[str, ...] = field(default=())

    def create(self, pg: PgSchema) -> None:
        with pg.connect() as conn:
            for statement in self.ddl:
                conn.execute(statement)  # type: ignore[arg-type]

    def seed(self, pg: PgSchema, seed: Seed | None = None) -> Seed:
        seed = logical_seed() if seed is None else seed
        self.create(pg)
        with pg.connect() as conn:
            self.write(conn, seed)
        return seed

    def rows(self, pg: PgSchema) -> set[tuple[str, ...]]:
        with pg.connect() as conn:
            return {tuple(str(c) for c in r) for r in conn.execute(self.select)}  # type: ignore[arg-type]

    def expected_deleted(
        self,
        seed: Seed,
        *,
        window: int = WINDOW,
        orphans: bool,
        above_next: bool = ABOVE_NEXT_DELETED,
    ) -> set[tuple[str, ...]]:
        if not self.creds_readable:
            return set()
        gone = deleted_keys(seed, window=window, orphans=orphans, above_next=above_next)
        return {self.ident(k) for k in gone}

    def settings_env(self, **overrides: str) -> dict[str, str]:
        return {**self.env, **overrides}


# A logical key standing for a session's creds row (`ident` maps it to the project's own).
CREDS_ROW = "\0creds"


def _encoded_id(key: LogicalKey, creds_key: str = "creds") -> str:
    if key.raw == CREDS_ROW:
        return creds_key
    if key.key_type is None:
        return key.raw or ""
    return f"{key.key_type}-{key.key_id}"


# --- devlikeapro/waha, NOWEB engine, PostgreSQL store ---------------------------------------
# PostgresStore.ts creates the table; usePostgresAuthState.ts writes `${type}-${id}` and
# 'creds' per session_id, the value passed to knex as is: node-postgres JSON.stringify's it
# into the jsonb column, Buffers as byte arrays (the reader revives them, BufferJSON.reviver).

WAHA_DDL = (
    """CREATE TABLE IF NOT EXISTS waha_auth (
    session_id TEXT,
    key TEXT,
    value JSONB,
    PRIMARY KEY (session_id, key)
  )""",
)


def _waha_write(conn: psycopg.Connection[Any], seed: Seed) -> None:
    value = _jsonb(buffer_to_json)
    rows = [(s, "creds", value(c)) for s, c in seed.creds.items()]
    rows += [(k.session, _encoded_id(k), value(k.value)) for k in seed.keys]
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO waha_auth (session_id, key, value) VALUES (%s, %s, %s)", rows)


WAHA = Project(
    name="devlikeapro/waha (NOWEB, PostgreSQL)",
    sources=(
        Source(
            "devlikeapro/waha",
            "src/core/storage/PostgresStore.ts",
            "2d6b69e9749558074a45755146b1c2c665046d81",
        ),
        Source(
            "devlikeapro/waha",
            "src/core/engines/noweb/store/postgres/usePostgresAuthState.ts",
            "932350b0bfa576c1d0b71fca67949365d57bfd7b",
        ),
    ),
    ddl=WAHA_DDL,
    table="waha_auth",
    env={
        "CLEANUP_TABLE": "waha_auth",
        "CLEANUP_LAYOUT": "encoded",
        "CLEANUP_TENANT_COLUMN": "session_id",
        "CLEANUP_KEY_COLUMN": "key",
        "CLEANUP_VALUE_COLUMN": "value",
        "CLEANUP_CREDS_KEY": "creds",
        "CLEANUP_TIMESTAMP_COLUMN": "none",
    },
    ident=lambda k: (k.session, _encoded_id(k)),
    write=_waha_write,
    select="SELECT session_id, key FROM waha_auth",
)


# --- @ookamiiixd/baileys-store (Prisma) -----------------------------------------------------
# prisma/schema.prisma's `Session` model; the provider there is mysql, and the same model on
# PostgreSQL is this DDL (Prisma's mapping: BigInt @id @default(autoincrement()) -> BIGSERIAL,
# String / @db.Text -> TEXT, @@unique(map:) and @@index as below). src/session.ts writes
# JSON.stringify(value, BufferJSON.replacer) under fixId(`${type}-${id}`), which escapes
# "/" as "__" and ":" as "-", and the creds under "creds".

BAILEYS_STORE_DDL = (
    """CREATE TABLE "Session" (
    "pkId" BIGSERIAL NOT NULL,
    "sessionId" TEXT NOT NULL,
    "id" TEXT NOT NULL,
    "data" TEXT NOT NULL,
    CONSTRAINT "Session_pkey" PRIMARY KEY ("pkId")
)""",
    'CREATE INDEX "Session_sessionId_idx" ON "Session"("sessionId")',
    'CREATE UNIQUE INDEX "unique_id_per_session_id_session" ON "Session"("sessionId", "id")',
)


def fix_id(key: str) -> str:
    """baileys-store's fixId: "/" -> "__", then ":" -> "-"."""
    return key.replace("/", "__").replace(":", "-")


def _baileys_store_write(conn: psycopg.Connection[Any], seed: Seed) -> None:
    value = _text(buffer_json)
    rows = [(s, "creds", value(c)) for s, c in seed.creds.items()]
    rows += [(k.session, fix_id(_encoded_id(k)), value(k.value)) for k in seed.keys]
    with conn.cursor() as cur:
        cur.executemany('INSERT INTO "Session" ("sessionId", id, data) VALUES (%s, %s, %s)', rows)


BAILEYS_STORE = Project(
    name="@ookamiiixd/baileys-store (Prisma)",
    sources=(
        Source(
            "ookamiiixd/baileys-store",
            "prisma/schema.prisma",
            "688571f9e5cad7acd5849ce107cba5e07964a966",
        ),
        Source(
            "ookamiiixd/baileys-store", "src/session.ts", "688571f9e5cad7acd5849ce107cba5e07964a966"
        ),
    ),
    ddl=BAILEYS_STORE_DDL,
    table="Session",
    env={
        "CLEANUP_TABLE": "Session",
        "CLEANUP_LAYOUT": "encoded",
        "CLEANUP_TENANT_COLUMN": "sessionId",
        "CLEANUP_KEY_COLUMN": "id",
        "CLEANUP_VALUE_COLUMN": "data",
        "CLEANUP_CREDS_KEY": "creds",
        "CLEANUP_TIMESTAMP_COLUMN": "none",
    },
    ident=lambda k: (k.session, fix_id(_encoded_id(k))),
    write=_baileys_store_write,
    select='SELECT "sessionId", id FROM "Session"',
)


# --- Prizzz/postgres-baileys ----------------------------------------------------------------
# src/index.ts: one table for every session; the key is `${sessionId}:${type}-${id}` and the
# creds `${sessionId}:auth_creds`; the value is JSON.stringify(bufferToJSON(value)), Buffers as
# byte arrays.

POSTGRES_BAILEYS_DDL = (
    """CREATE TABLE IF NOT EXISTS auth_data (
                session_key VARCHAR(255) PRIMARY KEY,
                data TEXT NOT NULL
            )""",
)


def _postgres_baileys_key(k: LogicalKey) -> str:
    return f"{k.session}:{_encoded_id(k, 'auth_creds')}"


def _postgres_baileys_write(conn: psycopg.Connection[Any], seed: Seed) -> None:
    value = _text(buffer_to_json)
    rows = [(f"{s}:auth_creds", value(c)) for s, c in seed.creds.items()]
    rows += [(_postgres_baileys_key(k), value(k.value)) for k in seed.keys]
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO auth_data (session_key, data) VALUES (%s, %s)", rows)


POSTGRES_BAILEYS = Project(
    name="Prizzz/postgres-baileys",
    sources=(
        Source(
            "Prizzz/postgres-baileys", "src/index.ts", "d1f25930adaf679b68952c646629bdb6f3aa94a4"
        ),
    ),
    ddl=POSTGRES_BAILEYS_DDL,
    table="auth_data",
    env={
        "CLEANUP_TABLE": "auth_data",
        "CLEANUP_LAYOUT": "encoded",
        "CLEANUP_TENANT_COLUMN": "none",
        "CLEANUP_KEY_COLUMN": "session_key",
        "CLEANUP_KEY_SESSION_SEPARATOR": ":",
        "CLEANUP_VALUE_COLUMN": "data",
        "CLEANUP_CREDS_KEY": "auth_creds",
        "CLEANUP_TIMESTAMP_COLUMN": "none",
    },
    ident=lambda k: (_postgres_baileys_key(k),),
    write=_postgres_baileys_write,
    select="SELECT session_key FROM auth_data",
)


# --- ticketz-oss/ticketz --------------------------------------------------------------------
# The keys: migration 20240620080700-create-baileysKeys.ts (Sequelize: INTEGER, STRING ->
# VARCHAR(255), TEXT; the three key columns the primary key; no timestamps, the model says
# `timestamps: false`) and 20250326110400's index. helpers/authState.ts writes
# JSON.stringify(value, BufferJSON.replacer) per (whatsappId, type, key). The creds are NOT
# in that table: saveState writes `{"creds": ..., "keys": {}}` (BufferJSON.replacer) into
# `Whatsapps.session` (text), keyed by `Whatsapps.id`. The Whatsapps columns below are those of
# the whaticket migration the table comes from (canove/whaticket
# 20200717170223-create-whatsapps.ts); the others it gained since are not read.

WHATSAPPS_DDL = """CREATE TABLE IF NOT EXISTS "Whatsapps" (
    "id" SERIAL,
    "session" TEXT,
    "qrcode" TEXT,
    "status" VARCHAR(255),
    "battery" VARCHAR(255),
    "plugged" BOOLEAN,
    "createdAt" TIMESTAMP WITH TIME ZONE NOT NULL,
    "updatedAt" TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY ("id")
)"""

TICKETZ_DDL = (
    WHATSAPPS_DDL,
    """CREATE TABLE IF NOT EXISTS "BaileysKeys" (
    "whatsappId" INTEGER NOT NULL REFERENCES "Whatsapps" ("id")
        ON DELETE CASCADE ON UPDATE CASCADE,
    "type" VARCHAR(255) NOT NULL,
    "key" VARCHAR(255) NOT NULL,
    "value" TEXT NOT NULL,
    PRIMARY KEY ("whatsappId", "type", "key")
)""",
    'CREATE INDEX "idx_baileyskeys_whatsappid_type_key" '
    'ON "BaileysKeys" ("whatsappId", "type", "key")',
)

# Whatsapps.id per session: the keys' whatsappId is an integer.
TICKETZ_IDS = {"alpha": 1, "beta": 2, "gamma": 3, "gone": 4}


def _ticketz_ident(k: LogicalKey) -> tuple[str, ...]:
    if k.raw == CREDS_ROW:
        return ("Whatsapps", str(TICKETZ_IDS[k.session]), "")
    key_type = k.key_type if k.key_type is not None else (k.raw or "")
    return (str(TICKETZ_IDS[k.session]), key_type, k.key_id)


def _ticketz_write(conn: psycopg.Connection[Any], seed: Seed) -> None:
    value = _text(buffer_json)
    with conn.cursor() as cur:
        # every session has its Whatsapps row (the foreign key); `gone` logged out: its
        # session column was cleared, its keys left behind
        cur.executemany(
            'INSERT INTO "Whatsapps" (id, session, status, "createdAt", "updatedAt") '
            "VALUES (%s, %s, %s, now(), now())",
            [
                (
                    TICKETZ_IDS[s],
                    value({"creds": seed.creds[s], "keys": {}}) if s in seed.creds else None,
                    "CONNECTED" if s in seed.creds else "DISCONNECTED",
                )
                for s in seed.sessions
            ],
        )
        cur.executemany(
            'INSERT INTO "BaileysKeys" ("whatsappId", type, key, value) VALUES (%s, %s, %s, %s)',
            [
                (
                    TICKETZ_IDS[k.session],
                    k.key_type if k.key_type is not None else k.raw,
                    k.key_id,
                    value(k.value),
                )
                for k in seed.keys
            ],
        )


TICKETZ = Project(
    name="ticketz-oss/ticketz",
    sources=(
        Source(
            "ticketz-oss/ticketz",
            "backend/src/database/migrations/20240620080700-create-baileysKeys.ts",
            "fc405f6f137e981c3992e515acaa09f701c978d2",
        ),
        Source(
            "ticketz-oss/ticketz",
            "backend/src/models/BaileysKeys.ts",
            "fc405f6f137e981c3992e515acaa09f701c978d2",
        ),
        Source(
            "ticketz-oss/ticketz",
            "backend/src/helpers/authState.ts",
            "7d5dffd1a13b78f70d97050c59f63a2953d518e3",
        ),
    ),
    ddl=TICKETZ_DDL,
    table="BaileysKeys",
    env={
        "CLEANUP_TABLE": "BaileysKeys",
        "CLEANUP_LAYOUT": "columns",
        "CLEANUP_TENANT_COLUMN": "whatsappId",
        "CLEANUP_KEY_TYPE_COLUMN": "type",
        "CLEANUP_KEY_ID_COLUMN": "key",
        "CLEANUP_TIMESTAMP_COLUMN": "none",
        "CLEANUP_AUTH_TABLE": "Whatsapps",
        "CLEANUP_AUTH_TENANT_COLUMN": "id",
        "CLEANUP_CREDS_COLUMN": "session",
        "CLEANUP_CREDS_PATH": "creds",
    },
    ident=_ticketz_ident,
    write=_ticketz_write,
    select='SELECT "whatsappId"::text, type, key FROM "BaileysKeys" '
    "UNION ALL SELECT 'Whatsapps', id::text, '' FROM \"Whatsapps\"",
    # the creds are nested in another table's column under another tenant column name
    # (Whatsapps.session -> "creds", keyed by Whatsapps.id): CLEANUP_AUTH_TENANT_COLUMN and
    # CLEANUP_CREDS_PATH read them
    notes=('creds in Whatsapps.session under "creds", keyed by Whatsapps.id, not whatsappId',),
)


PROJECTS: tuple[Project, ...] = (WAHA, BAILEYS_STORE, POSTGRES_BAILEYS, TICKETZ)
ENCODED: tuple[Project, ...] = (WAHA, BAILEYS_STORE, POSTGRES_BAILEYS)


# --- The refused one-blob family ------------------------------------------------------------
# whaticket's `Whatsapps.session` (text), as the Baileys forks of it fill it: ticketz's
# helpers/authState.ts before the BaileysKeys table (the parent of dc20c41, "New key storage
# on postgres") keeps `{"creds": ..., "keys": {"preKeys": {...}, "sessions": {...}, ...}}`
# (KEY_MAP) in one column and rewrites the whole of it on every keys.set.

ONE_BLOB_SOURCES = (
    Source(
        "canove/whaticket",
        "backend/src/database/migrations/20200717170223-create-whatsapps.ts",
        "20fcb980cfe5efa0ab318ad87f82f881632c1c8c",
    ),
    Source(
        "ticketz-oss/ticketz",
        "backend/src/helpers/authState.ts",
        "b1462173a7f837941c65fc1b7dc85f8e4b6a5a64",
    ),
)
ONE_BLOB_KEY_MAP = {
    "pre-key": "preKeys",
    "session": "sessions",
    "sender-key": "senderKeys",
    "app-state-sync-key": "appStateSyncKeys",
    "app-state-sync-version": "appStateVersions",
    "sender-key-memory": "senderKeyMemory",
}


def seed_one_blob(pg: PgSchema, seed: Seed | None = None) -> dict[int, str]:
    """The one-blob layout: each session's creds and keys in `Whatsapps.session`. Returns the
    stored text per id, to show it untouched afterwards."""
    seed = logical_seed() if seed is None else seed
    value = _text(buffer_json)
    blobs: dict[int, str] = {}
    for s in seed.sessions:
        keys: dict[str, dict[str, Any]] = {}
        for k in seed.keys:
            if k.session == s and k.key_type in ONE_BLOB_KEY_MAP:
                keys.setdefault(ONE_BLOB_KEY_MAP[k.key_type], {})[k.key_id] = k.value
        blobs[TICKETZ_IDS[s]] = value({"creds": seed.creds.get(s, creds(1, 1)), "keys": keys})
    with pg.connect() as conn:
        conn.execute(WHATSAPPS_DDL)  # type: ignore[arg-type]
        with conn.cursor() as cur:
            cur.executemany(
                'INSERT INTO "Whatsapps" (id, session, status, "createdAt", "updatedAt") '
                "VALUES (%s, %s, 'CONNECTED', now(), now())",
                list(blobs.items()),
            )
    return blobs


def one_blob_envs() -> dict[str, dict[str, str]]:
    """Ways an operator could point the job at the blob table: as an encoded key table (the
    blob as the value, the row id as the session), or with the reference layout's defaults."""
    return {
        "encoded": {
            "CLEANUP_TABLE": "Whatsapps",
            "CLEANUP_LAYOUT": "encoded",
            "CLEANUP_TENANT_COLUMN": "id",
            "CLEANUP_VALUE_COLUMN": "session",
            "CLEANUP_TIMESTAMP_COLUMN": "none",
        },
        "columns": {"CLEANUP_TABLE": "Whatsapps"},
    }


def one_blob_rows(pg: PgSchema) -> dict[int, str]:
    with pg.connect() as conn:
        return {
            int(r[0]): str(r[1])
            for r in conn.execute(sql.SQL('SELECT id, session FROM "Whatsapps"'))
        }
