"""The encoded layout against real PostgreSQL (docs/layouts.md): keys stored as "<type>-<id>"
in one column (after "<session><sep>" in some stores), the creds row in the same table, and
usually no timestamp. Each test seeds a table, runs the job and compares the rows left with
what the rules say, exactly.
"""

from __future__ import annotations

from typing import Any

import pytest
from psycopg.types.json import Jsonb

from handler.cleanup import run_cleanup
from handler.deleteloop import Progress
from handler.notify.html import render_summary
from handler.report import render_text
from handler.settings import ConfigError, Flags
from tests.support.db import PgSchema, baileys_creds
from tests.support.encoded import Layout, add_creds, create, insert, keys_left
from tests.support.orphans import seed_candidates
from tests.support.progress import AfterFirstBatch

LIVE = Flags(dry_run=False)
DRY = Flags(dry_run=True)

WAHA = Layout()  # (session_id, key, value jsonb)
PREFIXED = Layout(session_column=None, separator=":", value_type="text", creds_key="auth_creds")
PROTECTED = [
    "app-state-sync-key-AAAA",
    "app-state-sync-version-critical_block",
    "device-list-5511999",
    "lid-mapping-123",
]
# Keys of other types, each a prefix trap: `sender-key-memory-` starts with `sender-key-`.
OTHERS = [
    "sender-key-memory-120363@g.us",
    "session-5511999.0",
    "identity-key-5511999.0",
    "tctoken-5511999",
]
UNKNOWN = ["pre-keys-1", "prekey-2", "weird", "PRE-KEY-3", "-pre-key-4"]


def run(pg: PgSchema, layout: Layout, flags: Flags = LIVE, **env: str) -> Any:
    return run_cleanup(pg.settings(**layout.env(**env)), flags)


def prekeys(ids: range) -> list[str]:
    return [f"pre-key-{i}" for i in ids]


@pytest.mark.parametrize("layout", [WAHA, PREFIXED], ids=["session-column", "session-prefix"])
def test_prekeys_outside_the_window_go_and_nothing_else(pg: PgSchema, layout: Layout) -> None:
    create(pg, layout)
    add_creds(pg, layout, {"s1": baileys_creds(2101, 2001), "s2": baileys_creds(900)})
    everything = [*PROTECTED, *OTHERS, *UNKNOWN]
    insert(pg, layout, "s1", [*prekeys(range(1, 2101)), *everything])
    insert(pg, layout, "s2", [*prekeys(range(1, 900)), *everything])
    before = keys_left(pg, layout)

    dry = run(pg, layout, DRY)
    assert keys_left(pg, layout) == before  # a dry run deletes nothing
    report = run(pg, layout)

    gone = {("s1", f"pre-key-{i}") for i in range(1, 1001)}
    assert keys_left(pg, layout) == before - gone
    assert report.status == "completed"
    assert report.deleted == dry.eligible == 1000
    assert report.by_type["pre-key"].kept == 1100 + 899
    assert any("of no known Baileys type kept" in n for n in report.notes)
    assert any("the age rule is off" in n for n in report.notes)
    # Every rendering says so too, and none shows ages no key has.
    assert "retention: none, the age rule is off" in render_text(report)
    assert "age distribution" not in render_text(report)
    assert "the age rule is off" in render_summary(report)


def test_a_creds_value_that_does_not_parse_keeps_that_sessions_prekeys(pg: PgSchema) -> None:
    layout = Layout(value_type="text")
    create(pg, layout)
    add_creds(pg, layout, {"good": baileys_creds(2001), "bad": "{not json"})
    insert(pg, layout, "good", prekeys(range(1, 2001)))
    insert(pg, layout, "bad", prekeys(range(1, 2001)))
    report = run(pg, layout)
    left = keys_left(pg, layout)
    assert {k for s, k in left if s == "bad"} == {*prekeys(range(1, 2001)), "creds"}
    assert {k for s, k in left if s == "good"} == {*prekeys(range(1001, 2001)), "creds"}
    assert report.deleted == 1000
    assert any("pre-keys of 1 tenant kept" in n for n in report.notes)


def test_a_session_without_creds_keeps_its_prekeys_without_the_orphan_rule(pg: PgSchema) -> None:
    create(pg, WAHA)
    insert(pg, WAHA, "nocreds", prekeys(range(1, 3000)))
    report = run(pg, WAHA)
    assert report.deleted == 0
    assert len(keys_left(pg, WAHA)) == 2999


@pytest.mark.parametrize("layout", [WAHA, PREFIXED], ids=["session-column", "session-prefix"])
def test_orphan_rule_takes_sessions_without_a_creds_row_once_confirmed(
    pg: PgSchema, layout: Layout
) -> None:
    create(pg, layout)
    tenants = [f"t{i}" for i in range(8)]
    add_creds(pg, layout, {t: baileys_creds(10) for t in tenants})
    for session in [*tenants, "gone"]:
        insert(pg, layout, session, [*PROTECTED, *OTHERS, *prekeys(range(1, 5)), *UNKNOWN])
    before = keys_left(pg, layout)
    env = {"CLEANUP_ORPHAN_RULE": "true"}

    first = run(pg, layout, **env)  # not confirmed yet: recorded as a candidate
    assert keys_left(pg, layout) == before
    assert first.orphan_candidates == 1
    seed_candidates(pg, "gone", table="auth_keys")
    dry = run(pg, layout, DRY, **env)
    report = run(pg, layout, **env)

    taken = {("gone", k) for k in [*PROTECTED, *OTHERS, *prekeys(range(1, 5))]}
    assert keys_left(pg, layout) == before - taken  # unknown keys stay, and every creds row
    assert (report.orphan_rule, report.orphaned_tenants) == ("applied", 1)
    assert report.deleted == dry.eligible == report.orphaned == len(taken)


def test_a_creds_row_written_during_the_run_keeps_that_sessions_keys(pg: PgSchema) -> None:
    create(pg, WAHA)
    add_creds(pg, WAHA, {f"t{i}": baileys_creds(10) for i in range(8)})
    for i in range(8):
        insert(pg, WAHA, f"t{i}", OTHERS)
    insert(pg, WAHA, "back", [f"session-{i}.0" for i in range(400)])
    insert(pg, WAHA, "gone", [f"session-{i}.0" for i in range(400)])
    seed_candidates(pg, "back", "gone", table="auth_keys")
    # After the first batch, "back" pairs again: its creds row appears.
    reconnected = AfterFirstBatch(lambda: add_creds(pg, WAHA, {"back": baileys_creds(10)}))
    report = run_cleanup(
        pg.settings(**WAHA.env(CLEANUP_ORPHAN_RULE="true", CLEANUP_BATCH_SIZE="50")),
        LIVE,
        progress=reconnected,
    )
    left = keys_left(pg, WAHA)
    assert reconnected.seen
    assert not {k for s, k in left if s == "gone"}
    # Whatever the first batch took of "back" before its creds came, the rest stayed.
    back = {k for s, k in left if s == "back"}
    assert "creds" in back
    assert report.orphaned_tenants == 2
    assert report.deleted == 400 + (400 - (len(back) - 1))
    assert len(back) - 1 > 0


def test_with_a_timestamp_the_age_rule_applies_to_parsed_types(pg: PgSchema) -> None:
    layout = Layout(timestamp=True)
    create(pg, layout)
    add_creds(pg, layout, {"s": baileys_creds(10)})
    insert(pg, layout, "s", [*PROTECTED, *OTHERS, *UNKNOWN], age_days=60)
    insert(pg, layout, "s", ["session-new.0"], age_days=1)
    before = keys_left(pg, layout)
    report = run(pg, layout)
    # The age rule takes every old key of a known, unprotected type; the rest stays.
    assert keys_left(pg, layout) == before - {("s", k) for k in OTHERS}
    assert report.deleted == len(OTHERS)


def test_columns_layout_without_timestamp_runs_the_prekey_window_only(pg: PgSchema) -> None:
    pg.create_reference_table()
    pg.add_auth({"a": baileys_creds(2001)})
    with pg.connect() as conn:
        conn.execute(
            "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at) "
            "SELECT 'a', t, g::text, '{}'::jsonb, now() - interval '90 days' "
            "FROM generate_series(1, 2000) g, unnest(ARRAY['pre-key', 'session']) t"
        )
    report = run_cleanup(
        pg.settings(CLEANUP_TIMESTAMP_COLUMN="none", CLEANUP_GUARD_MIN_KEYS="100000"), LIVE
    )
    assert report.deleted == 1000
    with pg.connect() as conn:
        left = conn.execute(
            "SELECT key_type, count(*), min(key_id::int) FROM whatsapp_keys GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert left == [("pre-key", 1000, 1001), ("session", 2000, 1)]
    assert any("the age rule is off" in n for n in report.notes)


def test_a_one_blob_per_session_table_is_refused_in_one_line(pg: PgSchema) -> None:
    with pg.connect() as conn:
        conn.execute('CREATE TABLE "Whatsapps" (id serial PRIMARY KEY, session text, status text)')
        conn.execute("""INSERT INTO "Whatsapps" (session) VALUES ('{"creds": {}, "keys": {}}')""")
    for env in (WAHA.env(CLEANUP_TABLE="Whatsapps"), {"CLEANUP_TABLE": "Whatsapps"}):
        with pytest.raises(ConfigError) as exc:
            run_cleanup(pg.settings(**env), LIVE)
        message = str(exc.value)
        assert "one JSON blob" in message
        assert "rewrites whole" in message
        assert "\n" not in message
    with pg.connect() as conn:
        assert conn.execute('SELECT count(*) FROM "Whatsapps"').fetchone() == (1,)


def test_missing_encoded_columns_are_named(pg: PgSchema) -> None:
    create(pg, WAHA)
    with pytest.raises(ConfigError, match=r"column k does not exist .*CLEANUP_KEY_COLUMN"):
        run(pg, WAHA, CLEANUP_KEY_COLUMN="k")
    with pytest.raises(ConfigError, match=r"column v does not exist .*CLEANUP_VALUE_COLUMN"):
        run(pg, WAHA, CLEANUP_VALUE_COLUMN="v")
    with pytest.raises(ConfigError, match="column company_id does not exist"):
        run(pg, WAHA, CLEANUP_TENANT_COLUMN="company_id")


def test_a_protected_type_is_kept_even_where_a_shorter_type_prefixes_it(pg: PgSchema) -> None:
    layout = Layout(timestamp=True)
    create(pg, layout)
    add_creds(pg, layout, {"s": baileys_creds(10)})
    memory = ["sender-key-memory-120363@g.us", "sender-key-memory-99@g.us"]
    sender = ["sender-key-120363@g.us::5511::0"]
    insert(pg, layout, "s", [*memory, *sender], age_days=60)
    report = run(pg, layout, CLEANUP_PROTECTED_KEY_TYPES="sender-key-memory")
    # The memory rows are protected; the sender key then goes (its group's memory row is there,
    # but the creds say it is not our own: user 5511 is not ME).
    assert keys_left(pg, layout) == {("s", "creds"), *(("s", k) for k in memory)}
    assert report.by_type["sender-key-memory"].protected == 2


def _repair_after_first_batch(pg: PgSchema, layout: Layout, session: str) -> Any:
    """A progress hook: after the first batch, `session` pairs again (as Baileys does it: new
    pre-keys 1..812 written, then creds counting from 1 saved)."""
    done: list[Progress] = []

    def repair(p: Progress) -> None:
        if done:
            return
        with pg.connect() as conn:
            key = layout.stored_key(session, "")
            conn.execute(
                "DELETE FROM auth_keys WHERE key LIKE %s || 'pre-key-%%'"
                + (" AND session_id = %s" if layout.session_column else ""),
                (key, session) if layout.session_column else (key,),
            )
        insert(pg, layout, session, prekeys(range(1, 813)))
        with pg.connect() as conn:
            creds = layout.stored_key(session, layout.creds_key)
            conn.execute(
                "DELETE FROM auth_keys WHERE key = %s"
                + (" AND session_id = %s" if layout.session_column else ""),
                (creds, session) if layout.session_column else (creds,),
            )
        add_creds(pg, layout, {session: baileys_creds(813)})
        done.append(p)

    return repair, done


@pytest.mark.parametrize("layout", [WAHA, PREFIXED], ids=["session-column", "session-prefix"])
def test_prekeys_minted_while_the_run_goes_are_kept(pg: PgSchema, layout: Layout) -> None:
    """Creds changed during the run: a session pairs again after the first batch. Its new
    pre-keys (1..812) fall below the window read at the start, and have no timestamp to show
    they are new; each DELETE checks that the session's creds row is the one read."""
    create(pg, layout)
    add_creds(pg, layout, {"a": baileys_creds(6001), "b": baileys_creds(6001)})
    insert(pg, layout, "a", prekeys(range(1, 6001)))
    insert(pg, layout, "b", prekeys(range(1, 6001)))
    repair, done = _repair_after_first_batch(pg, layout, "b")
    report = run_cleanup(pg.settings(**layout.env(CLEANUP_BATCH_SIZE="100")), LIVE, progress=repair)
    assert done
    left = keys_left(pg, layout)
    assert {k for s, k in left if s == "b"} == {*prekeys(range(1, 813)), layout.creds_key}
    assert {k for s, k in left if s == "a"} == {*prekeys(range(5001, 6001)), layout.creds_key}
    assert report.status == "completed"


def test_prekeys_above_the_newest_id_are_kept_without_a_timestamp(pg: PgSchema) -> None:
    """Baileys writes new pre-keys before it saves the creds that count them: without a
    timestamp, an id above nextPreKeyId - 1 may be one of those, not a leftover."""
    create(pg, WAHA)
    add_creds(pg, WAHA, {"a": baileys_creds(2001)})
    insert(pg, WAHA, "a", prekeys(range(1, 2100)))
    run(pg, WAHA)
    assert {k for _, k in keys_left(pg, WAHA)} == {*prekeys(range(1001, 2100)), "creds"}


def test_columns_layout_without_timestamp_rechecks_the_auth_table_too(pg: PgSchema) -> None:
    pg.create_reference_table()
    pg.add_auth({"a": baileys_creds(6001), "b": baileys_creds(6001)})
    with pg.connect() as conn:
        conn.execute(
            "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value) "
            "SELECT c, 'pre-key', g::text, '{}'::jsonb "
            "FROM generate_series(1, 6000) g, unnest(ARRAY['a', 'b']) c"
        )

    def repair() -> None:  # "b" pairs again: new pre-keys 1..812, then its creds
        with pg.connect() as conn:
            conn.execute("DELETE FROM whatsapp_keys WHERE company_id = 'b'")
            conn.execute(
                "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value) "
                "SELECT 'b', 'pre-key', g::text, '{}'::jsonb FROM generate_series(1, 812) g"
            )
            conn.execute(
                "UPDATE whatsapp_auth SET creds = %s WHERE company_id = 'b'",
                (Jsonb(baileys_creds(813)),),
            )

    done = AfterFirstBatch(repair)
    settings = pg.settings(
        CLEANUP_TIMESTAMP_COLUMN="none", CLEANUP_GUARD_MIN_KEYS="100000", CLEANUP_BATCH_SIZE="100"
    )
    run_cleanup(settings, LIVE, progress=done)
    assert done.seen
    with pg.connect() as conn:
        left = conn.execute(
            "SELECT company_id, count(*), min(key_id::int) FROM whatsapp_keys GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert left == [("a", 1000, 5001), ("b", 812, 1)]


def test_a_key_refreshed_during_the_run_survives(pg: PgSchema) -> None:
    layout = Layout(timestamp=True)
    create(pg, layout)
    add_creds(pg, layout, {"s": baileys_creds(10)})
    old = [f"session-{i}.0" for i in range(600)]
    insert(pg, layout, "s", old, age_days=60)

    def refresh() -> None:  # the application uses the last 100 sessions again
        with pg.connect() as conn:
            conn.execute(
                "UPDATE auth_keys SET updated_at = now() WHERE key = ANY(%s)", (old[-100:],)
            )

    refreshed = AfterFirstBatch(refresh)
    report = run_cleanup(
        pg.settings(**layout.env(CLEANUP_BATCH_SIZE="50")), LIVE, progress=refreshed
    )
    assert refreshed.seen
    left = {k for _, k in keys_left(pg, layout)}
    # The first batch took some of the old keys; every refreshed key not yet taken stayed.
    assert left - {"creds"} <= set(old[-100:])
    assert report.deleted == 600 - len(left - {"creds"})
    assert len(left) > 1


def test_without_timestamp_an_unreadable_auth_table_keeps_every_prekey(pg: PgSchema) -> None:
    pg.create_reference_table()
    pg.add_auth({"a": baileys_creds(6001)})
    with pg.connect() as conn:
        conn.execute(
            "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value) "
            "SELECT 'a', 'pre-key', g::text, '{}'::jsonb FROM generate_series(1, 6000) g"
        )
    report = run_cleanup(
        pg.settings(
            CLEANUP_TIMESTAMP_COLUMN="none",
            CLEANUP_CREDS_COLUMN="no_such_column",
            CLEANUP_GUARD_MIN_KEYS="100000",
        ),
        LIVE,
    )
    assert (report.status, report.deleted) == ("completed", 0)
    assert any("creds not read" in n for n in report.notes)
    assert pg.count() == 6000
