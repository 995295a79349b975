"""The test database: a fresh schema per test (PgSchema), key rows, Baileys creds.

The fixtures that hand these out are in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from handler.db import LOCK_CLASS
from handler.schema import reference_auth_schema, reference_schema
from handler.settings import Settings

# Variables the job reads: a test's environment starts without any the machine may have set.
JOB_VARIABLE_PREFIXES = ("CLEANUP_", "DATABASE_", "TELEGRAM_", "SENTRY_")


@dataclass
class PgSchema:
    """A fresh schema on the test server; its DSN puts the schema first on the search_path."""

    server_dsn: str
    schema: str

    @property
    def dsn(self) -> str:
        return make_conninfo(self.server_dsn, options=f"-c search_path={self.schema}")

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.dsn, autocommit=True)

    def env(self, **overrides: str) -> dict[str, str]:
        """Settings environment for this schema: tests see every knob they change."""
        env = {"DATABASE_URL": self.dsn, "CLEANUP_MIN_RETENTION_DAYS": "1"}
        env.update(overrides)
        return env

    def settings(self, **overrides: str) -> Settings:
        return Settings.from_env(self.env(**overrides))

    def use_env(self, monkeypatch: pytest.MonkeyPatch, **overrides: str) -> None:
        """Make this schema's settings the process environment, and nothing else of the job's.

        For the entry points that read the environment themselves (CLI, Lambda handler).
        """
        for name in list(os.environ):
            if name.startswith(JOB_VARIABLE_PREFIXES):
                monkeypatch.delenv(name)
        for name, value in self.env(**overrides).items():
            monkeypatch.setenv(name, value)

    @contextlib.contextmanager
    def role(self, suffix: str, *grants: str) -> Iterator[str]:
        """A login role with USAGE on this schema and `grants` ("... TO {role}"), run by the
        owner; dropped with everything it owns afterwards."""
        role = f"{self.schema}_{suffix}"
        name = sql.Identifier(role)
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(name))
            conn.execute(
                sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(self.schema), name)
            )
            for grant in grants:
                conn.execute(sql.SQL(grant).format(role=name))
        try:
            yield role
        finally:
            with self.connect() as conn:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(name))
                conn.execute(sql.SQL("DROP ROLE {}").format(name))

    def create_reference_table(self, table: str = "whatsapp_keys") -> None:
        with self.connect() as conn:
            conn.execute(reference_schema(table))

    def add_auth(self, creds_by_tenant: Mapping[str, object]) -> None:
        """The reference auth table beside the key table, one creds row per tenant."""
        with self.connect() as conn:
            conn.execute(reference_auth_schema())
            for tenant, value in creds_by_tenant.items():
                conn.execute(
                    "INSERT INTO whatsapp_auth (company_id, creds) VALUES (%s, %s)",
                    (tenant, psycopg.types.json.Jsonb(value)),
                )

    def insert_keys(self, rows: Iterable[KeyRow], table: str = "whatsapp_keys") -> None:
        """Insert keys whose updated_at is `age_days` before the database's now()."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.executemany(
                sql.SQL(
                    "INSERT INTO {} (company_id, key_type, key_id, value, updated_at) "
                    "VALUES (%s, %s, %s, %s, now() - make_interval(secs => %s * 86400))"
                ).format(sql.Identifier(table)),
                [
                    (r.company, r.key_type, r.key_id, psycopg.types.json.Jsonb(r.value), r.age)
                    for r in rows
                ],
            )

    def key_set(self, table: str = "whatsapp_keys") -> set[tuple[str, str, str]]:
        with self.connect() as conn:
            return {
                (r[0], r[1], r[2])
                for r in conn.execute(
                    sql.SQL("SELECT company_id, key_type, key_id FROM {}").format(
                        sql.Identifier(table)
                    )
                )
            }

    def cleanup_backend(self) -> int:
        """The job's own session: the one holding its advisory lock on this schema's table."""
        with self.connect() as conn:
            row = conn.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
                "AND objid = 'whatsapp_keys'::regclass::oid AND objsubid = 1",
                (LOCK_CLASS >> 32,),
            ).fetchone()
        assert row is not None, "the cleanup holds no lock: it is not running"
        return int(row[0])

    def count(self, table: str = "whatsapp_keys") -> int:
        with self.connect() as conn:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            ).fetchone()
            assert row is not None
            return int(row[0])


@dataclass(frozen=True)
class KeyRow:
    company: str
    key_type: str
    key_id: str
    age: float  # days since updated_at
    value: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.value is None:
            object.__setattr__(self, "value", {"k": f"secret-{self.key_id}"})

    @property
    def ident(self) -> tuple[str, str, str]:
        return (self.company, self.key_type, self.key_id)


# Serialises CREATE DATABASE across pytest-xdist workers (an arbitrary fixed key, "kctd").
_CREATE_DATABASE_LOCK = 0x6B637464


def ensure_database(server_dsn: str, name: str) -> str:
    """Create database `name` once; dropping it per test would cost a checkpoint each.

    Every xdist worker calls this at start. CREATE DATABASE cannot run in a transaction and
    has no IF NOT EXISTS, and two workers that both see it missing race on the catalog's
    unique index (UniqueViolation, not DuplicateDatabase). A session advisory lock on the
    maintenance database makes check-and-create one step.
    """
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_CREATE_DATABASE_LOCK,))
        try:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_CREATE_DATABASE_LOCK,))
    return make_conninfo(server_dsn, dbname=name)


# The account's own JIDs in test creds (creds.me.id, creds.me.lid).
ME = "5511000000001"


ME_LID = "100000000001"


def baileys_creds(
    next_id: int, first_unuploaded: int | None = None, **extra: Any
) -> dict[str, Any]:
    """Creds as Baileys keeps them: the pre-key counters (all uploaded unless
    `first_unuploaded` says otherwise) and the account's own JIDs."""
    return {
        "nextPreKeyId": next_id,
        "firstUnuploadedPreKeyId": next_id if first_unuploaded is None else first_unuploaded,
        "me": {"id": f"{ME}:12@s.whatsapp.net", "lid": f"{ME_LID}:12@lid"},
        "registrationId": 42,
        **extra,
    }


# TEST_DATABASE_NAME lets CI use a database that does not exist yet, proving that the workers
# create it without racing each other (see .ci/run).
TEST_DATABASE = os.environ.get("TEST_DATABASE_NAME", "keys_cleanup_tests")
