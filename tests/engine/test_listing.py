"""Verbose runs list the keys (oldest first, never their values) and count each type exactly."""

from __future__ import annotations

from handler.cleanup import run_cleanup
from handler.deleteloop import Progress
from handler.report import render_text
from handler.settings import Flags
from tests.support.db import KeyRow, PgSchema


def test_verbose_lists_keys_but_never_values(pg: PgSchema) -> None:
    canary = "CANARY-VALUE-7f3a"
    pg.create_reference_table()
    pg.insert_keys(
        [KeyRow("c", "session", f"k{i}", 40 + i, value={"secret": canary}) for i in range(5)]
        + [KeyRow("c", "session", "fresh", 1, value={"secret": canary})]
    )
    settings = pg.settings(CLEANUP_VERBOSE_LIMIT="3")
    for flags in (Flags(verbose=True), Flags(verbose=True, dry_run=False)):
        report = run_cleanup(settings, flags)
        assert len(report.keys) == 3
        assert report.keys_omitted == 2
        assert {e.key_type for e in report.keys} == {"session"}
        assert all(e.age_days is not None and e.age_days >= 40 for e in report.keys)
        assert list(report.keys[0].key) == ["company_id", "key_type", "key_id"]
        assert canary not in report.model_dump_json()
        assert canary not in render_text(report)
    assert pg.key_set() == {("c", "session", "fresh")}


def test_dry_run_listing_is_oldest_first(pg: PgSchema) -> None:
    pg.create_reference_table()
    pg.insert_keys([KeyRow("c", "session", f"k{age}", age) for age in (35, 90, 50)])
    report = run_cleanup(pg.settings(), Flags(verbose=True))
    assert [e.key["key_id"] for e in report.keys] == ["k90", "k50", "k35"]


def test_verbose_run_counts_each_type_exactly_even_when_a_key_is_refreshed(
    pg: PgSchema, table: list[KeyRow]
) -> None:
    settings = pg.settings(CLEANUP_BATCH_SIZE="5", CLEANUP_GUARD_MIN_KEYS="100000")
    victim = next(r for r in reversed(table) if r.age >= 30 and r.key_type == "pre-key")
    refreshed = []

    def refresh(_: Progress) -> None:
        if not refreshed:
            with pg.connect() as app:
                app.execute(
                    "UPDATE whatsapp_keys SET value = value "
                    "WHERE company_id = %s AND key_type = %s AND key_id = %s",
                    victim.ident,
                )
            refreshed.append(True)

    report = run_cleanup(settings, Flags(dry_run=False, verbose=True), progress=refresh)
    assert report.deleted == report.eligible - 1
    assert report.by_type["pre-key"].deleted == report.by_type["pre-key"].eligible - 1
    assert report.by_type["session"].deleted == report.by_type["session"].eligible
    assert sum(t.deleted or 0 for t in report.by_type.values()) == report.deleted
