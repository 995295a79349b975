"""The safety guard: it stops a run that would delete too much until forced, counts every rule
together, and a dry run says it would stop.
"""

from __future__ import annotations

import json

import pytest

from handler.cleanup import run_cleanup
from handler.cli import EXIT_ABORTED, main
from handler.notify.html import render_guard_abort, to_plain_text
from handler.settings import Flags
from tests.support.db import KeyRow, PgSchema
from tests.support.orphans import Key, create_auth, insert, on, seed_candidates
from tests.support.tables import FORCE, LIVE


def test_safety_guard_aborts_then_force_deletes(pg: PgSchema) -> None:
    pg.create_reference_table()
    rows = [KeyRow("c", "session", f"k{i}", 40 if i % 10 else 1) for i in range(200)]
    pg.insert_keys(rows)
    settings = pg.settings(CLEANUP_GUARD_MIN_KEYS="100")

    aborted = run_cleanup(settings, LIVE)
    assert aborted.status == "aborted"
    assert aborted.deleted == 0
    assert aborted.reason is not None
    assert "--force" in aborted.reason
    assert "90.0%" in aborted.reason
    assert pg.count() == 200

    forced = run_cleanup(settings, Flags(dry_run=False, force=True))
    assert forced.status == "completed"
    assert forced.deleted == 180
    assert pg.count() == 20


def test_safety_guard_ignores_small_tables(pg: PgSchema) -> None:
    pg.create_reference_table()
    pg.insert_keys([KeyRow("c", "session", f"k{i}", 40) for i in range(50)])
    report = run_cleanup(pg.settings(CLEANUP_GUARD_MIN_KEYS="51"), LIVE)
    assert report.status == "completed"
    assert pg.count() == 0


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
    assert "70 of 100 keys (70.0%)" in (aborted.reason or "")
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


def test_a_dry_run_the_guard_would_stop_says_so_and_exits_3(
    cli_env: PgSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLEANUP_GUARD_MIN_KEYS", "1")
    monkeypatch.setenv("CLEANUP_MAX_DELETE_FRACTION", "0.1")
    assert main([]) == EXIT_ABORTED
    out = capsys.readouterr().out
    assert "aborted" not in out
    assert "a live run would stop here" in out
    assert "--execute --force" in out
    assert cli_env.count() == 12
    assert main(["--json"]) == EXIT_ABORTED
    report = json.loads(capsys.readouterr().out)
    assert (report["status"], report["guard_triggered"]) == ("completed", True)
