"""The key lifecycle against real PostgreSQL: keys Baileys still needs are kept whatever their
age (docs/key-lifecycle.md), and the rest still goes.

Each test writes a reference key table and auth table in its own schema, with creds as Baileys
keeps them, runs the job, and compares the rows left with what the rules say.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from handler import cleanup, db
from handler.cleanup import run_cleanup
from handler.lifecycle import KEEP_REASONS
from handler.settings import ConfigError, Flags, Settings
from tests.support.db import ME, ME_LID, KeyRow, PgSchema, baileys_creds
from tests.support.orphans import seed_candidates

LIVE = Flags(dry_run=False, force=True)


DRY = Flags(dry_run=True, force=True)


OLD = 60  # days: past the 30-day retention


def prekeys(company: str, ids: range, age: float) -> list[KeyRow]:
    return [KeyRow(company, "pre-key", str(i), age) for i in ids]


def ids_left(pg: PgSchema, company: str, key_type: str) -> set[str]:
    return {k for c, t, k in pg.key_set() if c == company and t == key_type}


def run(pg: PgSchema, flags: Flags = LIVE, **env: str) -> Any:
    return run_cleanup(pg.settings(**env), flags)


@pytest.fixture
def keys(pg: PgSchema) -> PgSchema:
    pg.create_reference_table()
    return pg


def test_prekeys_keep_the_newest_window_and_the_unuploaded_ones(keys: PgSchema) -> None:
    # 2,000 uploaded 60 days ago, 100 generated but not uploaded, all as old.
    keys.add_auth({"a": baileys_creds(2101, 2001)})
    keys.insert_keys(prekeys("a", range(1, 2101), OLD))
    dry = run(keys, DRY)
    report = run(keys)
    # Kept: 1,001..2,000 (the newest 1,000 uploaded) and 2,001..2,100 (not uploaded).
    assert ids_left(keys, "a", "pre-key") == {str(i) for i in range(1001, 2101)}
    assert report.deleted == dry.eligible == 1000
    assert report.by_type["pre-key"].kept == 1100
    assert [(k.key_type, k.keys) for k in report.kept] == [("pre-key", 1100)]
    assert "server may still hand them out" in report.kept[0].reason


def test_prekey_window_setting_widens_what_is_kept(keys: PgSchema) -> None:
    keys.add_auth({"a": baileys_creds(2001, 2001)})
    keys.insert_keys(prekeys("a", range(1, 2001), OLD))
    run(keys, CLEANUP_PREKEY_WINDOW="1500")
    assert ids_left(keys, "a", "pre-key") == {str(i) for i in range(501, 2001)}


def test_prekey_window_below_one_upload_is_refused(keys: PgSchema) -> None:
    with pytest.raises(ConfigError, match="CLEANUP_PREKEY_WINDOW"):
        keys.settings(CLEANUP_PREKEY_WINDOW="500")


def test_leftovers_of_an_earlier_registration_go_only_when_old(keys: PgSchema) -> None:
    # Re-paired 20 days ago: ids start again at 1; 813.. are the old registration's, except
    # fresh ones that a new upload wrote before its creds were saved.
    keys.add_auth({"a": baileys_creds(813, 813)})
    keys.insert_keys(
        prekeys("a", range(1, 813), 20)
        + prekeys("a", range(813, 1625), 90)
        + prekeys("a", range(1625, 1630), 0.01)
    )
    report = run(keys)
    left = ids_left(keys, "a", "pre-key")
    assert left == {str(i) for i in [*range(1, 813), *range(1625, 1630)]}
    assert report.deleted == 812


def test_non_numeric_prekey_ids_are_kept(keys: PgSchema) -> None:
    keys.add_auth({"a": baileys_creds(5001, 5001)})
    odd = ["pre-key:7", "-3", "1e3", "12345678901234567890", " 12"]
    # 1,002 numeric ids: the window keeps the 1,000 highest, 1 and 2 go; the odd ones stay.
    keys.insert_keys(
        [KeyRow("a", "pre-key", i, OLD) for i in odd] + prekeys("a", range(1, 1003), OLD)
    )
    run(keys)
    assert ids_left(keys, "a", "pre-key") == set(odd) | {str(i) for i in range(3, 1003)}


@pytest.mark.parametrize(
    ("value", "note"),
    [
        ({"registrationId": 1}, "creds have no pre-key counters"),
        ({"nextPreKeyId": "x", "firstUnuploadedPreKeyId": 3}, "creds have no pre-key counters"),
        ({"nextPreKeyId": 10, "firstUnuploadedPreKeyId": 30}, "creds counters are inconsistent"),
        (["not", "an", "object"], "creds are not a JSON object"),
        ("{broken", "creds are not JSON"),
    ],
)
def test_unreadable_creds_keep_that_tenants_prekeys(
    keys: PgSchema, value: object, note: str
) -> None:
    keys.add_auth({"bad": value, "good": baileys_creds(1001, 1001)})
    keys.insert_keys(prekeys("bad", range(1, 3000), OLD) + prekeys("good", range(1, 3000), OLD))
    report = run(keys)
    assert len(ids_left(keys, "bad", "pre-key")) == 2999
    assert ids_left(keys, "good", "pre-key") == {str(i) for i in range(1, 1001)}
    assert f"pre-keys of 1 tenant kept: {note}" in report.notes


def test_creds_stored_as_json_text_are_read(keys: PgSchema) -> None:
    """Some adapters store JSON.stringify output as a JSON string, or in a text column."""
    keys.add_auth({"a": json.dumps(baileys_creds(1001, 1001))})
    keys.insert_keys(prekeys("a", range(1, 1101), OLD))
    run(keys)
    assert len(ids_left(keys, "a", "pre-key")) == 1000
    with keys.connect() as conn:
        conn.execute("ALTER TABLE whatsapp_auth ALTER creds TYPE text USING creds #>> '{}'")
    keys.insert_keys(prekeys("a", range(1001, 1050), OLD))
    run(keys)
    assert len(ids_left(keys, "a", "pre-key")) == 1000


def test_without_an_auth_table_every_prekey_is_kept(keys: PgSchema) -> None:
    keys.insert_keys([*prekeys("a", range(1, 2000), OLD), KeyRow("a", "session", "9.0", OLD)])
    report = run(keys)
    assert len(ids_left(keys, "a", "pre-key")) == 1999
    assert ids_left(keys, "a", "session") == set()  # the other rules still apply
    assert any("every pre-key is kept" in n and "whatsapp_auth" in n for n in report.notes)


def test_tenant_without_an_auth_row_keeps_its_prekeys(keys: PgSchema) -> None:
    keys.add_auth({"a": baileys_creds(11, 11)})
    keys.insert_keys(prekeys("gone", range(1, 2000), OLD))
    report = run(keys)
    assert len(ids_left(keys, "gone", "pre-key")) == 1999
    assert report.orphan_rule == "off"  # reading creds is not the orphan rule


def test_configured_auth_table_elsewhere_is_read(keys: PgSchema) -> None:
    with keys.connect() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS " + keys.schema + "_auth")
        conn.execute(f"CREATE TABLE {keys.schema}_auth.tenants (company_id text, creds jsonb)")
        conn.execute(
            f"INSERT INTO {keys.schema}_auth.tenants VALUES ('a', %s)",
            (Jsonb(baileys_creds(1001, 1001)),),
        )
    try:
        keys.insert_keys(prekeys("a", range(1, 1201), OLD))
        report = run(keys, CLEANUP_AUTH_TABLE=f"{keys.schema}_auth.tenants")
        assert report.auth_table == f"{keys.schema}_auth.tenants"
        assert report.orphan_rule == "off"
        assert len(ids_left(keys, "a", "pre-key")) == 1000
    finally:
        with keys.connect() as conn:
            conn.execute(f"DROP SCHEMA {keys.schema}_auth CASCADE")


def test_prekey_age_only_is_an_explicit_opt_in(keys: PgSchema) -> None:
    keys.add_auth({"a": baileys_creds(1001, 1001)})
    keys.insert_keys(prekeys("a", range(1, 1001), OLD))
    report = run(keys, CLEANUP_PREKEY_AGE_ONLY="true")
    assert ids_left(keys, "a", "pre-key") == set()
    assert any("CLEANUP_PREKEY_AGE_ONLY=true" in n for n in report.notes)


def test_sessions_of_the_accounts_own_devices_are_never_deleted(keys: PgSchema) -> None:
    keys.add_auth({"a": baileys_creds(1, 1)})
    own = [f"{ME}.0", f"{ME}.12", f"{ME_LID}_1.0", f"{ME_LID}_1.33"]
    others = ["5511999999999.0", f"{ME}0.0", f"1{ME_LID}_1.0"]
    keys.insert_keys([KeyRow("a", "session", i, 400) for i in own + others])
    report = run(keys)
    assert ids_left(keys, "a", "session") == set(own)
    assert report.deleted == len(others)
    assert [(k.key_type, k.keys) for k in report.kept] == [("session", 4)]


def test_own_device_sessions_stay_when_only_the_prekey_counters_are_unusable(
    keys: PgSchema,
) -> None:
    """Counters that cannot be used keep the tenant's pre-keys (a note), but `me` is readable:
    the account's own devices are known all the same."""
    keys.add_auth({"a": baileys_creds(10, 30)})  # firstUnuploadedPreKeyId > nextPreKeyId
    own = [f"{ME}.0", f"{ME}.12"]
    keys.insert_keys([KeyRow("a", "session", i, OLD) for i in [*own, "5599.0"]])
    report = run(keys)
    assert "pre-keys of 1 tenant kept: creds counters are inconsistent" in report.notes
    assert ids_left(keys, "a", "session") == set(own)


def test_our_sender_key_waits_for_its_groups_memory_row(keys: PgSchema) -> None:
    keys.add_auth({"a": baileys_creds(1, 1)})
    ours = f"g1@g.us::{ME_LID}_1::12"
    ours_pn = f"g2@g.us::{ME}::12"
    ours_alone = f"g3@g.us::{ME_LID}_1::12"  # its group's memory row is gone already
    theirs = "g1@g.us::777_1::0"
    keys.insert_keys(
        [
            KeyRow("a", "sender-key", ours, OLD),
            KeyRow("a", "sender-key", ours_pn, OLD),
            KeyRow("a", "sender-key", ours_alone, OLD),
            KeyRow("a", "sender-key", theirs, OLD),
            KeyRow("a", "sender-key-memory", "g1@g.us", OLD),
            KeyRow("a", "sender-key-memory", "g2@g.us", 2),  # g2: still sending
            KeyRow("b", "sender-key-memory", "g3@g.us", OLD),  # another tenant's group
        ]
    )
    first = run(keys)
    # Never our key without its memory row: the memory row goes, our key stays this run.
    assert ids_left(keys, "a", "sender-key") == {ours, ours_pn}
    assert ids_left(keys, "a", "sender-key-memory") == {"g2@g.us"}
    assert ("sender-key", 2) in [(k.key_type, k.keys) for k in first.kept]
    run(keys)
    # g1's memory row is gone: our g1 key follows; g2's memory row is fresh: ours stays.
    assert ids_left(keys, "a", "sender-key") == {ours_pn}


def test_without_creds_every_sender_key_waits_for_its_memory_row(keys: PgSchema) -> None:
    keys.insert_keys(
        [
            KeyRow("x", "sender-key", "g1@g.us::777::0", OLD),
            KeyRow("x", "sender-key", "g2@g.us::777::0", OLD),
            KeyRow("x", "sender-key-memory", "g1@g.us", 3),
        ]
    )
    run(keys)
    assert ids_left(keys, "x", "sender-key") == {"g1@g.us::777::0"}


def test_tctoken_index_stays(keys: PgSchema) -> None:
    keys.add_auth({"a": baileys_creds(1, 1)})
    keys.insert_keys(
        [
            KeyRow("a", "tctoken", "__index", OLD),
            KeyRow("a", "tctoken", "5511999999999@s.whatsapp.net", OLD),
        ]
    )
    run(keys)
    assert ids_left(keys, "a", "tctoken") == {"__index"}


def test_keys_without_an_id_are_counted_as_the_delete_treats_them(keys: PgSchema) -> None:
    """On a table whose key id may be NULL, each lifecycle condition must answer for a NULL id
    as the DELETE does: a NULL there would keep the key in the DELETE (NOT NULL is not true)
    while the measuring pass counted it eligible, and `remaining` would never drain."""
    keys.add_auth({"a": baileys_creds(1, 1)})
    with keys.connect() as conn:
        conn.execute("ALTER TABLE whatsapp_keys DROP CONSTRAINT whatsapp_keys_pkey")
        conn.execute("ALTER TABLE whatsapp_keys ALTER COLUMN key_id DROP NOT NULL")
        conn.execute(
            "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at) "
            "SELECT 'a', t, NULL, '{}', now() - interval '60 days' FROM unnest(ARRAY["
            "'tctoken', 'session', 'sender-key', 'pre-key', 'identity-key']) AS t"
        )
    keys.insert_keys([KeyRow("a", "tctoken", "t1", OLD)])
    dry = run(keys, DRY)
    live = run(keys)
    assert live.status == "completed", live.reason
    assert (dry.eligible, live.deleted) == (live.eligible, live.eligible)


def test_ttl_rule_is_off_by_default(keys: PgSchema) -> None:
    """The reference adapter stamps expires_at = write + 7 days: by default that is ignored."""
    keys.add_auth({"a": baileys_creds(1, 1)})
    keys.insert_keys([KeyRow("a", "session", f"{i}.0", 10) for i in range(5)])
    with keys.connect() as conn:
        conn.execute("UPDATE whatsapp_keys SET expires_at = updated_at + interval '7 days'")
    report = run(keys)
    assert report.deleted == 0
    assert report.expires_column is None
    assert len(ids_left(keys, "a", "session")) == 5
    opted = run(keys, CLEANUP_EXPIRES_COLUMN="expires_at")
    assert opted.deleted == 5


def test_ttl_rule_does_not_take_what_the_lifecycle_keeps(keys: PgSchema) -> None:
    keys.add_auth({"a": baileys_creds(1001, 1001)})
    keys.insert_keys([*prekeys("a", range(1, 1001), 9), KeyRow("a", "session", f"{ME}.0", 9)])
    with keys.connect() as conn:
        conn.execute("UPDATE whatsapp_keys SET expires_at = updated_at + interval '7 days'")
    report = run(keys, CLEANUP_EXPIRES_COLUMN="expires_at")
    assert report.deleted == 0
    assert sum(k.keys for k in report.kept) == 1001


def test_orphan_rule_needs_its_own_setting(keys: PgSchema) -> None:
    keys.add_auth({"a": baileys_creds(1, 1)})
    keys.insert_keys([KeyRow("gone", "app-state-sync-key", "k", OLD)])
    off = run(keys, CLEANUP_AUTH_TABLE="whatsapp_auth")
    assert off.orphan_rule == "off"
    assert keys.count() == 1
    seed_candidates(keys, "gone")  # the rule takes a tenant found orphaned by two runs
    on = run(keys, CLEANUP_ORPHAN_RULE="true", CLEANUP_MAX_ORPHAN_TENANT_FRACTION="1")
    assert on.orphan_rule == "applied"
    assert keys.count() == 0


def test_dry_run_counts_what_the_live_run_deletes(keys: PgSchema) -> None:
    """Every rule together: the measuring pass and the DELETE agree key for key."""
    keys.add_auth({"a": baileys_creds(1501, 1401), "b": {"nextPreKeyId": 2}})
    rows = prekeys("a", range(1, 1600), OLD) + prekeys("b", range(1, 50), OLD)
    rows += [KeyRow("a", "session", f"{i}.0", 5 + i % 60) for i in range(200)]
    rows += [KeyRow("a", "session", f"{ME}.{i}", OLD) for i in range(3)]
    rows += [KeyRow("a", "sender-key", f"g{i}@g.us::{ME}::0", OLD) for i in range(10)]
    rows += [KeyRow("a", "sender-key-memory", f"g{i}@g.us", 20 + i * 3) for i in range(10)]
    rows += [KeyRow("a", "tctoken", "__index", OLD), KeyRow("a", "lid-mapping", "m", OLD)]
    keys.insert_keys(rows)
    settings: Settings = keys.settings(CLEANUP_GUARD_MIN_KEYS="100000")
    dry = run_cleanup(settings, Flags(dry_run=True))
    before = keys.key_set()
    live = run_cleanup(settings, Flags(dry_run=False))
    assert live.status == "completed"
    assert live.deleted == dry.eligible == len(before) - len(keys.key_set())
    assert {t: s.kept for t, s in live.by_type.items()} == {
        t: s.kept for t, s in dry.by_type.items()
    }
    # a keeps pre-keys 401..1,500 (1,400 - 1,000 + 1 up to 1,501 - 1): 1,100; b's creds have
    # no counters: its 49; 3 own sessions; 10 own sender keys (their memory rows exist when
    # measured); the tctoken index. The lid-mapping is protected, not kept by the lifecycle.
    assert {t: s.kept for t, s in dry.by_type.items() if s.kept} == {
        "pre-key": 1149,
        "session": 3,
        "sender-key": 10,
        "tctoken": 1,
    }


def test_every_session_stays_while_the_auth_table_cannot_be_read(keys: PgSchema) -> None:
    """A reload of the auth table (TRUNCATE and refill in one transaction, docs/rules.md) holds
    its lock past the lock timeout: no creds, so no tenant's own devices are known. Every
    session stays this run, as every pre-key does, and the note says so."""
    keys.add_auth({"a": baileys_creds(1, 1), "b": baileys_creds(1, 1)})
    own = [f"{ME}.0", f"{ME}.12"]
    rows = [KeyRow(t, "session", i, OLD) for t in "ab" for i in [*own, "5599.0"]]
    keys.insert_keys([*rows, KeyRow("a", "identity-key", "x", OLD)])
    reload = keys.connect()
    reload.autocommit = False
    try:
        reload.execute("LOCK TABLE whatsapp_auth IN ACCESS EXCLUSIVE MODE")
        dry = run(keys, DRY, CLEANUP_LOCK_TIMEOUT_MS="200")
        report = run(keys, CLEANUP_LOCK_TIMEOUT_MS="200")
    finally:
        reload.rollback()
        reload.close()
    assert any(
        n.startswith("creds not read, so every pre-key and every session is kept")
        for n in report.notes
    ), report.notes
    assert {(c, k) for c, t, k in keys.key_set() if t == "session"} == {r.ident[::2] for r in rows}
    assert report.deleted == dry.eligible == 1  # the other rules go on
    (sessions,) = [k for k in report.kept if k.key_type == "session"]
    assert sessions.keys == 6
    assert "own devices are unknown" in sessions.reason


@pytest.mark.parametrize(
    "setting",
    [
        {"CLEANUP_CREDS_COLUMN": "cred"},
        {"CLEANUP_AUTH_TENANT_COLUMN": "compnay_id"},
        {"CLEANUP_AUTH_TABLE": "whatsapp_auths"},
    ],
    ids=["creds-column", "auth-tenant-column", "auth-table"],
)
def test_every_session_stays_when_a_creds_setting_names_nothing(
    keys: PgSchema, setting: dict[str, str]
) -> None:
    keys.add_auth({"a": baileys_creds(1, 1)})
    rows = [KeyRow("a", "session", i, OLD) for i in [f"{ME}.0", f"{ME_LID}_1.3", "5599.0"]]
    keys.insert_keys(rows)
    report = run(keys, **setting)
    assert {r.ident for r in rows} <= keys.key_set()
    assert any("every session is kept" in n for n in report.notes), report.notes


def test_sessions_stay_for_a_tenant_whose_creds_name_no_account(keys: PgSchema) -> None:
    """Creds that cannot be parsed, or without `me`, hide the account's own devices: that
    tenant's sessions stay. A tenant with no creds row has no account: its sessions go."""
    keys.add_auth({"a": ["not", "an", "object"], "b": {"nextPreKeyId": 5}})
    keys.insert_keys([KeyRow(t, "session", "5599.0", OLD) for t in "abc"])
    report = run(keys)
    assert {c for c, t, _ in keys.key_set() if t == "session"} == {"a", "b"}
    assert any(n.startswith("sessions of 2 tenants kept") for n in report.notes), report.notes


BIG = {"v": "x" * 300}  # ~20 rows a page: many batches


def _ours_after_their_memory_rows(groups: int) -> list[KeyRow]:
    """Old memory rows first in the heap, then our own sender keys of the same groups."""
    memory = [KeyRow("a", "sender-key-memory", f"g{i}@g.us", OLD, BIG) for i in range(groups)]
    ours = [KeyRow("a", "sender-key", f"g{i}@g.us::{ME}::12", OLD, BIG) for i in range(groups)]
    return memory + ours


def test_our_sender_keys_that_follow_their_memory_row_within_the_run_are_counted(
    keys: PgSchema,
) -> None:
    """An early batch deletes a group's memory row; a later batch of the same run then takes
    our sender key of that group. The run's bound allows for the keys its memory rows keep,
    and the per-type counts include them."""
    keys.add_auth({"a": baileys_creds(1, 1)})
    keys.insert_keys(_ours_after_their_memory_rows(150))
    env = {"CLEANUP_BATCH_SIZE": "1", "CLEANUP_GUARD_MIN_KEYS": "1000000"}
    dry = run(keys, DRY, **env)
    assert dry.eligible == 150  # the memory rows
    assert [(k.reason, k.keys) for k in dry.kept] == [(KEEP_REASONS["own_sender_key"][1], 150)]
    live = run(keys, **env)
    assert (live.status, live.reason) == ("completed", None)
    assert live.deleted == 300
    assert keys.key_set() == set()
    assert (live.by_type["sender-key"].deleted, live.by_type["sender-key-memory"].deleted) == (
        150,
        150,
    )


@pytest.mark.parametrize("counted", [True, False], ids=["counted", "too-large-to-count"])
def test_per_type_counts_are_never_inferred_wrongly_when_our_sender_keys_follow(
    keys: PgSchema, monkeypatch: pytest.MonkeyPatch, counted: bool
) -> None:
    """Our 5 sender keys follow their memory rows, while the application uses 5 of the old
    sessions: the total equals the measured eligible keys, but not the same keys. A run of a
    day's size counts its deletions per type; a larger one does not infer them (a note says
    why)."""
    if not counted:
        monkeypatch.setattr(cleanup, "COUNT_FOLLOWS_MAX", 10)
    keys.add_auth({"a": baileys_creds(1, 1)})
    ours = _ours_after_their_memory_rows(5)
    sessions = [KeyRow("a", "session", f"99{i}.0", OLD, BIG) for i in range(40)]
    keys.insert_keys(ours[:5] + sessions + ours[5:])
    refreshed: list[bool] = []

    def refresh(_progress: object) -> None:
        if refreshed:
            return
        refreshed.append(True)
        with keys.connect() as conn:
            conn.execute(
                "UPDATE whatsapp_keys SET value = value WHERE key_type = 'session' "
                "AND key_id IN ('9935.0','9936.0','9937.0','9938.0','9939.0')"
            )

    settings = keys.settings(CLEANUP_BATCH_SIZE="1", CLEANUP_GUARD_MIN_KEYS="1000000")
    live = run_cleanup(settings, LIVE, progress=refresh)
    left = keys.key_set()
    assert live.deleted == live.eligible == 45
    assert sum(1 for _, t, _ in left if t == "sender-key") == 0
    assert sum(1 for _, t, _ in left if t == "session") == 5
    if counted:
        assert live.by_type["sender-key"].deleted == 5
        assert live.by_type["session"].deleted == 35
        assert live.by_type["sender-key-memory"].deleted == 5
    else:
        assert live.by_type["sender-key"].deleted is None
        assert live.by_type["session"].deleted is None
        assert any("not necessarily the same ones" in n for n in live.notes), live.notes


def test_a_single_tenant_table_beside_an_auth_table_still_deletes_old_sessions(
    pg: PgSchema,
) -> None:
    """29aa09a keeps every session when 'an auth table could not be read'. A key table without
    a tenant column (CLEANUP_TENANT_COLUMN=none, a single-tenant deployment) beside the default
    whatsapp_auth gives the creds problem 'has no tenant column', so own_unread is set and no
    session of the table is ever deleted again (before the change: by the retention). The docs
    list locked, unreadable or misnamed creds settings, not this layout."""
    pg.create_reference_table()
    pg.add_auth({"a": baileys_creds(10)})
    with pg.connect() as conn:
        conn.execute(
            "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at) "
            "SELECT 'a', 'session', '4915' || g::text || '.0', '{}'::jsonb, "
            "now() - interval '90 days' FROM generate_series(1, 20) g"
        )
    report = run_cleanup(pg.settings(CLEANUP_TENANT_COLUMN="none"), LIVE)
    assert report.deleted == 20, (report.deleted, report.kept, report.notes)


def test_prekeys_the_server_still_holds_stay_after_retry_receipts_moved_the_counter(
    keys: PgSchema,
) -> None:
    """812 pre-keys uploaded (ids 1-812), 10 handed out and used (gone). Then 250 retry
    receipts each took the next id for one contact without an upload (813-1062, used and
    gone): firstUnuploadedPreKeyId is 1063, so a window of 1,000 ids starts at 63, above ids
    11-62 that the server still hands out. The window counts the ids the table holds instead:
    the 802 still there are all kept."""
    keys.add_auth({"a": baileys_creds(1063, 1063)})
    keys.insert_keys(prekeys("a", range(11, 813), OLD))
    report = run(keys)
    assert ids_left(keys, "a", "pre-key") == {str(i) for i in range(11, 813)}
    assert report.deleted == 0


def test_the_counted_window_still_lets_old_prekeys_go(keys: PgSchema) -> None:
    """No gaps: ids 1-2000 all there, 2001 next. The 1,000 highest are kept, the rest go."""
    keys.add_auth({"a": baileys_creds(2001, 2001)})
    keys.insert_keys(prekeys("a", range(1, 2001), OLD))
    dry = run(keys, DRY)
    report = run(keys)
    assert ids_left(keys, "a", "pre-key") == {str(i) for i in range(1001, 2001)}
    assert report.deleted == dry.eligible == 1000


def test_every_prekey_stays_when_the_held_ids_cannot_be_counted(
    keys: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the count, the window could reach above the server's pool: none that run."""

    def cannot_count(*_args: object, **_kwargs: object) -> dict[str, int]:
        raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")

    monkeypatch.setattr(db, "prekey_floors", cannot_count)
    keys.add_auth({"a": baileys_creds(2001, 2001)})
    keys.insert_keys(prekeys("a", range(1, 2001), OLD))
    report = run(keys)
    assert len(ids_left(keys, "a", "pre-key")) == 2000
    assert any(n.startswith("pre-key ids not counted (QueryCanceled)") for n in report.notes)
