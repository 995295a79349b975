"""CLEANUP_AUTH_TENANT_COLUMN and CLEANUP_CREDS_PATH against a real PostgreSQL: an auth table
whose tenant column has another name (and the key table's integer type) and whose creds sit
nested in a JSON column. The pre-key window and the orphan rule read it; a tenant whose JSON
lacks the path keeps its pre-keys (a note); a missing column or an incomparable type is a
note naming it, with nothing deleted by the rule that needs it."""

from __future__ import annotations

import pytest
from psycopg.types.json import Jsonb

from handler.cleanup import run_cleanup
from handler.settings import Flags
from tests.support.db import PgSchema, baileys_creds
from tests.support.orphans import seed_candidates

DRY = Flags()
LIVE = Flags(dry_run=False)
ENV = {
    "CLEANUP_TABLE": "keys",
    "CLEANUP_TENANT_COLUMN": "wa",
    "CLEANUP_KEY_TYPE_COLUMN": "kind",
    "CLEANUP_KEY_ID_COLUMN": "kid",
    "CLEANUP_TIMESTAMP_COLUMN": "none",
    "CLEANUP_AUTH_TABLE": "accounts",
    "CLEANUP_AUTH_TENANT_COLUMN": "id",
    "CLEANUP_CREDS_COLUMN": "state",
    "CLEANUP_CREDS_PATH": "auth.creds",
}
ORPHANS_ON = {"CLEANUP_ORPHAN_RULE": "true", "CLEANUP_MAX_ORPHAN_TENANT_FRACTION": "0.5"}
# 1: creds at auth.creds (window 200..1199, all its ids held); 2: an auth row without the
# path; 3: no auth row
KEYS = [
    *[(1, "pre-key", str(i)) for i in (1, 2, 3, 4, 5, *range(200, 1200))],
    (1, "session", "5511988887777.0"),
    *[(2, "pre-key", str(i)) for i in (1, 2, 3)],
    *[(3, "pre-key", str(i)) for i in (1, 2)],
    (3, "session", "5511977776666.0"),
    (3, "app-state-sync-key", "AAAA"),
]
WINDOW_GONE = {(1, "pre-key", str(i)) for i in (1, 2, 3, 4, 5)}
ORPHAN_GONE = {k for k in KEYS if k[0] == 3}


def _seed(pg: PgSchema, auth_id_type: str = "integer") -> None:
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE accounts (id {auth_id_type} PRIMARY KEY, state jsonb)")  # type: ignore[arg-type]
        conn.execute(
            "CREATE TABLE keys (wa integer NOT NULL, kind text NOT NULL, kid text NOT NULL, "
            "value text NOT NULL DEFAULT '{}', PRIMARY KEY (wa, kind, kid))"
        )
        conn.execute(
            "INSERT INTO accounts VALUES (%s, %s), (%s, %s)",
            (1, Jsonb({"auth": {"creds": baileys_creds(1200)}}), 2, Jsonb({"auth": {}})),
        )
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO keys (wa, kind, kid) VALUES (%s, %s, %s)", KEYS)


def _rows(pg: PgSchema) -> set[tuple[int, str, str]]:
    with pg.connect() as conn:
        return {(r[0], r[1], r[2]) for r in conn.execute("SELECT wa, kind, kid FROM keys")}


def test_the_creds_are_read_at_their_path_under_the_auth_tables_own_tenant_column(
    pg: PgSchema,
) -> None:
    _seed(pg)
    settings = pg.settings(**ENV)
    dry = run_cleanup(settings, DRY)
    assert dry.eligible == len(WINDOW_GONE)
    assert _rows(pg) == set(KEYS)
    live = run_cleanup(settings, LIVE)
    assert live.deleted == len(WINDOW_GONE)
    assert _rows(pg) == set(KEYS) - WINDOW_GONE
    assert not any("creds not read" in n for n in live.notes)
    # tenant 2's JSON lacks auth.creds: it keeps every pre-key, and the report says so
    assert any(
        "pre-keys of 1 tenant kept: creds have no auth.creds (CLEANUP_CREDS_PATH)" in n
        for n in live.notes
    )


def test_the_orphan_rule_compares_the_key_tables_tenant_with_the_auth_tables_own_column(
    pg: PgSchema,
) -> None:
    _seed(pg)
    settings = pg.settings(**ENV, **ORPHANS_ON)
    first = run_cleanup(settings, LIVE)  # tenant 3 found orphaned once: a candidate only
    assert (first.orphan_rule, first.orphan_candidates) == ("applied", 1)
    assert _rows(pg) == set(KEYS) - WINDOW_GONE
    seed_candidates(pg, "3", table="keys")  # a run two hours ago found it so too
    dry = run_cleanup(settings, DRY)
    assert dry.eligible == len(ORPHAN_GONE)
    live = run_cleanup(settings, LIVE)
    assert (live.orphan_rule, live.orphaned_tenants) == ("applied", 1)
    assert live.deleted == len(ORPHAN_GONE)
    assert _rows(pg) == set(KEYS) - WINDOW_GONE - ORPHAN_GONE


def test_an_auth_tenant_column_of_another_type_refuses_the_orphan_rule(pg: PgSchema) -> None:
    """text ids against integer ones: PostgreSQL cannot compare them; the rule is refused with
    a note, the creds (read as text) still serve the pre-key window."""
    _seed(pg, auth_id_type="text")
    seed_candidates(pg, "3", table="keys")
    live = run_cleanup(pg.settings(**ENV, **ORPHANS_ON), LIVE)
    assert live.orphan_rule == "refused"
    assert any("cannot be compared" in n for n in live.notes)
    assert _rows(pg) == set(KEYS) - WINDOW_GONE


@pytest.mark.parametrize("orphans", [{}, ORPHANS_ON], ids=["window", "orphans"])
def test_a_missing_auth_tenant_column_is_named_and_nothing_is_deleted(
    pg: PgSchema, orphans: dict[str, str]
) -> None:
    _seed(pg)
    seed_candidates(pg, "3", table="keys")
    live = run_cleanup(
        pg.settings(**{**ENV, "CLEANUP_AUTH_TENANT_COLUMN": "nope"}, **orphans), LIVE
    )
    assert live.deleted == 0
    assert _rows(pg) == set(KEYS)
    named = [n for n in live.notes if "has no tenant column nope (CLEANUP_AUTH_TENANT_COLUMN)" in n]
    assert named
    assert all("\n" not in n for n in named)
    assert len(named) == (2 if orphans else 1)  # the creds note, and the rule's refusal


def test_the_collation_check_reads_the_auth_tables_own_tenant_column(pg: PgSchema) -> None:
    """`keys.wa COLLATE "C"` against `accounts.id COLLATE "POSIX"`: the catalog check compares
    the two columns by their own names, and the refusal names both collations."""
    _seed(pg, auth_id_type='text COLLATE "POSIX"')
    with pg.connect() as conn:
        conn.execute('ALTER TABLE keys ALTER COLUMN wa TYPE text COLLATE "C"')
    seed_candidates(pg, "3", table="keys")
    live = run_cleanup(pg.settings(**ENV, **ORPHANS_ON), LIVE)
    assert live.orphan_rule == "refused"
    note = next(n for n in live.notes if n.startswith("orphan rule refused"))
    assert '"C"' in note
    assert '"POSIX"' in note
    assert _rows(pg) == {(str(w), k, i) for w, k, i in KEYS} - {
        (str(w), k, i) for w, k, i in WINDOW_GONE
    }
