"""The reference key and auth tables, as Baileys deployments create them, and a realistic seed.

Used by the demo, the tests and the benchmark. The job itself never creates these tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import sql

REFERENCE_TABLE = "whatsapp_keys"


def reference_schema(table: str = REFERENCE_TABLE, *, partition_by: str = "") -> sql.Composed:
    """DDL of the reference table: no index on updated_at, a trigger that bumps it on UPDATE.

    `partition_by`: a declaratively partitioned table, e.g. "HASH (company_id)" (its partitions
    are created apart: `hash_partitions`)."""
    t = sql.Identifier(table)
    partitioned = sql.SQL(f" PARTITION BY {partition_by}" if partition_by else "")

    def ident(suffix: str) -> sql.Identifier:
        return sql.Identifier(f"{table}_{suffix}")

    return sql.SQL(
        """
CREATE TABLE {t} (
  company_id TEXT NOT NULL,
  key_type   TEXT NOT NULL,
  key_id     TEXT NOT NULL,
  value      JSONB NOT NULL,
  created_at TIMESTAMPTZ DEFAULT NOW(),
  updated_at TIMESTAMPTZ DEFAULT NOW(),
  expires_at TIMESTAMPTZ,
  PRIMARY KEY (company_id, key_type, key_id)
){partitioned};
CREATE INDEX {ix_company} ON {t} (company_id);
CREATE INDEX {ix_type} ON {t} (key_type);
CREATE INDEX {ix_company_type} ON {t} (company_id, key_type);
CREATE INDEX {ix_expires} ON {t} (expires_at) WHERE expires_at IS NOT NULL;
CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at = NOW();
  RETURN NEW;
END $$;
CREATE TRIGGER {trg} BEFORE UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION {fn}();
"""
    ).format(
        t=t,
        partitioned=partitioned,
        ix_company=ident("company_idx"),
        ix_type=ident("type_idx"),
        ix_company_type=ident("company_type_idx"),
        ix_expires=ident("expires_idx"),
        fn=ident("touch"),
        trg=ident("touch_trg"),
    )


def hash_partitions(table: str = REFERENCE_TABLE, partitions: int = 4) -> sql.Composed:
    """DDL of the reference table partitioned by hash of company_id into `partitions` leaves
    (<table>_p0 ..): the layout of teams whose key table outgrew a plain one."""
    t = sql.Identifier(table)
    return sql.SQL("").join(
        [
            reference_schema(table, partition_by="HASH (company_id)"),
            *(
                sql.SQL(
                    "CREATE TABLE {} PARTITION OF {} FOR VALUES WITH (MODULUS {}, REMAINDER {});\n"
                ).format(
                    sql.Identifier(f"{table}_p{i}"), t, sql.Literal(partitions), sql.Literal(i)
                )
                for i in range(partitions)
            ),
        ]
    )


REFERENCE_AUTH_TABLE = "whatsapp_auth"


def reference_auth_schema(table: str = REFERENCE_AUTH_TABLE) -> sql.Composed:
    """DDL of the reference auth table: one row per connected tenant (its Baileys creds).

    A tenant that logs out or is removed loses this row; its keys stay in the key table.
    """
    return sql.SQL(
        """
CREATE TABLE {t} (
  company_id TEXT PRIMARY KEY,
  creds      JSONB NOT NULL,
  created_at TIMESTAMPTZ DEFAULT NOW(),
  updated_at TIMESTAMPTZ DEFAULT NOW()
);
"""
    ).format(t=sql.Identifier(table))


# Share of rows per key type and the range of their ages in days, shaped after real Baileys
# tables: pre-keys are uploaded by the hundred and mostly never used (their updated_at is their
# creation time); sessions and sender keys pile up for every contact and group ever seen;
# app-state sync keys and LID mappings are few, old, and must survive.
KEY_MIX: tuple[tuple[str, float, float, float], ...] = (
    # key type,                share, min age days, max age days
    ("pre-key", 0.30, 0.0, 120.0),
    ("session", 0.25, 0.0, 90.0),
    ("sender-key", 0.20, 0.0, 90.0),
    ("sender-key-memory", 0.08, 0.0, 60.0),
    ("device-list", 0.06, 0.0, 45.0),
    ("tctoken", 0.04, 0.0, 40.0),
    ("identity-key", 0.03, 0.0, 80.0),
    ("lid-mapping", 0.02, 10.0, 200.0),
    ("app-state-sync-key", 0.01, 20.0, 300.0),
    ("app-state-sync-version", 0.01, 0.0, 90.0),
)


def baileys_key_id(key_type: str, n: str) -> sql.Composable:
    """SQL for a key id as Baileys writes it (docs/key-lifecycle.md), unique per series number:
    pre-keys by number, sessions by signal address (user.device), sender keys as
    group::user::device, memory rows and device lists by JID. `key_type` and `n` are SQL
    expressions of the caller's query (never user input)."""
    return sql.SQL(
        """CASE {kt}
         WHEN 'pre-key' THEN {n}::text
         WHEN 'session' THEN (5500000000000 + {n}) || '.0'
         WHEN 'sender-key'
           THEN '120363' || ({n} %% 997) || '@g.us::' || (5500000000000 + {n}) || '::0'
         WHEN 'sender-key-memory' THEN '120363' || {n} || '@g.us'
         WHEN 'device-list' THEN (5500000000000 + {n})::text
         ELSE {kt} || ':' || {n}
       END"""
    ).format(kt=sql.SQL(key_type), n=sql.SQL(n))


def seed_keys(
    conn: psycopg.Connection[tuple[object, ...]],
    rows: int,
    *,
    table: str = REFERENCE_TABLE,
    companies: int = 3,
    value_bytes: int = 300,
    age_scale: float = 1.0,
    seed: float = 0.42,
) -> None:
    """Insert `rows` keys of the KEY_MIX shape, ages scattered through the heap at random.

    Runs server-side in one statement, so a million rows take seconds. `age_scale` stretches
    every age range (the benchmark uses it to set the share of rows past the cutoff).
    Values are JSON of about `value_bytes` bytes whose text is random, never a real key.
    """
    types = [k for k, _, _, _ in KEY_MIX]
    shares = [s for _, s, _, _ in KEY_MIX]
    bounds = []
    acc = 0.0
    for share in shares:
        acc += share
        bounds.append(acc)
    bounds[-1] = 1.0
    low = [lo * age_scale for _, _, lo, _ in KEY_MIX]
    high = [hi * age_scale for _, _, _, hi in KEY_MIX]
    pad = max(0, value_bytes - 60) // 32 + 1  # md5() yields 32 hex characters
    with conn.cursor() as cur:
        cur.execute("SELECT setseed(%s)", (seed,))
        cur.execute(
            sql.SQL(
                """
INSERT INTO {t} (company_id, key_type, key_id, value, created_at, updated_at)
SELECT 'company-' || (1 + g %% %(companies)s),
       k.key_type,
       {key_id},
       jsonb_build_object('k', repeat(md5(g::text), %(pad)s), 'n', g),
       now() - make_interval(secs => k.age * 86400) - interval '1 hour',
       now() - make_interval(secs => k.age * 86400)
FROM generate_series(1, %(rows)s) AS g
CROSS JOIN LATERAL (SELECT random() AS u, random() AS a OFFSET 0 * g) AS r
CROSS JOIN LATERAL (
  SELECT (%(types)s::text[])[i] AS key_type,
         (%(low)s::float8[])[i] + r.a * ((%(high)s::float8[])[i] - (%(low)s::float8[])[i]) AS age
  FROM (SELECT coalesce(min(i), 1) AS i
        FROM generate_subscripts(%(bounds)s::float8[], 1) AS i
        WHERE r.u < (%(bounds)s::float8[])[i]) AS pick
) AS k
ON CONFLICT DO NOTHING
"""
            ).format(t=sql.Identifier(table), key_id=baileys_key_id("k.key_type", "g")),
            {
                "companies": companies,
                "pad": pad,
                "rows": rows,
                "types": types,
                "low": low,
                "high": high,
                "bounds": bounds,
            },
        )
        cur.execute(sql.SQL("ANALYZE {t}").format(t=sql.Identifier(table)))


def seed_rules(
    conn: psycopg.Connection[tuple[object, ...]],
    *,
    table: str = REFERENCE_TABLE,
    auth_table: str = REFERENCE_AUTH_TABLE,
    logged_out: str | None = None,
    logged_out_share: float = 0.05,
    without_creds: Sequence[str] = (),
    expired_share: float = 0.03,
    future_share: float = 0.03,
    seed: float = 0.24,
) -> None:
    """Give seeded keys what the TTL and orphan rules act on.

    Creates the auth table with a creds row for every tenant that has keys, except the tenants
    `without_creds` (logged out: their keys are orphaned); then, with
    `logged_out`, copies a `logged_out_share` of the keys older than two days (types alike,
    protected types included) to that tenant, which has no creds row, so that none of its keys
    is within the orphan rule's grace (a tenant with a fresh key is not orphaned); then sets
    `expires_at` in the past on an `expired_share` of the keys and in the future on a
    `future_share`. The touch trigger is off meanwhile: these writes must not make the keys
    look fresh.
    """
    t = sql.Identifier(table)
    trigger = sql.Identifier(f"{table}_touch_trg")
    with conn.cursor() as cur:
        cur.execute("SELECT setseed(%s)", (seed,))
        cur.execute(reference_auth_schema(auth_table))
        cur.execute(sql.SQL("ALTER TABLE {t} DISABLE TRIGGER {trg}").format(t=t, trg=trigger))
        _seed_creds(cur, t, sql.Identifier(auth_table), without_creds)
        _seed_own_keys(cur, t, sql.Identifier(auth_table))
        if logged_out is not None:
            _copy_to_logged_out(cur, t, logged_out, logged_out_share)
        _seed_expiries(cur, t, expired_share, future_share)
        cur.execute(sql.SQL("ALTER TABLE {t} ENABLE TRIGGER {trg}").format(t=t, trg=trigger))
        cur.execute(sql.SQL("ANALYZE {t}").format(t=t))


def _seed_creds(
    cur: psycopg.Cursor[tuple[object, ...]],
    t: sql.Identifier,
    auth: sql.Identifier,
    without_creds: Sequence[str],
) -> None:
    # Each tenant's creds as Baileys keeps them: the pre-key counters just past its highest
    # pre-key id (all uploaded), and its own JIDs. Its own devices' sessions, its own sender
    # key for a group it sent to (with the group's memory row) and the tctoken index are
    # written as old as the oldest keys: the key lifecycle keeps them all the same.
    cur.execute(
        sql.SQL(
            """
INSERT INTO {auth} (company_id, creds)
SELECT company_id, jsonb_build_object(
     'nextPreKeyId', next_id, 'firstUnuploadedPreKeyId', next_id,
     'me', jsonb_build_object('id', own || ':3@s.whatsapp.net', 'lid', own_lid || ':3@lid'))
FROM (
  SELECT company_id,
     coalesce(max(CASE WHEN key_id ~ '^[0-9]{{1,15}}$' THEN key_id::bigint END)
              FILTER (WHERE key_type = 'pre-key'), 0) + 1 AS next_id,
     (5400000000000 + dense_rank() OVER (ORDER BY company_id))::text AS own,
     (9000000000000 + dense_rank() OVER (ORDER BY company_id))::text AS own_lid
  FROM {t} WHERE company_id <> ALL (%(without)s::text[]) GROUP BY company_id
) AS tenants
"""
        ).format(auth=auth, t=t),
        {"without": list(without_creds)},
    )


def _seed_own_keys(
    cur: psycopg.Cursor[tuple[object, ...]], t: sql.Identifier, auth: sql.Identifier
) -> None:
    """The account's own keys that the key lifecycle keeps, as old as the oldest keys."""
    cur.execute(
        sql.SQL(
            """
INSERT INTO {t} (company_id, key_type, key_id, value, updated_at)
SELECT a.company_id, k.key_type, k.key_id, '{{"k": "x"}}'::jsonb, now() - interval '90 days'
FROM {auth} AS a
CROSS JOIN LATERAL (
  SELECT split_part(a.creds -> 'me' ->> 'id', ':', 1) AS own,
     split_part(a.creds -> 'me' ->> 'lid', ':', 1) AS own_lid
) AS me
CROSS JOIN LATERAL (VALUES
  ('session', me.own || '.0'),
  ('session', me.own_lid || '_1.0'),
  ('sender-key', '120363999@g.us::' || me.own_lid || '_1::3'),
  ('sender-key-memory', '120363999@g.us'),
  ('tctoken', '__index')
) AS k(key_type, key_id)
ON CONFLICT DO NOTHING
"""
        ).format(auth=auth, t=t)
    )


def _copy_to_logged_out(
    cur: psycopg.Cursor[tuple[object, ...]], t: sql.Identifier, tenant: str, share: float
) -> None:
    """Copy a share of the keys older than two days to `tenant`, which has no creds row."""
    cur.execute(
        sql.SQL(
            "INSERT INTO {t} (company_id, key_type, key_id, value, created_at, updated_at) "
            "SELECT %s, key_type, key_id, value, created_at, updated_at FROM {t} "
            "WHERE random() < %s AND updated_at < now() - interval '2 days' "
            "ON CONFLICT DO NOTHING"
        ).format(t=t),
        (tenant, share),
    )


def _seed_expiries(
    cur: psycopg.Cursor[tuple[object, ...]], t: sql.Identifier, expired: float, future: float
) -> None:
    # An hour to ten days away, in the past for a share past / (past + future) of them.
    cur.execute(
        sql.SQL(
            "UPDATE {t} SET expires_at = now() + make_interval(secs => "
            "(CASE WHEN random() * %(all)s < %(past)s THEN -1 ELSE 1 END) "
            "* (3600 + random() * 86400 * 10)) WHERE random() < %(all)s"
        ).format(t=t),
        {"past": expired, "all": expired + future},
    )
