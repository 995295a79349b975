"""Top tenants by key count, the rules' metrics and log fields, and tenant ids kept out of
Sentry.
"""

from __future__ import annotations

import json

import pytest

from handler import observability
from handler.cleanup import run_cleanup
from handler.notify import sentry as sentry_notify
from handler.notify.html import render_summary, to_plain_text
from handler.report import render_text
from handler.settings import Flags
from tests.support.db import PgSchema
from tests.support.orphans import ORPHAN_KEYS, Key, create_auth, insert, on, seed_candidates


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
