"""Telegram messages stay within 4096 whatever the report holds (issue 17 item 13): many notes,
a long reason, a 5,000-character tenant id; and no note shows a negative count.
"""

from __future__ import annotations

import re

import psycopg
import pytest

from handler.cleanup import run_cleanup
from handler.deleteloop import Progress
from handler.notify.html import MAX_MESSAGE, render_summary, telegram_len, to_plain_text
from handler.report import KeyEntry
from handler.settings import Flags
from tests.support.db import PgSchema
from tests.support.notify import make_report


def note(i: int) -> str:
    return f"note {i}: " + "a setting that matched no key, an unknown variable, VACUUM trouble " * 2


def test_many_notes_are_capped_with_a_count_of_the_rest() -> None:
    report = make_report(notes=[note(i) for i in range(45)])
    text = render_summary(report)
    assert telegram_len(text) <= MAX_MESSAGE
    shown = to_plain_text(text)
    assert "note 0:" in shown
    assert "note 44:" not in shown
    assert re.search(r"… and 4\d more notes", shown)
    # What the cap leaves out is counted, not lost: the shown notes and the count add up.
    listed = len(re.findall(r"^Note: note \d+:", shown, flags=re.M))
    (more,) = re.findall(r"… and (\d+) more notes", shown)
    assert listed + int(more) == 45
    # The blocks below the notes are still there.
    assert "By key type" in shown


@pytest.mark.parametrize("limit", [600, 1200, 2000, MAX_MESSAGE])
def test_the_fallback_message_fits_the_limit_too(limit: int) -> None:
    report = make_report(
        status="partial",
        reason="stopped: " + "r" * 600,
        notes=["n" * 600 for _ in range(12)],
        keys=[KeyEntry(key={"id": str(i)}, key_type="session", age_days=40.0) for i in range(50)],
    )
    text = render_summary(report, limit=limit)
    assert telegram_len(text) <= limit
    assert text.startswith("⚠️ <b>WhatsApp keys cleanup</b>")
    assert text.count("<b>") == text.count("</b>")
    assert text.count("<pre>") == text.count("</pre>")


def test_a_5000_character_tenant_id_does_not_cut_the_listing_short() -> None:
    long_tenant = "t" * 5000
    keys = [
        KeyEntry(
            key={
                "company_id": long_tenant if i == 0 else f"c{i}",
                "key_type": "session",
                "key_id": str(i),
            },
            key_type="session",
            age_days=40.0,
        )
        for i in range(5)
    ]
    report = make_report(keys=keys, keys_omitted=0)
    text = render_summary(report)
    assert telegram_len(text) <= MAX_MESSAGE
    shown = to_plain_text(text)
    assert "Deleted keys (5 of 5)" in shown
    for i in range(1, 5):
        assert f"company_id=c{i}, key_type=session, key_id={i}" in shown
    assert "t" * 200 not in shown


# --- no negative counts in notes -------------------------------------------------------------


def test_more_keys_deleted_than_measured_is_said_without_a_negative_count(pg: PgSchema) -> None:
    """Keys that become eligible during the run (here: updated to an old timestamp by another
    session, in pages not reached yet) are deleted too, within the margin the delete loop
    allows past the measured count; the note used to read "-50 eligible keys were refreshed"."""
    with pg.connect() as conn:
        conn.execute(
            "CREATE TABLE k (id int PRIMARY KEY, key_type text, key_id text, "
            "updated_at timestamptz) WITH (fillfactor = 50)"
        )
        conn.execute(
            "INSERT INTO k SELECT g, CASE WHEN g = 1 THEN 'app-state-sync-key' ELSE 'session' "
            "END, g::text, now() - CASE WHEN g <= 1000 AND g > 1 THEN interval '60 days' "
            "ELSE interval '1 day' END FROM generate_series(1, 2000) g"
        )
    aged = False

    def age_fresh_rows(progress: Progress) -> None:
        nonlocal aged
        if aged:
            return
        aged = True
        with psycopg.connect(pg.dsn, autocommit=True) as other:
            other.execute("UPDATE k SET updated_at = now() - interval '60 days' WHERE id > 1950")

    report = run_cleanup(
        pg.settings(CLEANUP_TABLE="k", CLEANUP_BATCH_SIZE="50"),
        Flags(dry_run=False, force=True),
        progress=age_fresh_rows,
    )
    assert aged
    assert report.eligible == 999
    assert report.status == "completed"
    assert report.deleted == 999 + 50
    (split,) = [n for n in report.notes if "per-type split" in n]
    assert "50 more keys were deleted than were eligible when measured" in split
    for text in (*report.notes, to_plain_text(render_summary(report))):
        assert not re.search(r"(?<![\w.])-\d", text), text
