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


def test_without_a_timestamp_no_type_shows_a_retention_nor_a_grace(pg: PgSchema) -> None:
    """Without a timestamp the age rule is off: no type's row says `30d`, the orphan line
    claims no grace, and the kept keys are not said to be past a retention."""
    from handler.notify.html import _type_rows  # noqa: PLC0415 - the table alone

    WAHA.seed(pg)
    report = run_cleanup(pg.settings(**WAHA.env, CLEANUP_ORPHAN_RULE="true"), Flags())
    assert report.timestamp_column is None
    text = render_text(report)
    rows = [line.split() for line in text.splitlines() if line.strip().startswith("session ")]
    assert rows, text
    assert rows[0][-1] == "off"
    _, telegram_rows = _type_rows(report)
    assert [r.split()[-1] for r in telegram_rows if r.startswith("session")] == ["off"]
    assert "grace 1d" not in text
    assert "(no grace: no timestamp" in text
    assert "past the retention" not in text
