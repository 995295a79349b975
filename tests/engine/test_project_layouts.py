"""Each project's layout (tests/support/baileys_layouts.py, cited from its source) seeded and
cleaned against a real PostgreSQL with the settings docs/layouts.md gives for it: a dry run
deletes nothing and counts what a live run then deletes, exactly; the one-blob layout is
refused with nothing deleted.
"""

from __future__ import annotations

import pytest

from handler.cleanup import run_cleanup
from handler.settings import ConfigError, Flags
from tests.support.baileys_layouts import (
    BAILEYS_STORE,
    ENCODED,
    PROJECTS,
    TICKETZ,
    TICKETZ_IDS,
    WAHA,
    Project,
    one_blob_envs,
    one_blob_rows,
    seed_one_blob,
)
from tests.support.db import PgSchema
from tests.support.orphans import seed_candidates

DRY = Flags()
LIVE = Flags(dry_run=False)
# a handful of sessions: one logged out is a quarter of them
ORPHANS_ON = {"CLEANUP_ORPHAN_RULE": "true", "CLEANUP_MAX_ORPHAN_TENANT_FRACTION": "0.5"}


@pytest.mark.parametrize("project", PROJECTS, ids=lambda p: p.table)
def test_a_dry_run_counts_and_a_live_run_deletes_exactly_the_pre_keys_below_the_window(
    pg: PgSchema, project: Project
) -> None:
    seed = project.seed(pg)
    settings = pg.settings(**project.env)
    before = project.rows(pg)
    expected = project.expected_deleted(seed, orphans=False)

    dry = run_cleanup(settings, DRY)
    assert project.rows(pg) == before
    assert dry.deleted == 0
    assert dry.eligible == len(expected)

    live = run_cleanup(settings, LIVE)
    assert live.status == "completed"
    assert live.deleted == len(expected)
    assert project.rows(pg) == before - expected


@pytest.mark.parametrize("project", ENCODED, ids=lambda p: p.table)
def test_the_keys_of_a_session_without_creds_go_once_confirmed(
    pg: PgSchema, project: Project
) -> None:
    seed = project.seed(pg)
    settings = pg.settings(**project.env, **ORPHANS_ON)
    before = project.rows(pg)
    expected = project.expected_deleted(seed, orphans=True)
    seed_candidates(pg, "gone", table=project.table)  # a run two hours ago found it so too

    dry = run_cleanup(settings, DRY)
    assert project.rows(pg) == before
    assert dry.eligible == len(expected)

    live = run_cleanup(settings, LIVE)
    assert live.orphan_rule == "applied"
    assert live.orphaned_tenants == 1
    assert live.deleted == len(expected)
    assert project.rows(pg) == before - expected


def test_without_a_timestamp_the_age_rule_is_off_whatever_the_retention(pg: PgSchema) -> None:
    seed = WAHA.seed(pg)
    before = WAHA.rows(pg)
    expected = WAHA.expected_deleted(seed, orphans=False)
    report = run_cleanup(pg.settings(**WAHA.env), Flags(dry_run=False, retention_days=1))
    assert WAHA.rows(pg) == before - expected
    assert report.timestamp_column is None
    assert any("age rule" in note for note in report.notes)


def test_ticketz_reads_each_sessions_creds_from_whatsapps_session(pg: PgSchema) -> None:
    """The creds under "creds" in `Whatsapps.session` (text), keyed by `Whatsapps.id`
    (CLEANUP_AUTH_TENANT_COLUMN=id, CLEANUP_CREDS_PATH=creds). A session whose JSON lacks
    "creds" keeps every pre-key, with a note; the Whatsapps table is only read."""
    seed = TICKETZ.seed(pg)
    alpha = TICKETZ_IDS["alpha"]  # the session with pre-keys below the window
    update = 'UPDATE "Whatsapps" SET session = %s WHERE id = %s'
    with pg.connect() as conn:
        (session,) = conn.execute(
            'SELECT session FROM "Whatsapps" WHERE id = %s', (alpha,)
        ).fetchone() or ("",)
        conn.execute(update, ('{"keys": {}}', alpha))
        sessions = conn.execute('SELECT id, session FROM "Whatsapps" ORDER BY id').fetchall()
    before = TICKETZ.rows(pg)
    expected = TICKETZ.expected_deleted(seed, orphans=False)
    assert expected
    assert {k[0] for k in expected} == {str(alpha)}
    settings = pg.settings(**TICKETZ.env)

    kept = run_cleanup(settings, LIVE)
    assert kept.deleted == 0
    assert TICKETZ.rows(pg) == before
    assert any("creds have no creds (CLEANUP_CREDS_PATH)" in note for note in kept.notes)
    with pg.connect() as conn:
        assert conn.execute('SELECT id, session FROM "Whatsapps" ORDER BY id').fetchall() == (
            sessions
        )
        conn.execute(update, (session, alpha))

    live = run_cleanup(settings, LIVE)
    assert live.deleted == len(expected)
    assert TICKETZ.rows(pg) == before - expected
    assert not any("CLEANUP_CREDS_PATH" in note for note in live.notes)


def test_ticketz_orphan_rule_finds_no_orphan_a_logged_out_session_keeps_its_row(
    pg: PgSchema,
) -> None:
    """The keys reference `Whatsapps` (ON DELETE CASCADE): a logged-out session keeps its row
    (session cleared), so no key is ever without an auth row. The rule compares `whatsappId`
    with `Whatsapps.id`, applies, and takes nothing beyond the pre-key window, even with the
    session recorded as a candidate by an earlier run."""
    seed = TICKETZ.seed(pg)
    seed_candidates(pg, str(TICKETZ_IDS["gone"]), table=TICKETZ.table)
    before = TICKETZ.rows(pg)
    expected = TICKETZ.expected_deleted(seed, orphans=False)
    settings = pg.settings(**TICKETZ.env, **ORPHANS_ON)
    dry = run_cleanup(settings, DRY)
    assert dry.eligible == len(expected)
    live = run_cleanup(settings, LIVE)
    assert (live.orphan_rule, live.orphaned_tenants) == ("applied", 0)
    assert live.deleted == len(expected)
    assert TICKETZ.rows(pg) == before - expected


def test_the_escaped_ids_of_baileys_store_keep_their_types(pg: PgSchema) -> None:
    """`fixId` writes ":" as "-": a sender key's id grows dashes, and must stay a sender key
    (kept), never read as a pre-key or an unknown row that some rule would take."""
    seed = BAILEYS_STORE.seed(pg)
    run_cleanup(pg.settings(**BAILEYS_STORE.env), LIVE)
    ids = {r[1] for r in BAILEYS_STORE.rows(pg) if r[0] == "alpha"}
    assert "sender-key-120363025246125888@g.us--5511988887777--0" in ids
    assert "app-state-sync-key-AAAAAMz__" in ids
    gone = BAILEYS_STORE.expected_deleted(seed, orphans=False)
    assert all(key.startswith("pre-key-") for _, key in gone)
    assert not gone & BAILEYS_STORE.rows(pg)


@pytest.mark.parametrize("how", sorted(one_blob_envs()))
@pytest.mark.parametrize("flags", [DRY, LIVE], ids=["dry", "live"])
def test_the_one_blob_layout_is_refused_and_nothing_is_deleted(
    pg: PgSchema, flags: Flags, how: str
) -> None:
    blobs = seed_one_blob(pg)
    with pytest.raises(ConfigError, match="one JSON blob") as refused:
        run_cleanup(pg.settings(**one_blob_envs()[how]), flags)
    assert "\n" not in str(refused.value)
    assert one_blob_rows(pg) == blobs
