"""The rules beyond age against a real PostgreSQL: the TTL column, orphaned tenants, top tenants.

Each rule deletes exactly its keys and reports exact counts; each batch's DELETE re-checks every
rule, so a key whose expiry moves or whose tenant reconnects during the run survives.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.types.json import Jsonb

from handler import observability, rules
from handler.cleanup import run_cleanup
from handler.db import TenantCounts
from handler.deleteloop import Progress
from handler.notify import sentry as sentry_notify
from handler.notify.html import render_guard_abort, render_summary, to_plain_text
from handler.report import render_text
from handler.schema import reference_auth_schema
from handler.settings import DEFAULT_PROTECTED_KEY_TYPES, ConfigError, Flags, Settings
from tests.conftest import PgSchema, baileys_creds
from tests.orphan_support import seed_candidates

LIVE = Flags(dry_run=False)
FORCE = Flags(dry_run=False, force=True)
PROTECTED = set(DEFAULT_PROTECTED_KEY_TYPES)


@dataclass(frozen=True)
class Key:
    company: str
    key_type: str
    key_id: str
    age: float  # days since updated_at
    expires_in: float | None = None  # days from now; negative: already expired

    @property
    def ident(self) -> tuple[str, str, str]:
        return (self.company, self.key_type, self.key_id)

    def expired(self) -> bool:
        return self.expires_in is not None and self.expires_in < 0


def insert(pg: PgSchema, keys: Iterable[Key]) -> None:
    with pg.connect() as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at, "
            'expires_at) VALUES (%s, %s, %s, \'{"k": "secret"}\', '
            "now() - make_interval(secs => %s * 86400), "
            "now() + make_interval(secs => %s * 86400))",
            [(k.company, k.key_type, k.key_id, k.age, k.expires_in) for k in keys],
        )


def create_auth(pg: PgSchema, *tenants: str, table: str = "whatsapp_auth") -> None:
    with pg.connect() as conn:
        conn.execute(reference_auth_schema(table))
        for tenant in tenants:
            add_tenant(conn, tenant, table)


def add_tenant(conn: psycopg.Connection, tenant: str, table: str = "whatsapp_auth") -> None:  # type: ignore[type-arg]
    conn.execute(
        sql.SQL("INSERT INTO {} (company_id, creds) VALUES (%s, %s)").format(sql.Identifier(table)),
        (tenant, Jsonb(CREDS)),
    )


# Every connected tenant's creds: pre-keys uploaded up to 99,999, so the numeric pre-key ids
# below are far from the window, and the rules under test decide.
CREDS = baileys_creds(100_000)


def on(pg: PgSchema, **env: str) -> Settings:
    """Settings with the rules this file tests turned on: TTL (CLEANUP_EXPIRES_COLUMN) and,
    where an auth table is named, the orphan rule; both are opt-in. The tables here have a
    handful of tenants, so one orphaned tenant may be half of them."""
    defaults = {"CLEANUP_EXPIRES_COLUMN": "expires_at"}
    if env.get("CLEANUP_AUTH_TABLE"):
        defaults["CLEANUP_ORPHAN_RULE"] = "true"
        defaults["CLEANUP_MAX_ORPHAN_TENANT_FRACTION"] = "0.5"
    return pg.settings(**(defaults | env))


def age_or_ttl(k: Key, retention: float = 30, overrides: dict[str, int] | None = None) -> bool:
    days = (overrides or {}).get(k.key_type, retention)
    return k.key_type not in PROTECTED and (k.age >= days or k.expired())


@pytest.fixture
def keys_table(pg: PgSchema) -> PgSchema:
    pg.create_reference_table()
    return pg


# --- the TTL rule ---------------------------------------------------------------------------


TTL_KEYS = [
    Key("a", "session", "young-expired", 2, -1),
    Key("a", "device-list", "young-expired-2", 0.5, -0.01),
    Key("a", "session", "young-live", 2, 1),
    Key("a", "session", "young-no-ttl", 2),
    Key("a", "session", "old-live", 40, 10),  # the age rule takes it
    Key("a", "sender-key", "old-expired", 40, -3),  # both rules: counted once
    Key("a", "app-state-sync-key", "protected-expired", 2, -1),
    Key("a", "lid-mapping", "protected-old-expired", 50, -1),
]


def test_ttl_rule_deletes_expired_keys_whatever_their_age(keys_table: PgSchema) -> None:
    insert(keys_table, TTL_KEYS)
    report = run_cleanup(on(keys_table), LIVE)

    deleted = {"young-expired", "young-expired-2", "old-live", "old-expired"}
    assert keys_table.key_set() == {k.ident for k in TTL_KEYS if k.key_id not in deleted}
    assert report.expires_column == "expires_at"
    assert report.eligible == report.deleted == 4
    assert report.expired == 3  # unprotected keys whose expiry passed
    assert report.protected == 2  # both protected keys: kept from the TTL (and age) rule
    assert report.by_type["session"].expired == 1
    assert report.by_type["device-list"].expired == 1
    assert report.by_type["sender-key"].expired == 1
    assert report.by_type["session"].eligible == 2
    assert report.by_type["app-state-sync-key"].expired == 0
    assert report.by_type["app-state-sync-key"].protected == 1
    assert report.expired_by_age == {"<1d": 1, "1-7d": 1, "7-14d": 0, "14-30d": 0, ">30d": 1}
    text = render_text(report)
    assert "TTL expired 3" in text
    assert "expired" in text.split("age distribution:")[1]


def test_ttl_dry_run_counts_what_the_live_run_deletes(keys_table: PgSchema) -> None:
    insert(keys_table, TTL_KEYS)
    dry = run_cleanup(on(keys_table), Flags(verbose=True))
    assert dry.eligible == 4
    assert dry.expired == 3
    assert {e.key["key_id"] for e in dry.keys} == {
        "young-expired",
        "young-expired-2",
        "old-live",
        "old-expired",
    }
    assert keys_table.count() == len(TTL_KEYS)


def test_empty_expires_setting_ignores_the_column(keys_table: PgSchema) -> None:
    insert(keys_table, TTL_KEYS)
    report = run_cleanup(on(keys_table, CLEANUP_EXPIRES_COLUMN=""), LIVE)
    assert report.expires_column is None
    assert report.expired == 0
    assert report.expired_by_age == {}
    assert report.deleted == 2  # the age rule alone: old-live, old-expired
    assert ("a", "session", "young-expired") in keys_table.key_set()


def test_ttl_column_of_a_wrong_type_is_a_clear_error(pg: PgSchema) -> None:
    with pg.connect() as conn:
        conn.execute(
            "CREATE TABLE whatsapp_keys (company_id text, key_type text, key_id text, "
            "value jsonb, updated_at timestamptz, expires_at text)"
        )
        conn.execute("INSERT INTO whatsapp_keys VALUES ('a', 'session', 'k', '{}', now(), 'soon')")
    with pytest.raises(ConfigError, match=r"expires_at is text, not a timestamp"):
        run_cleanup(on(pg), LIVE)
    assert pg.count() == 1


def test_table_without_the_default_ttl_column_runs_by_age(pg: PgSchema) -> None:
    with pg.connect() as conn:
        conn.execute(
            "CREATE TABLE whatsapp_keys (company_id text, key_type text, key_id text, "
            "value jsonb, updated_at timestamptz)"
        )
        conn.execute(
            "INSERT INTO whatsapp_keys VALUES ('a', 'session', 'old', '{}', "
            "now() - interval '40 days'), ('a', 'session', 'new', '{}', now())"
        )
    report = run_cleanup(pg.settings(), LIVE)
    assert report.expires_column is None
    assert report.deleted == 1
    assert not any("CLEANUP_EXPIRES_COLUMN" in note for note in report.notes)
    # Named explicitly, a missing column is worth a note (a typo would silently drop the rule).
    named = run_cleanup(on(pg, CLEANUP_EXPIRES_COLUMN="expire_at"), LIVE)
    assert any("CLEANUP_EXPIRES_COLUMN=expire_at: no such column" in n for n in named.notes)


def test_out_of_range_expiry_never_deletes_and_never_breaks_the_run(
    keys_table: PgSchema,
) -> None:
    with keys_table.connect() as conn:
        conn.execute(
            "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at, "
            "expires_at) VALUES "
            "('a', 'session', 'minus-infinity', '{}', now(), '-infinity'), "
            "('a', 'session', 'infinity', '{}', now(), 'infinity'), "
            "('a', 'session', 'bc', '{}', now(), '0044-03-15 00:00:00+00 BC'), "
            "('a', 'session', 'year-1', '{}', now(), '0001-01-01 00:00:00+00'), "
            "('a', 'session', 'expired', '{}', now(), now() - interval '1 hour')"
        )
    report = run_cleanup(on(keys_table), LIVE)
    assert report.status == "completed"
    assert report.deleted == report.expired == 1
    assert {k[2] for k in keys_table.key_set()} == {"minus-infinity", "infinity", "bc", "year-1"}


def test_expiry_extended_during_the_run_survives(keys_table: PgSchema) -> None:
    keys = [Key("a", "session", f"k{i:04d}", 1, -1) for i in range(600)]
    insert(keys_table, keys)
    with keys_table.connect() as conn:
        last = conn.execute(
            "SELECT key_id FROM whatsapp_keys ORDER BY ctid DESC LIMIT 1"
        ).fetchone()
    assert last is not None
    extended: list[Progress] = []

    def extend(p: Progress) -> None:
        if not extended:  # after the first batch, the app renews a key in a later page
            with keys_table.connect() as app:
                app.execute(
                    "UPDATE whatsapp_keys SET expires_at = now() + interval '1 day' "
                    "WHERE key_id = %s",
                    last,
                )
            extended.append(p)

    settings_ = on(keys_table, CLEANUP_BATCH_SIZE="20", CLEANUP_GUARD_MIN_KEYS="100000")
    report = run_cleanup(settings_, LIVE, progress=extend)
    assert extended
    assert extended[0].pages_done < extended[0].pages_total
    assert keys_table.key_set() == {("a", "session", last[0])}
    assert report.deleted == report.eligible - 1 == 599


def test_naive_ttl_column_needs_the_zone_for_a_live_run(pg: PgSchema) -> None:
    with pg.connect() as conn:
        conn.execute(
            "CREATE TABLE whatsapp_keys (company_id text, key_type text, key_id text, "
            "value jsonb, updated_at timestamptz, expires_at timestamp)"
        )
        # Expired an hour ago in New York wall time; UTC wall time would be 4-5 hours later.
        conn.execute(
            "INSERT INTO whatsapp_keys VALUES ('a', 'session', 'k', '{}', now(), "
            "(now() AT TIME ZONE 'America/New_York') - interval '1 hour')"
        )
    with pytest.raises(ConfigError, match=r"expires_at is timestamp without time zone"):
        run_cleanup(on(pg), LIVE)
    report = run_cleanup(on(pg, CLEANUP_TIMESTAMP_TIMEZONE="America/New_York"), LIVE)
    assert report.deleted == report.expired == 1


# --- the orphan rule ------------------------------------------------------------------------


ORPHAN_KEYS = [
    Key("a", "session", "a-young", 2),
    Key("a", "session", "a-old", 40),
    Key("a", "app-state-sync-key", "a-protected-old", 40),
    Key("b", "pre-key", "b-young", 3),
    Key("b", "lid-mapping", "b-protected", 3),
    # c logged out: its creds row is gone, and no key was touched within the grace
    Key("c", "session", "c-young", 2),
    Key("c", "pre-key", "c-old", 40),
    Key("c", "app-state-sync-key", "c-protected", 5),
    Key("c", "lid-mapping", "c-protected-old", 90),
    # d has no creds row either, but keys touched within the grace: not orphaned
    Key("d", "session", "d-within-grace", 0.5),
    Key("d", "session", "d-expired-within-grace", 0.5, -1),
]


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
    first: list[Progress] = []

    def reconnect(p: Progress) -> None:
        if not first:  # after the first batch, tenant c logs in again
            with keys_table.connect() as app:
                add_tenant(app, "c")
            first.append(p)

    settings_ = on(
        keys_table,
        CLEANUP_AUTH_TABLE="whatsapp_auth",
        CLEANUP_BATCH_SIZE="20",
        CLEANUP_GUARD_MIN_KEYS="100000",
    )
    report = run_cleanup(settings_, LIVE, progress=reconnect)
    assert first
    done = first[0].pages_done
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
    assert report.deleted == 2  # as with an empty auth table


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
    assert report.deleted == 2  # as with an empty auth table


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
    assert report.deleted == 2  # as with an empty auth table


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


# --- the guard across rules -----------------------------------------------------------------


def test_guard_counts_every_rule_together(keys_table: PgSchema) -> None:
    # 40% old, 20% expired but young, 10% of a logged-out tenant: each rule alone is below
    # the 50% guard, together they are 70%.
    keys = [Key("a", "session", f"old{i}", 40) for i in range(40)]
    keys += [Key("a", "session", f"exp{i}", 2, -1) for i in range(20)]
    keys += [Key("a", "session", f"new{i}", 2, 5) for i in range(30)]
    keys += [Key("gone", "session", f"orph{i}", 2) for i in range(10)]
    insert(keys_table, keys)
    create_auth(keys_table, "a")
    seed_candidates(keys_table, "gone")
    settings_ = on(
        keys_table,
        CLEANUP_GUARD_MIN_KEYS="10",
        CLEANUP_AUTH_TABLE="whatsapp_auth",
        CLEANUP_MAX_ORPHAN_TENANT_FRACTION="0.5",
    )
    aborted = run_cleanup(settings_, LIVE)
    assert aborted.status == "aborted"
    assert aborted.eligible == 70
    assert aborted.expired == 20
    assert aborted.orphaned == 10
    assert "70 of 100 keys (70%)" in (aborted.reason or "")
    assert keys_table.count() == 100

    assert any("the guard counts every rule together" in n for n in aborted.notes)
    assert "Rules: TTL expired 20 · orphaned 10 keys of 1 tenants" in to_plain_text(
        render_guard_abort(aborted, settings_)
    )

    # Each key is counted once: old keys that are also expired do not count twice.
    forced = run_cleanup(settings_, FORCE)
    assert forced.deleted == 70
    assert {k[2][:3] for k in keys_table.key_set()} == {"new"}


def test_key_eligible_by_several_rules_is_counted_once(keys_table: PgSchema) -> None:
    keys = [Key("gone", "session", f"k{i}", 40, -1) for i in range(5)]
    keys += [Key("a", "session", f"keep{i}", 2) for i in range(5)]
    insert(keys_table, keys)
    create_auth(keys_table, "a")
    seed_candidates(keys_table, "gone")
    report = run_cleanup(on(keys_table, CLEANUP_AUTH_TABLE="whatsapp_auth"), LIVE)
    assert report.eligible == report.deleted == 5
    assert report.expired == report.orphaned == 5
    assert report.by_type["session"].eligible == 5


# --- top tenants ----------------------------------------------------------------------------


def test_top_tenants_by_key_count_with_eligible_and_orphaned(keys_table: PgSchema) -> None:
    keys = [Key("big", "session", f"k{i}", 40 if i < 10 else 2) for i in range(30)]
    keys += [Key("mid", "session", f"k{i}", 2, -1 if i < 3 else None) for i in range(20)]
    keys += [Key("gone", "app-state-sync-key", f"k{i}", 5) for i in range(15)]
    keys += [Key(f"small{i}", "session", "k", 2) for i in range(6)]
    insert(keys_table, keys)
    create_auth(keys_table, "big", "mid", *(f"small{i}" for i in range(6)))
    seed_candidates(keys_table, "gone")
    report = run_cleanup(
        on(keys_table, CLEANUP_AUTH_TABLE="whatsapp_auth", CLEANUP_TOP_TENANTS="3"),
        Flags(),
    )
    top = [(t.tenant, t.keys, t.eligible, t.orphaned) for t in report.top_tenants]
    assert top == [("big", 30, 10, 0), ("mid", 20, 3, 0), ("gone", 15, 15, 15)]
    text = render_text(report)
    assert "top tenants" in text
    assert "gone" in text.split("top tenants")[1]
    plain = to_plain_text(render_summary(report))
    assert "Top tenants" in plain
    assert "big" in plain


def test_top_tenants_off_with_zero_and_without_a_tenant_column(keys_table: PgSchema) -> None:
    insert(keys_table, [Key("a", "session", "k", 2)])
    assert run_cleanup(on(keys_table, CLEANUP_TOP_TENANTS="0"), Flags()).top_tenants == []
    assert run_cleanup(on(keys_table, CLEANUP_TENANT_COLUMN="tenant"), Flags()).top_tenants == []


def test_rule_metrics_and_log_fields(
    keys_table: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    insert(keys_table, ORPHAN_KEYS)
    create_auth(keys_table, "a", "b")
    seed_candidates(keys_table, "c")
    report = run_cleanup(on(keys_table, CLEANUP_AUTH_TABLE="whatsapp_auth"), Flags())
    observability.publish_report(report)
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    (main,) = [b for b in blobs if "KeysExpired" in b]
    values = [main[name] for name in ("KeysExpired", "KeysOrphaned", "OrphanedTenants")]
    assert [v[0] if isinstance(v, list) else v for v in values] == [1, 4, 1]
    fields = observability.report_fields(report)
    assert (fields["expired"], fields["orphaned"], fields["orphaned_tenants"]) == (1, 4, 1)
    assert fields["orphan_rule"] == "applied"


def test_tenant_ids_never_reach_sentry(keys_table: PgSchema) -> None:
    insert(keys_table, [Key("tenant-canary", "session", "k", 2)])
    create_auth(keys_table, "someone")
    seed_candidates(keys_table, "tenant-canary")
    report = run_cleanup(
        on(keys_table, CLEANUP_AUTH_TABLE="whatsapp_auth", CLEANUP_MAX_ORPHAN_TENANT_FRACTION="1"),
        Flags(verbose=True),
    )
    assert report.top_tenants
    assert report.orphaned_tenant_ids == ["tenant-canary"]
    figures = sentry_notify.figures(report)
    assert "tenant-canary" not in repr(figures)
    assert figures["orphaned_tenants"] == 1
    assert "tenant-canary" not in repr(sentry_notify.tags(report, report.status))


# --- pure policies --------------------------------------------------------------------------


def refusal(**overrides: object) -> str | None:
    values: dict[str, object] = {
        "auth_table": "whatsapp_auth",
        "problem": None,
        "has_tenants": True,
        "orphaned_tenants": 1,
        "tenants": 4,
        "max_fraction": 0.5,
    }
    values.update(overrides)
    return rules.orphan_refusal(**values)  # type: ignore[arg-type]


def test_orphan_refusal_policy() -> None:
    assert refusal() is None
    assert refusal(orphaned_tenants=2) is None  # exactly one half: allowed
    assert "3 of 4 tenants with keys (75%)" in (refusal(orphaned_tenants=3) or "")
    assert refusal(orphaned_tenants=4, max_fraction=1.0) is None
    assert "not readable (no such table)" in (refusal(problem="no such table") or "")
    assert "has no tenant rows" in (refusal(has_tenants=False) or "")
    # Nothing with keys: nothing to orphan, nothing to refuse.
    assert refusal(orphaned_tenants=0, tenants=0) is None


def test_top_tenants_policy_ranks_by_keys_then_id() -> None:
    tenants = [
        TenantCounts("b", 5, 1, 0, 0, False),
        TenantCounts("a", 5, 2, 0, 0, False),
        TenantCounts("z", 9, 0, 9, 7, True, confirmed=True),
        TenantCounts(None, 1, 0, 0, 0, True, confirmed=True),
    ]
    applied = rules.top_tenants(tenants, 3, orphans=True)
    assert [(t.tenant, t.eligible, t.orphaned) for t in applied] == [
        ("z", 7, 9),
        ("a", 2, 0),
        ("b", 1, 0),
    ]
    refused = rules.top_tenants(tenants, 1, orphans=False)
    assert [(t.tenant, t.eligible, t.orphaned) for t in refused] == [("z", 0, 0)]
    assert [t.tenant for t in rules.orphaned_tenants(tenants)] == ["z"]


# --- property -------------------------------------------------------------------------------

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
    keys = [Key(t, kt, str(i), age, exp) for i, (t, kt, age, exp) in enumerate(rows)]
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


def test_rule_settings_defaults_empty_values_and_bad_values() -> None:
    defaults = Settings.from_env({})
    # TTL and orphans are opt-in (docs/key-lifecycle.md); the creds are read by default.
    assert (defaults.expires_column, defaults.orphan_rule) == (None, False)
    assert (defaults.prekey_window, defaults.prekey_age_only) == (1000, False)
    assert (defaults.creds_column, defaults.key_id_column) == ("creds", "key_id")
    assert (defaults.auth_table, defaults.auth_table_parts) == (None, None)
    assert (defaults.tenant_column, defaults.orphan_grace_days) == ("company_id", 1)
    assert (defaults.max_orphan_tenant_fraction, defaults.top_tenants) == (0.25, 5)
    empty = Settings.from_env({"CLEANUP_EXPIRES_COLUMN": "", "CLEANUP_AUTH_TABLE": " "})
    assert (empty.expires_column, empty.auth_table) == (None, None)
    assert Settings.from_env({"CLEANUP_AUTH_TABLE": "auth.creds"}).auth_table_parts == (
        "auth",
        "creds",
    )
    for name, value in [
        ("CLEANUP_EXPIRES_COLUMN", "expires at"),
        ("CLEANUP_TENANT_COLUMN", "company-id"),
        ("CLEANUP_ORPHAN_GRACE_DAYS", "0"),
        ("CLEANUP_MAX_ORPHAN_TENANT_FRACTION", "0"),
        ("CLEANUP_MAX_ORPHAN_TENANT_FRACTION", "1.5"),
        ("CLEANUP_TOP_TENANTS", "-1"),
        ("CLEANUP_EXPIRES_COLUMN", "updated_at"),
        ("CLEANUP_PREKEY_WINDOW", "811"),
        ("CLEANUP_CREDS_COLUMN", "creds;"),
        ("CLEANUP_KEY_ID_COLUMN", "key id"),
        ("CLEANUP_ORPHAN_RULE", "maybe"),
    ]:
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})
