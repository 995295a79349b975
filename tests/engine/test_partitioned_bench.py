"""The partitioned benchmark's exactness check (bench/partitioned.py): the rows left in a
partitioned table and in a plain table holding the same keys compare equal after the same
cleanup, and differ when a leaf was skipped or a single key went otherwise."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest

from bench.partitioned import compare, fingerprint
from handler.cleanup import run_cleanup
from handler.schema import hash_partitions, reference_schema
from tests.support.db import PgSchema
from tests.support.tables import AGE_CREDS, FORCE, mixed_rows

NO_GUARD = {"CLEANUP_GUARD_MIN_KEYS": "100000"}
PLAIN = "plain_keys"


def _same_keys_twice(pg: PgSchema) -> None:
    """whatsapp_keys hash-partitioned into 4 leaves, plain_keys plain: the same rows."""
    with pg.connect() as conn:
        conn.execute(hash_partitions("whatsapp_keys", 4))
        conn.execute(reference_schema(PLAIN))
    pg.add_auth(AGE_CREDS)
    pg.insert_keys(mixed_rows(), table=PLAIN)
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO whatsapp_keys SELECT * FROM {PLAIN}")


def _differing(pg: PgSchema) -> list[str]:
    with pg.connect() as conn:
        row = conn.execute("SELECT now() - interval '30 days'").fetchone()
        assert row is not None
        assert isinstance(row[0], datetime)
        return compare(
            fingerprint(conn, PLAIN, cutoff=row[0]),
            fingerprint(conn, "whatsapp_keys", cutoff=row[0]),
        )


def _clean(pg: PgSchema, table: str) -> int:
    report = run_cleanup(pg.settings(CLEANUP_TABLE=table, **NO_GUARD), FORCE)
    assert report.status == "completed", report.reason
    return report.deleted


def test_the_same_cleanup_of_the_same_keys_compares_equal(pg: PgSchema) -> None:
    _same_keys_twice(pg)
    assert _differing(pg) == []
    deleted = _clean(pg, PLAIN)
    assert deleted > 0
    assert _differing(pg) != []  # one table cleaned, the other not: seen
    assert _clean(pg, "whatsapp_keys") == deleted
    assert _differing(pg) == []


def _skip_a_leaf(pg: PgSchema) -> None:
    """The partitioned table cleaned with its fullest leaf out of reach, as if skipped."""
    with pg.connect() as conn:
        row = conn.execute(
            "SELECT tableoid::regclass::text, count(*) FILTER (WHERE updated_at < now() - "
            "interval '30 days') FROM whatsapp_keys GROUP BY 1 ORDER BY 2 DESC LIMIT 1"
        ).fetchone()
        assert row is not None
        assert row[1] > 0
        leaf = str(row[0])
        conn.execute(f"ALTER TABLE whatsapp_keys DETACH PARTITION {leaf}")
    _clean(pg, "whatsapp_keys")
    with pg.connect() as conn:
        conn.execute(
            f"ALTER TABLE whatsapp_keys ATTACH PARTITION {leaf} "
            f"FOR VALUES WITH (MODULUS 4, REMAINDER {leaf.removeprefix('whatsapp_keys_p')})"
        )


def _one_fresh_key_more(pg: PgSchema) -> None:
    _clean(pg, "whatsapp_keys")
    with pg.connect() as conn:
        conn.execute(
            "DELETE FROM whatsapp_keys WHERE (company_id, key_type, key_id) = (SELECT "
            "company_id, key_type, key_id FROM whatsapp_keys ORDER BY updated_at DESC LIMIT 1)"
        )


def _one_age_changed(pg: PgSchema) -> None:
    _clean(pg, "whatsapp_keys")
    with pg.connect() as conn:
        conn.execute(
            "UPDATE whatsapp_keys SET updated_at = updated_at + interval '1 microsecond' "
            "WHERE (company_id, key_type, key_id) = (SELECT company_id, key_type, key_id "
            "FROM whatsapp_keys ORDER BY key_id LIMIT 1)"
        )


@pytest.mark.parametrize(
    "divergence", [_skip_a_leaf, _one_fresh_key_more, _one_age_changed], ids=lambda f: f.__name__
)
def test_a_skipped_leaf_or_one_key_otherwise_is_caught(
    pg: PgSchema, divergence: Callable[[PgSchema], None]
) -> None:
    _same_keys_twice(pg)
    _clean(pg, PLAIN)
    divergence(pg)
    assert _differing(pg) != []
