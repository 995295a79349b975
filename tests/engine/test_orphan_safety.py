"""The orphan rule never takes a live tenant (issue 17, items 1, 2, 4 and 7), against a real
PostgreSQL: the measured set, deletions bounded by what was measured, whole-tenant grace,
two-run confirmation, the tenant cap, the auth table's lock, and tenant ids compared alike in
the measuring pass and the DELETE.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from handler import db
from handler.cleanup import run_cleanup
from handler.deleteloop import Progress
from handler.notify.html import render_summary, to_plain_text
from handler.report import Report, render_text
from handler.settings import Flags, Settings
from tests.support.db import PgSchema
from tests.support.orphans import (
    Key,
    add_tenant,
    backdate_runs,
    create_auth,
    insert,
    seed_candidates,
)
from tests.support.progress import AfterFirstBatch

LIVE = Flags(dry_run=False)


def orphan_settings(pg: PgSchema, **env: str) -> Settings:
    defaults = {
        "CLEANUP_ORPHAN_RULE": "true",
        "CLEANUP_AUTH_TABLE": "whatsapp_auth",
        "CLEANUP_EXPIRES_COLUMN": "expires_at",
    }
    return pg.settings(**(defaults | env))


def connected_tenants(n: int) -> list[str]:
    return [f"t{i:02d}" for i in range(n)]


def interleaved(tenants: list[str], per_tenant: int, age: float = 5) -> list[Key]:
    """Keys of every tenant on every page: tenant after tenant, key after key."""
    kinds = ("session", "app-state-sync-key", "lid-mapping", "sender-key")
    return [
        Key(t, kinds[i % len(kinds)], f"{t}-{i}", age) for i in range(per_tenant) for t in tenants
    ]


def auth_rows(pg: PgSchema) -> list[tuple[str, object]]:
    with pg.connect() as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT company_id, creds FROM whatsapp_auth")]


def seed_orphans(
    pg: PgSchema,
    orphans: list[str],
    per_tenant: int,
    *,
    tenants: int = 10,
    extra: tuple[Key, ...] = (),
    half_full: bool = False,
) -> list[Key]:
    """The reference table with `tenants` connected tenants and the `orphans` (without an auth
    row, recorded as candidates by an earlier run), `per_tenant` keys each, and the `extra` keys.
    """
    pg.create_reference_table()
    if half_full:
        _fill_half(pg)
    connected = connected_tenants(tenants)
    keys = [*interleaved([*connected, *orphans], per_tenant), *extra]
    insert(pg, keys)
    create_auth(pg, *connected)
    seed_candidates(pg, *orphans)
    return keys


def run_past_the_guard(pg: PgSchema, *after_first_batch: str) -> Report:
    """A live run in batches of 20, the guard out of the way; after its first batch, another
    session runs the `after_first_batch` statements (committed), which must have run."""

    def other_session() -> None:
        with pg.connect() as other:
            for statement in after_first_batch:
                other.execute(statement)

    ran = AfterFirstBatch(other_session)
    report = run_cleanup(
        orphan_settings(pg, CLEANUP_BATCH_SIZE="20", CLEANUP_GUARD_MIN_KEYS="100000"),
        LIVE,
        progress=ran,
    )
    assert ran.seen
    return report


# --- 1. the measured set, and deletions bounded by the measured counts -------------------------


def test_auth_table_emptied_during_the_run_takes_no_connected_tenant_key(pg: PgSchema) -> None:
    """The issue's reproduction: the auth table reloaded non-atomically during a live run."""
    keys = seed_orphans(pg, ["gone"], 20, tenants=40)
    saved = auth_rows(pg)
    # After the first batch, another session empties the table (committed) ...
    report = run_past_the_guard(pg, "DELETE FROM whatsapp_auth")
    with pg.connect() as conn, conn.cursor() as cur:  # ... and refills it later
        cur.executemany(
            "INSERT INTO whatsapp_auth (company_id, creds) VALUES (%s, %s)",
            [(t, psycopg.types.json.Jsonb(c)) for t, c in saved],
        )
    assert pg.key_set() == {k.ident for k in keys if k.company != "gone"}
    assert report.status == "completed"
    assert (report.orphan_rule, report.orphaned_tenants, report.orphaned) == ("applied", 1, 20)
    assert report.deleted == report.eligible == report.orphaned_deleted == 20


def _fill_half(pg: PgSchema) -> None:
    """Pages half full, so that an UPDATE keeps each row on its page (ahead of the run)."""
    with pg.connect() as conn:
        conn.execute("ALTER TABLE whatsapp_keys SET (fillfactor = 50)")


def test_age_and_ttl_deletions_past_the_measured_count_stop_the_run_partial(
    pg: PgSchema,
) -> None:
    pg.create_reference_table()
    _fill_half(pg)
    keys = [Key("a", "session", f"old-{i}", 40) for i in range(20)]
    keys += [Key("a", "session", f"k-{i}", 5, 10) for i in range(600)]
    insert(pg, keys)
    create_auth(pg, "a")
    # A bulk load rewrites every expiry into the past during the run.
    report = run_past_the_guard(
        pg, "UPDATE whatsapp_keys SET expires_at = now() - interval '1 day'"
    )
    assert report.eligible == 20
    assert report.status == "partial"
    assert report.reason is not None
    assert "age and TTL rules" in report.reason
    assert "20 measured" in report.reason
    # Bounded: the measured 20 plus the margin of 100; the batch that crossed it rolled back.
    assert report.deleted <= 120
    assert pg.count() == 620 - report.deleted


def test_orphan_deletions_past_the_measured_count_stop_the_run_partial(pg: PgSchema) -> None:
    seed_orphans(pg, ["gone"], 60, half_full=True)
    # A migration hands 300 old keys of connected tenants to the orphan during the run.
    report = run_past_the_guard(
        pg,
        "ALTER TABLE whatsapp_keys DISABLE TRIGGER USER",
        "UPDATE whatsapp_keys SET company_id = 'gone', key_id = 'moved-' || key_id "
        "WHERE company_id IN ('t00', 't01', 't02', 't03', 't04')",
    )
    assert report.orphaned == 60
    assert report.status == "partial"
    assert report.reason is not None
    assert "orphan rule" in report.reason
    assert report.orphaned_deleted <= 160
    assert report.deleted <= 160


# --- 2. whole-tenant grace, two-run confirmation, the tenant cap -------------------------------


def test_a_tenant_with_one_fresh_key_is_not_orphaned(pg: PgSchema) -> None:
    """The issue's reproduction: a partly loaded auth table, 4 of 10 tenants without their
    row, each of them with keys written minutes ago."""
    pg.create_reference_table()
    tenants = connected_tenants(10)
    keys = interleaved(tenants, 8)
    missing = tenants[6:]
    keys += [Key(t, "session", f"{t}-fresh", 5 / 1440) for t in missing]
    insert(pg, keys)
    create_auth(pg, *tenants[:6])
    seed_candidates(pg, *missing)  # even had an earlier run seen them without their row
    report = run_cleanup(orphan_settings(pg, CLEANUP_MAX_ORPHAN_TENANT_FRACTION="0.5"), LIVE)
    assert pg.key_set() == {k.ident for k in keys}
    assert (report.orphan_candidates, report.orphaned_tenants, report.orphaned) == (0, 0, 0)
    assert report.deleted == 0


def test_an_orphaned_tenant_is_confirmed_by_a_run_at_least_an_hour_earlier(
    pg: PgSchema,
) -> None:
    pg.create_reference_table()
    tenants = connected_tenants(10)
    keys = interleaved([*tenants, "gone", "back"], 4)
    insert(pg, keys)
    create_auth(pg, *tenants)
    settings_ = orphan_settings(pg)
    everything = {k.ident for k in keys}

    first = run_cleanup(settings_, LIVE)
    assert (first.orphan_rule, first.orphan_candidates) == ("applied", 2)
    assert (first.orphaned_tenants, first.orphaned, first.deleted) == (0, 0, 0)
    assert any("2 tenants" in n and "confirm" in n for n in first.notes), first.notes
    assert "2 candidate tenants" in render_text(first)
    assert "2 candidates for the next run" in to_plain_text(render_summary(first))
    again = run_cleanup(settings_, LIVE)  # minutes later: not yet
    assert (again.orphaned, again.deleted) == (0, 0)
    assert pg.key_set() == everything

    backdate_runs(pg)
    with pg.connect() as app:
        add_tenant(app, "back")  # logged in again in between
    dry = run_cleanup(settings_, Flags(dry_run=True, verbose=True))
    assert (dry.orphaned_tenants, dry.orphaned, dry.orphaned_tenant_ids) == (1, 4, ["gone"])
    live = run_cleanup(settings_, LIVE)
    assert (live.orphaned_tenants, live.orphaned, live.deleted) == (1, 4, 4)
    assert "orphaned 4 keys of 1 tenants (4 deleted)" in to_plain_text(render_summary(live))
    assert "(grace 1d, 4 deleted)" in render_text(live)
    assert pg.key_set() == {k.ident for k in keys if k.company != "gone"}


def test_without_the_run_history_the_orphan_rule_deletes_nothing(pg: PgSchema) -> None:
    keys = seed_orphans(pg, ["gone"], 4)
    report = run_cleanup(orphan_settings(pg, CLEANUP_HISTORY="false"), LIVE)
    assert report.orphan_rule == "refused"
    assert any("CLEANUP_HISTORY" in n for n in report.notes), report.notes
    assert (report.orphaned, report.deleted) == (0, 0)
    assert pg.key_set() == {k.ident for k in keys}


def test_more_orphaned_tenants_than_the_cap_refuses_the_rule(pg: PgSchema) -> None:
    seed_orphans(pg, ["gone-1", "gone-2", "gone-3"], 2, tenants=20)
    report = run_cleanup(orphan_settings(pg, CLEANUP_MAX_ORPHAN_TENANTS="2"), LIVE)
    assert report.orphan_rule == "refused"
    note = next(n for n in report.notes if "CLEANUP_MAX_ORPHAN_TENANTS" in n)
    assert "3 tenants" in note
    assert "6 keys" in note
    assert (report.orphaned, report.deleted) == (0, 0)
    raised = run_cleanup(orphan_settings(pg, CLEANUP_MAX_ORPHAN_TENANTS="3"), LIVE)
    assert (raised.orphan_rule, raised.orphaned_tenants, raised.deleted) == ("applied", 3, 6)


@pytest.fixture
def holder(pg: PgSchema) -> Iterator[psycopg.Connection]:  # type: ignore[type-arg]
    conn = psycopg.connect(pg.dsn)
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()


def _reload_auth_in_one_transaction(
    conn: psycopg.Connection, rows: list[tuple[str, object]]
) -> None:  # type: ignore[type-arg]
    """The safe reload: TRUNCATE and INSERT in one transaction, left open (ACCESS EXCLUSIVE)."""
    conn.execute("TRUNCATE whatsapp_auth")
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO whatsapp_auth (company_id, creds) VALUES (%s, %s)",
            [(t, psycopg.types.json.Jsonb(c)) for t, c in rows],
        )


def test_batches_wait_the_lock_timeout_for_the_auth_table_reloaded_in_one_transaction(
    pg: PgSchema,
    holder: psycopg.Connection,  # type: ignore[type-arg]
) -> None:
    keys = seed_orphans(pg, ["gone"], 30)
    rows = auth_rows(pg)
    started: list[threading.Timer] = []

    def reload(p: Progress) -> None:
        if not started:
            _reload_auth_in_one_transaction(holder, rows)
            timer = threading.Timer(0.5, holder.commit)
            timer.start()
            started.append(timer)

    report = run_cleanup(
        orphan_settings(pg, CLEANUP_BATCH_SIZE="20", CLEANUP_LOCK_TIMEOUT_MS="5000"),
        LIVE,
        progress=reload,
    )
    started[0].join()
    assert report.status == "completed"
    assert report.skipped_pages == 0
    assert not any("application held rows" in n for n in report.notes)
    assert pg.key_set() == {k.ident for k in keys if k.company != "gone"}


def test_auth_table_locked_through_the_batches_ends_partial_naming_the_table(
    pg: PgSchema,
    holder: psycopg.Connection,  # type: ignore[type-arg]
) -> None:
    keys = seed_orphans(pg, ["gone"], 30)
    rows = auth_rows(pg)

    def reload(p: Progress) -> None:
        if holder.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            _reload_auth_in_one_transaction(holder, rows)

    report = run_cleanup(
        orphan_settings(
            pg,
            CLEANUP_BATCH_SIZE="20",
            CLEANUP_LOCK_TIMEOUT_MS="300",
            CLEANUP_BATCH_ATTEMPTS="2",
        ),
        LIVE,
        progress=reload,
    )
    holder.commit()
    assert report.status == "partial"
    assert report.reason is not None
    assert f"{pg.schema}.whatsapp_auth" in report.reason
    assert "lock" in report.reason
    assert report.skipped_pages == 0
    assert {k.ident for k in keys if k.company != "gone"} <= pg.key_set()


def test_auth_table_locked_before_the_measuring_pass_refuses_the_orphan_rule_only(
    pg: PgSchema,
    holder: psycopg.Connection,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lock is taken after the creds were read and before the measuring pass."""
    keys = seed_orphans(pg, ["gone"], 3, extra=(Key("t00", "session", "old", 40),))
    rows = auth_rows(pg)
    read_creds = db.read_creds

    def read_then_lock(*args: object, **kwargs: object) -> object:
        found = read_creds(*args, **kwargs)  # type: ignore[arg-type]
        _reload_auth_in_one_transaction(holder, rows)
        return found

    monkeypatch.setattr(db, "read_creds", read_then_lock)
    report = run_cleanup(orphan_settings(pg, CLEANUP_LOCK_TIMEOUT_MS="300"), LIVE)
    holder.commit()
    assert report.status == "completed"
    assert report.orphan_rule == "refused"
    note = next(n for n in report.notes if n.startswith("orphan rule refused"))
    assert f"{pg.schema}.whatsapp_auth" in note
    assert "locked" in note
    assert report.deleted == 1  # the age rule went on
    assert pg.key_set() == {k.ident for k in keys} - {("t00", "session", "old")}


def test_auth_table_locked_from_the_start_refuses_the_rule_and_the_creds_read_once(
    pg: PgSchema,
    holder: psycopg.Connection,  # type: ignore[type-arg]
) -> None:
    pg.create_reference_table()
    tenants = connected_tenants(10)
    insert(pg, interleaved([*tenants, "gone"], 3))
    create_auth(pg, *tenants)
    _reload_auth_in_one_transaction(holder, auth_rows(pg))
    report = run_cleanup(orphan_settings(pg, CLEANUP_LOCK_TIMEOUT_MS="300"), LIVE)
    holder.commit()
    assert report.status == "completed"
    assert report.orphan_rule == "refused"
    assert any(n.startswith("orphan rule refused") and "locked" in n for n in report.notes)
    creds = next(n for n in report.notes if n.startswith("creds not read"))
    assert "locked" in creds


# --- 7. collations and types ------------------------------------------------------------------


def test_tenant_columns_of_different_collations_refuse_the_rule_and_the_run_goes_on(
    pg: PgSchema,
) -> None:
    pg.create_reference_table()
    tenants = connected_tenants(10)
    keys = [*interleaved([*tenants, "gone"], 2), Key("t00", "session", "old", 40)]
    insert(pg, keys)
    create_auth(pg, *tenants)
    with pg.connect() as conn:
        # The case where the server has ICU; a server built without it (the embedded
        # one) still has POSIX, which conflicts with "C" just the same.
        icu = conn.execute("SELECT 1 FROM pg_collation WHERE collname = 'en-x-icu'").fetchone()
        other = "en-x-icu" if icu else "POSIX"
        conn.execute('ALTER TABLE whatsapp_keys ALTER COLUMN company_id TYPE text COLLATE "C"')
        conn.execute(
            sql.SQL(
                "ALTER TABLE whatsapp_auth ALTER COLUMN company_id TYPE text COLLATE {}"
            ).format(sql.Identifier(other))
        )
    seed_candidates(pg, "gone")
    report = run_cleanup(orphan_settings(pg), LIVE)
    assert report.status == "completed"
    assert report.orphan_rule == "refused"
    note = next(n for n in report.notes if n.startswith("orphan rule refused"))
    assert '"C"' in note
    assert f'"{other}"' in note
    assert report.deleted == 1


@pytest.mark.parametrize(
    ("key_type", "auth_type", "connected", "gone"),
    [
        # 1 and 1.0 are one tenant to PostgreSQL, '1' and '1.0' two strings.
        ("integer", "numeric", ["1.0", "3", "4", "5", "6"], ["1", "2"]),
        # 'a' in char(12) and 'a ' in varchar are one tenant to PostgreSQL.
        ("character(12)", "character varying", ["a ", "c", "d", "e", "f"], ["a", "b"]),
    ],
)
def test_measuring_pass_and_delete_compare_tenant_ids_alike(
    pg: PgSchema, key_type: str, auth_type: str, connected: list[str], gone: list[str]
) -> None:
    pg.create_reference_table()
    with pg.connect() as conn:
        conn.execute(
            sql.SQL(
                "ALTER TABLE whatsapp_keys ALTER COLUMN company_id TYPE {} USING company_id::{}"
            ).format(sql.SQL(key_type), sql.SQL(key_type))
        )
    # connected[0] is gone[0]'s auth row, spelt otherwise.
    keys_of = [*connected[1:], *gone]
    insert(pg, interleaved(keys_of, 3))
    create_auth(pg, *connected)
    with pg.connect() as conn:
        conn.execute(
            sql.SQL(
                "ALTER TABLE whatsapp_auth ALTER COLUMN company_id TYPE {} USING company_id::{}"
            ).format(sql.SQL(auth_type), sql.SQL(auth_type))
        )
    seed_candidates(pg, *gone)
    report = run_cleanup(orphan_settings(pg, CLEANUP_MAX_ORPHAN_TENANT_FRACTION="0.5"), LIVE)
    assert report.orphan_rule == "applied"
    # gone[0] has an auth row by PostgreSQL's comparison: neither reported nor deleted.
    assert report.orphaned_tenants == 1
    assert report.orphaned == report.deleted == report.orphaned_deleted == 3
    with pg.connect() as conn:
        left = {r[0].strip() for r in conn.execute("SELECT company_id::text FROM whatsapp_keys")}
    assert left == set(keys_of) - {gone[1]}


def test_odd_tenant_ids_are_matched_exactly(pg: PgSchema) -> None:
    odd = ['we"ird', "back\\slash", "com,ma", "{brace}", " spaced ", "NULL"]
    keys = seed_orphans(pg, odd, 2)
    report = run_cleanup(orphan_settings(pg, CLEANUP_MAX_ORPHAN_TENANT_FRACTION="0.5"), LIVE)
    assert (report.orphaned_tenants, report.deleted) == (len(odd), 2 * len(odd))
    assert pg.key_set() == {k.ident for k in keys if k.company in connected_tenants(10)}
