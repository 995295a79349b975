"""The orphan rule: keys of logged-out tenants go once confirmed, protected ones included; it is
refused with a note when the auth table cannot be trusted, and never takes a connected
tenant's key.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from handler import rules
from handler.cleanup import run_cleanup
from handler.report import render_text
from handler.settings import DEFAULT_PROTECTED_KEY_TYPES, ConfigError, Flags, Settings
from tests.support.db import PgSchema
from tests.support.orphans import (
    ORPHAN_KEYS,
    Key,
    add_tenant,
    create_auth,
    insert,
    on,
    seed_candidates,
)
from tests.support.progress import AfterFirstBatch
from tests.support.tables import FORCE, LIVE

PROTECTED = set(DEFAULT_PROTECTED_KEY_TYPES)


def age_or_ttl(k: Key, retention: float = 30, overrides: dict[str, int] | None = None) -> bool:
    days = (overrides or {}).get(k.key_type, retention)
    return k.key_type not in PROTECTED and (k.age >= days or k.expired())


def test_orphan_rule_deletes_keys_of_logged_out_tenants_protected_included(
    keys_table: PgSchema,
) -> None:
    insert(keys_table, ORPHAN_KEYS)
    create_auth(keys_table, "a", "b")
    seed_candidates(keys_table, "c", "d")  # a run two hours ago found both without creds
    report = run_cleanup(
        on(keys_table, CLEANUP_AUTH_TABLE="whatsapp_auth"), Flags(dry_run=False, verbose=True)
    )

    gone = {"a-old", "c-young", "c-old", "c-protected", "c-protected-old", "d-expired-within-grace"}
    assert {k[2] for k in keys_table.key_set()} == {k.key_id for k in ORPHAN_KEYS} - gone
    assert report.orphan_rule == "applied"
    assert report.auth_table == f"{keys_table.schema}.whatsapp_auth"
    assert report.orphan_grace_days == 1
    assert report.orphaned == 4  # c's keys; d has keys touched within the grace
    assert report.orphaned_tenants == 1
    assert report.orphan_candidates == 1
    assert report.orphaned_tenant_ids == ["c"]
    assert report.eligible == report.deleted == 6
    assert report.expired == 1
    assert report.protected == 1  # a's old protected key; c's are orphaned, not protected
    assert report.by_type["app-state-sync-key"].orphaned == 1
    assert report.by_type["app-state-sync-key"].eligible == 1
    assert report.by_type["app-state-sync-key"].deleted == 1
    assert report.by_type["lid-mapping"].orphaned == 1
    assert report.by_type["session"].orphaned == 1
    assert report.by_type["pre-key"].orphaned == 1
    text = render_text(report)
    assert "orphaned 4 keys of 1 tenant without" in text
    assert "orphaned tenants: c" in text


def test_orphan_ids_are_listed_only_in_verbose_runs_and_at_most_twenty(
    keys_table: PgSchema,
) -> None:
    keys = [Key(f"gone-{i:02d}", "session", "k", 5) for i in range(25)]
    keys += [Key(f"here-{i:02d}", "session", "k", 5) for i in range(30)]
    insert(keys_table, keys)
    create_auth(keys_table, *(f"here-{i:02d}" for i in range(30)))
    seed_candidates(keys_table, *(f"gone-{i:02d}" for i in range(25)))
    settings_ = on(keys_table, CLEANUP_AUTH_TABLE="whatsapp_auth")
    quiet = run_cleanup(settings_, Flags())
    assert quiet.orphaned_tenants == 25
    assert quiet.orphaned_tenant_ids == []
    verbose = run_cleanup(settings_, Flags(verbose=True))
    assert len(verbose.orphaned_tenant_ids) == rules.MAX_ORPHANED_TENANT_IDS
    assert set(verbose.orphaned_tenant_ids) < {f"gone-{i:02d}" for i in range(25)}


def test_tenant_reconnecting_during_the_run_keeps_its_keys(keys_table: PgSchema) -> None:
    # The logged-out tenant's keys spread over every page, between the connected tenant's.
    keys = [
        Key("c" if i % 2 else "a", "app-state-sync-key" if i % 4 == 1 else "session", f"k{i}", 5)
        for i in range(800)
    ]
    insert(keys_table, keys)
    create_auth(keys_table, "a")
    seed_candidates(keys_table, "c")
    with keys_table.connect() as conn:
        pages = dict(
            conn.execute(
                "SELECT key_id, (ctid::text::point)[0]::int FROM whatsapp_keys "
                "WHERE company_id = 'c'"
            ).fetchall()
        )

    def reconnect() -> None:  # after the first batch, tenant c logs in again
        with keys_table.connect() as app:
            add_tenant(app, "c")

    first = AfterFirstBatch(reconnect)

    settings_ = on(
        keys_table,
        CLEANUP_AUTH_TABLE="whatsapp_auth",
        CLEANUP_BATCH_SIZE="20",
        CLEANUP_GUARD_MIN_KEYS="100000",
    )
    report = run_cleanup(settings_, LIVE, progress=first)
    assert first.seen
    done = first.seen[0].pages_done
    assert 0 < done < max(pages.values())
    deleted_first = {key for key, page in pages.items() if page < done}
    assert deleted_first
    survivors = {k.ident for k in keys if k.key_id not in deleted_first}
    assert keys_table.key_set() == survivors
    assert report.deleted == len(deleted_first)
    assert report.eligible == 400


def test_empty_auth_table_refuses_the_orphan_rule_and_age_goes_on(keys_table: PgSchema) -> None:
    insert(keys_table, ORPHAN_KEYS)
    create_auth(keys_table)
    report = run_cleanup(on(keys_table, CLEANUP_AUTH_TABLE="whatsapp_auth"), LIVE)
    assert report.orphan_rule == "refused"
    assert any("auth table whatsapp_auth has no tenant rows" in n for n in report.notes)
    assert report.orphaned == 0
    # a-old by age, c-expired-within-grace by TTL; c-old is a pre-key of a tenant without
    # creds, which the key lifecycle keeps from age and TTL (only the orphan rule takes it).
    assert report.deleted == 2
    assert {k[2] for k in keys_table.key_set()} == {k.key_id for k in ORPHAN_KEYS} - {
        "a-old",
        "d-expired-within-grace",
    }


def test_missing_auth_table_refuses_the_orphan_rule(keys_table: PgSchema) -> None:
    insert(keys_table, ORPHAN_KEYS)
    report = run_cleanup(on(keys_table, CLEANUP_AUTH_TABLE="whatsapp_auht"), LIVE)
    assert report.status == "completed"
    assert report.orphan_rule == "refused"
    assert any("whatsapp_auht is not readable (no such table)" in n for n in report.notes)
    # The age rule goes on, but the creds were not read: every session stays (the two old
    # ones, a-old and the expired d one), as every pre-key does.
    assert report.deleted == 0
    assert any("every session is kept" in n for n in report.notes)


def test_auth_table_without_the_tenant_column_refuses_the_orphan_rule(
    keys_table: PgSchema,
) -> None:
    insert(keys_table, ORPHAN_KEYS)
    with keys_table.connect() as conn:
        conn.execute("CREATE TABLE whatsapp_auth (tenant text PRIMARY KEY)")
        conn.execute("INSERT INTO whatsapp_auth VALUES ('a')")
    report = run_cleanup(on(keys_table, CLEANUP_AUTH_TABLE="whatsapp_auth"), LIVE)
    assert report.orphan_rule == "refused"
    assert any("no tenant column" in n for n in report.notes)
    # The age rule goes on, but the creds were not read: every session stays (the two old
    # ones, a-old and the expired d one), as every pre-key does.
    assert report.deleted == 0
    assert any("every session is kept" in n for n in report.notes)


@pytest.fixture
def no_auth_grant(keys_table: PgSchema) -> Iterator[Settings]:
    """A role that may delete keys but may not read the auth table."""
    role = f"{keys_table.schema}_noauth"
    with keys_table.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(keys_table.schema), sql.Identifier(role)
            )
        )
        conn.execute(
            sql.SQL("GRANT SELECT, DELETE ON whatsapp_keys TO {}").format(sql.Identifier(role))
        )
    try:
        yield on(
            keys_table,
            DATABASE_URL=keys_table.dsn + f" user={role}",
            CLEANUP_AUTH_TABLE="whatsapp_auth",
            CLEANUP_HISTORY="false",
        )
    finally:
        with keys_table.connect() as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_unreadable_auth_table_refuses_the_orphan_rule_without_failing(
    keys_table: PgSchema, no_auth_grant: Settings
) -> None:
    insert(keys_table, ORPHAN_KEYS)
    create_auth(keys_table, "a", "b")
    report = run_cleanup(no_auth_grant, LIVE)
    assert report.status == "completed"
    assert report.orphan_rule == "refused"
    assert any("permission denied" in n for n in report.notes)
    # The age rule goes on, but the creds were not read: every session stays (the two old
    # ones, a-old and the expired d one), as every pre-key does.
    assert report.deleted == 0
    assert any("every session is kept" in n for n in report.notes)


def test_too_many_orphaned_tenants_refuses_the_orphan_rule(keys_table: PgSchema) -> None:
    insert(keys_table, ORPHAN_KEYS)
    create_auth(keys_table, "a")  # b, c and d: 3 of 4 tenants, above one half
    seed_candidates(keys_table, "b", "c")
    report = run_cleanup(on(keys_table, CLEANUP_AUTH_TABLE="whatsapp_auth"), LIVE)
    assert report.orphan_rule == "refused"
    assert report.orphaned == 0
    assert report.orphaned_tenants == 2
    note = next(n for n in report.notes if n.startswith("orphan rule refused"))
    assert "3 of 4 tenants with keys (75%)" in note
    assert "It would have taken 6 keys" in note
    assert report.deleted == 2  # as with an empty auth table
    # The operator raises the limit: now the rule applies.
    raised = run_cleanup(
        on(
            keys_table, CLEANUP_AUTH_TABLE="whatsapp_auth", CLEANUP_MAX_ORPHAN_TENANT_FRACTION="0.8"
        ),
        LIVE,
    )
    assert raised.orphan_rule == "applied"
    assert raised.orphaned == 6  # c-old too: the lifecycle kept it from the age rule
    assert {k[0] for k in keys_table.key_set()} == {"a", "d"}  # d-within-grace stays


def test_bad_auth_table_name_is_a_settings_error(pg: PgSchema) -> None:
    with pytest.raises(ConfigError, match="CLEANUP_AUTH_TABLE"):
        on(pg, CLEANUP_AUTH_TABLE="whatsapp_auth; drop table x")
    with pytest.raises(ConfigError, match="CLEANUP_AUTH_TABLE"):
        on(pg, CLEANUP_AUTH_TABLE="pg_catalog.pg_authid")


def test_orphan_rule_needs_the_tenant_column_in_the_key_table(keys_table: PgSchema) -> None:
    create_auth(keys_table, "a")
    with pytest.raises(ConfigError, match=r"column tenant does not exist"):
        run_cleanup(
            on(keys_table, CLEANUP_AUTH_TABLE="whatsapp_auth", CLEANUP_TENANT_COLUMN="tenant"),
            LIVE,
        )


TENANTS = ("a", "b", "c", "d")


TYPES = ("pre-key", "session", "app-state-sync-key", "lid-mapping")


key_strategy = st.tuples(
    st.sampled_from(TENANTS),
    st.sampled_from(TYPES),
    st.floats(min_value=0, max_value=60, allow_nan=False),
    st.one_of(st.none(), st.floats(min_value=-5, max_value=5, allow_nan=False)),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.lists(key_strategy, max_size=60),
    connected=st.sets(st.sampled_from(TENANTS), min_size=1),
    batch=st.integers(min_value=1, max_value=30),
    pre_key_days=st.one_of(st.none(), st.integers(min_value=1, max_value=50)),
    grace=st.integers(min_value=1, max_value=40),
)
def test_property_connected_tenants_and_live_keys_are_never_deleted(
    pg: PgSchema,
    rows: list[tuple[str, str, float, float | None]],
    connected: set[str],
    batch: int,
    pre_key_days: int | None,
    grace: int,
) -> None:
    with pg.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS whatsapp_keys, whatsapp_auth, keys_cleanup_runs CASCADE")
        conn.execute("DROP FUNCTION IF EXISTS whatsapp_keys_touch() CASCADE")
    pg.create_reference_table()
    keys = [Key(t, kt, str(i + 1), age, exp) for i, (t, kt, age, exp) in enumerate(rows)]
    # Keep ages and expiries off the edges: the run's now() is a few ms after the insert's.
    keys = [
        k
        for k in keys
        if min(abs(k.age - d) for d in (30, grace, pre_key_days or 30)) > 0.001
        and (k.expires_in is None or abs(k.expires_in) > 0.001)
    ]
    insert(pg, keys)
    create_auth(pg, *sorted(connected))
    seed_candidates(pg, *(set(TENANTS) - connected))  # an earlier run found them so too
    overrides = {"pre-key": pre_key_days} if pre_key_days else {}
    report = run_cleanup(
        on(
            pg,
            CLEANUP_AUTH_TABLE="whatsapp_auth",
            CLEANUP_MAX_ORPHAN_TENANT_FRACTION="1",
            CLEANUP_BATCH_SIZE=str(batch),
            CLEANUP_ORPHAN_GRACE_DAYS=str(grace),
            CLEANUP_TYPE_RETENTION_DAYS=f"pre-key={pre_key_days}" if pre_key_days else "",
        ),
        FORCE,
    )
    survivors = pg.key_set()
    # A tenant without creds keeps its pre-keys from age and TTL (the key lifecycle); the
    # orphan rule still takes them.
    by_rules = {
        k.ident
        for k in keys
        if age_or_ttl(k, overrides=overrides)
        and not (k.key_type == "pre-key" and k.company not in connected)
    }
    for k in keys:
        if k.company in connected and k.ident not in by_rules:
            assert k.ident in survivors, k  # the orphan rule never takes a connected tenant's key
        if k.expires_in is not None and k.expires_in > 0 and k.age < 1:
            assert k.ident in survivors, k  # live expiry, recent update: never deleted
    # A tenant is orphaned whole: no creds row, and none of its keys touched within the grace.
    touched = {k.company for k in keys if k.age < grace}
    orphaned = {k.ident for k in keys if k.company not in connected | touched}
    expected = {k.ident for k in keys} - orphaned - by_rules
    assert survivors == expected
    assert report.deleted == report.eligible == len(keys) - len(expected)
    # The measuring pass counts what the DELETEs did, rule by rule.
    assert report.expired == sum(
        1
        for k in keys
        if k.expired()
        and k.key_type not in PROTECTED
        and not (k.key_type == "pre-key" and k.company not in connected)
    )
    assert report.orphaned == len(orphaned)
    kept = {
        k.ident
        for k in keys
        if k.key_type in PROTECTED and (k.age >= 30 or k.expired()) and k.ident not in orphaned
    }
    assert report.protected == len(kept)
    assert sum(t.eligible for t in report.by_type.values()) == report.eligible


def test_keys_the_orphan_rule_deletes_are_not_also_reported_as_kept(keys_table: PgSchema) -> None:
    """c logged out: its 40-day pre-key, which the key lifecycle would keep (no creds), goes
    with the orphan rule. It is counted gone (orphaned, deleted), never also kept."""
    insert(keys_table, ORPHAN_KEYS)
    create_auth(keys_table, "a", "b")
    seed_candidates(keys_table, "c", "d")  # a run two hours ago found both without creds
    settings = on(keys_table, CLEANUP_AUTH_TABLE="whatsapp_auth")
    dry = run_cleanup(settings, Flags(dry_run=True))
    report = run_cleanup(settings, Flags(dry_run=False, verbose=True))
    assert report.orphan_rule == "applied"
    assert ("c", "pre-key", "c-old") not in keys_table.key_set()
    assert report.by_type["pre-key"].deleted == 1
    for r in (dry, report):
        assert r.kept == [], r.kept
        assert r.by_type["pre-key"].kept == 0
