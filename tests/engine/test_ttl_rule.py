"""The TTL rule (CLEANUP_EXPIRES_COLUMN): expired keys go whatever their age, the expiry is
re-checked by each DELETE.
"""

from __future__ import annotations

import pytest

from handler.cleanup import run_cleanup
from handler.report import render_text
from handler.settings import ConfigError, Flags
from tests.support.db import PgSchema
from tests.support.orphans import Key, insert, on
from tests.support.progress import AfterFirstBatch
from tests.support.tables import LIVE

TTL_KEYS = [
    Key("a", "session", "young-expired", 2, -1),
    Key("a", "identity-key", "young-expired-2", 0.5, -0.01),
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
    assert report.by_type["identity-key"].expired == 1
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

    def extend() -> None:  # after the first batch, the app renews a key in a later page
        with keys_table.connect() as app:
            app.execute(
                "UPDATE whatsapp_keys SET expires_at = now() + interval '1 day' WHERE key_id = %s",
                last,
            )

    extended = AfterFirstBatch(extend)
    settings_ = on(keys_table, CLEANUP_BATCH_SIZE="20", CLEANUP_GUARD_MIN_KEYS="100000")
    report = run_cleanup(settings_, LIVE, progress=extended)
    assert extended.seen
    assert extended.seen[0].pages_done < extended.seen[0].pages_total
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


def test_an_empty_expires_column_setting_means_the_default_off(pg: PgSchema) -> None:
    assert pg.settings(CLEANUP_EXPIRES_COLUMN="").expires_column is None
    assert pg.settings(CLEANUP_EXPIRES_COLUMN="none").expires_column is None
