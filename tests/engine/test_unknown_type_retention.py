"""Encoded keys of no known Baileys type (creds rows among them) are never deleted, by any
rule: the per-type table says `never`, not the run's retention (docs/report.md)."""

from __future__ import annotations

from handler.cleanup import run_cleanup
from handler.report import render_text
from handler.settings import Flags
from tests.support.baileys_layouts import WAHA
from tests.support.db import PgSchema


def test_keys_of_no_known_type_show_no_retention_in_the_per_type_table(pg: PgSchema) -> None:
    WAHA.seed(pg)
    report = run_cleanup(pg.settings(**WAHA.env), Flags())
    unknown = report.by_type["(null)"]
    assert unknown.keys > 0
    assert unknown.eligible == 0
    assert unknown.retention_days is None
    (row,) = [
        line for line in render_text(report).splitlines() if line.strip().startswith("(null)")
    ]
    assert row.split()[-1] == "never"
    assert all(
        line.split()[-1] != "never"
        for line in render_text(report).splitlines()
        if line.strip().startswith("pre-key")
    )


def test_the_telegram_table_says_never_too(pg: PgSchema) -> None:
    from handler.notify.html import _type_rows  # noqa: PLC0415 - the table alone

    WAHA.seed(pg)
    _, rows = _type_rows(run_cleanup(pg.settings(**WAHA.env), Flags()))
    (row,) = [r for r in rows if r.startswith("(null)")]
    assert row.split()[-1] == "never"
