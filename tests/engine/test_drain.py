"""Large tables across runs (issue 20 item 2): a run stopped by its deadline records where its
loop stopped; the next starts there, walks the cleaned head only if it holds eligible keys, and
the runs' totals add up exactly to what one uninterrupted run deletes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from psycopg.types.json import Jsonb

from handler import deleteloop
from handler.cleanup import CleanupError, run_cleanup
from handler.deleteloop import Progress
from handler.report import Report, render_text
from handler.schema import hash_partitions
from handler.settings import Flags, Settings
from tests.support.db import KeyRow, PgSchema, baileys_creds
from tests.support.progress import AfterFirstBatch, refresh_last_old_key
from tests.support.tables import DRY, LIVE, uploaded_prekeys

VERBOSE = Flags(dry_run=False, verbose=True)
NO_GUARD = {"CLEANUP_GUARD_MIN_KEYS": "1000000", "CLEANUP_BATCH_SIZE": "40"}
BIG = {"v": "x" * 300}  # ~20 rows a page: a few thousand rows span ~100 pages


def _rows(n: int = 2400, tenants: int = 1) -> list[KeyRow]:
    """Every other row 40 days old, the rest 5 and 25 days old in turn, over the whole heap."""
    ages = (40, 5, 40, 25)
    return [KeyRow(f"c{i % tenants}", "session", f"k{i}", ages[i % 4], BIG) for i in range(n)]


def _survivors(rows: list[KeyRow], retention: float) -> set[tuple[str, str, str]]:
    return {r.ident for r in rows if r.age < retention}


Until = int | Callable[[list[Progress]], bool] | None


class Deadline:
    """A virtual deadline: the loop's clock says no time is left once `after` batches are
    done, or once `after(batches)` is true (None: never). Records every batch's Progress."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, after: Until = None) -> None:
        self.after = after
        self.seen: list[Progress] = []
        monkeypatch.setattr(deleteloop, "remaining_ms", self._remaining)

    def _remaining(self, _deadline: float | None) -> float:
        done = (
            self.after(self.seen)
            if callable(self.after)
            else self.after is not None and len(self.seen) >= self.after
        )
        return 0.0 if done else float("inf")

    def __call__(self, p: Progress) -> None:
        self.seen.append(p)

    def ranges(self) -> list[tuple[int, int, int]]:
        return [(p.oid, p.first_page, p.end_page) for p in self.seen]


def _run(
    pg: PgSchema,
    monkeypatch: pytest.MonkeyPatch,
    after: Until = None,
    flags: Flags = VERBOSE,
    **env: str,
) -> tuple[Report, Deadline]:
    clock = Deadline(monkeypatch, after)
    report = run_cleanup(pg.settings(**NO_GUARD, **env), flags, deadline=1.0, progress=clock)
    return report, clock


def _pages(pg: PgSchema, table: str = "whatsapp_keys") -> int:
    with pg.connect() as conn:
        row = conn.execute(
            "SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int",
            (table,),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def rows(keys_table: PgSchema) -> list[KeyRow]:
    keys = _rows()
    keys_table.insert_keys(keys)
    return keys


def test_the_next_run_starts_where_the_last_stopped_and_the_totals_add_up(
    keys_table: PgSchema, rows: list[KeyRow], monkeypatch: pytest.MonkeyPatch
) -> None:
    pg = keys_table
    pages = _pages(pg)
    one_run = run_cleanup(pg.settings(**NO_GUARD), DRY)  # what one uninterrupted run deletes

    first, clock1 = _run(pg, monkeypatch, after=4)
    assert first.status == "partial"
    assert first.drain is not None
    [point] = first.drain.resume
    stopped = clock1.ranges()[-1][2]
    assert point.block == stopped
    assert 0 < stopped < pages
    assert first.remaining == first.eligible - first.deleted > 0

    second, clock2 = _run(pg, monkeypatch)
    assert second.status == "completed"
    walked = clock2.ranges()
    # From the page the first run reached to the end, and not one page of the cleaned head.
    assert walked[0][1] == stopped
    assert min(lo for _, lo, _ in walked) == stopped
    assert max(hi for _, _, hi in walked) == pages
    assert any("resuming where the last run stopped" in n for n in second.notes)

    assert first.deleted + second.deleted == one_run.eligible
    assert pg.key_set() == _survivors(rows, 30)
    assert second.remaining == 0
    assert second.drain is not None
    assert (second.drain.runs, second.drain.deleted) == (2, one_run.eligible)
    assert second.drain.since == first.drain.since
    assert second.drain.resume == []
    assert "backlog" in render_text(first)
    assert [p.remaining for p in second.trend] == [first.remaining, 0]

    third, clock3 = _run(pg, monkeypatch)  # a new drain: from page 0, nothing to do
    assert third.drain is not None
    assert third.drain.runs == 1
    assert third.deleted == 0
    assert clock3.seen == []


def test_keys_that_became_eligible_in_the_head_are_still_deleted(
    keys_table: PgSchema, rows: list[KeyRow], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Time passes between the runs (here: a shorter retention): keys in the pages the first run
    cleaned become eligible, and the second run walks that head too, after the tail."""
    pg = keys_table
    first, clock1 = _run(pg, monkeypatch, after=4)
    stopped = clock1.ranges()[-1][2]
    later = Flags(dry_run=False, verbose=True, retention_days=20)
    second, clock2 = _run(pg, monkeypatch, flags=later)
    assert second.status == "completed"
    walked = clock2.ranges()
    assert walked[0][1] == stopped
    assert walked[-1][1] < stopped  # the head, last
    assert pg.key_set() == _survivors(rows, 20)
    assert first.deleted + second.deleted == len(rows) - len(_survivors(rows, 20))


def test_a_rewritten_table_starts_again_at_page_0(
    keys_table: PgSchema, rows: list[KeyRow], monkeypatch: pytest.MonkeyPatch
) -> None:
    pg = keys_table
    first, _ = _run(pg, monkeypatch, after=4)
    assert first.status == "partial"
    with pg.connect() as conn:
        conn.execute("VACUUM FULL whatsapp_keys")  # a new relfilenode: the pages moved
    second, clock = _run(pg, monkeypatch)
    assert second.status == "completed"
    assert clock.ranges()[0][1] == 0
    assert any("storage was rewritten" in n for n in second.notes)
    assert pg.key_set() == _survivors(rows, 30)
    assert second.drain is not None
    assert second.drain.deleted == first.deleted + second.deleted


@pytest.mark.parametrize(
    ("path", "value", "note"),
    [
        ("{drain,resume,0,block}", "1000000000", "is past its"),
        ("{drain,resume,0,block}", '"abc"', "not valid"),
        ("{drain,resume,0,block}", "-5", "not valid"),
        ("{drain,resume,0,oid}", "1", "not this run's table"),
        ("{drain,resume}", '"everything"', "not valid"),
        ("{drain}", '"x"', None),  # no drain object: none is read
    ],
)
def test_a_tampered_resume_point_is_ignored(
    keys_table: PgSchema,
    rows: list[KeyRow],
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    value: str,
    note: str | None,
) -> None:
    pg = keys_table
    first, _ = _run(pg, monkeypatch, after=4)
    assert first.status == "partial"
    with pg.connect() as conn:
        conn.execute(
            "UPDATE keys_cleanup_runs SET report = jsonb_set(report, %s::text[], %s::jsonb)",
            (path, value),
        )
    second, clock = _run(pg, monkeypatch)
    assert second.status == "completed"
    assert clock.ranges()[0][1] == 0
    if note is not None:
        assert any(note in n for n in second.notes), second.notes
    assert pg.key_set() == _survivors(rows, 30)


def test_without_history_the_next_run_starts_at_page_0(
    keys_table: PgSchema, rows: list[KeyRow], monkeypatch: pytest.MonkeyPatch
) -> None:
    pg = keys_table
    first, _ = _run(pg, monkeypatch, after=4, CLEANUP_HISTORY="false")
    assert first.status == "partial"
    assert any("the next run starts at page 0" in n for n in first.notes)
    second, clock = _run(pg, monkeypatch, CLEANUP_HISTORY="false")
    assert clock.ranges()[0][1] == 0
    assert first.deleted + second.deleted == len(rows) - len(_survivors(rows, 30))


def test_the_no_history_note_names_the_setting_that_turns_history_off(
    keys_table: PgSchema, rows: list[KeyRow], monkeypatch: pytest.MonkeyPatch
) -> None:
    pg = keys_table
    report, _ = _run(pg, monkeypatch, after=4, CLEANUP_HISTORY="false")
    assert report.status == "partial"
    (note,) = [n for n in report.notes if n.startswith("no run history")]
    # It sent the operator to CLEANUP_HISTORY_ENABLED, a variable the job does not read.
    assert "(CLEANUP_HISTORY=false)" in note, note
    named = note.split("(")[1].split("=")[0]
    warnings = Settings.from_env({**pg.env(), named: "true"}).config_warnings
    assert not any(named in w for w in warnings), warnings


def test_a_partitioned_table_resumes_leaf_by_leaf(
    pg: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pg.connect() as conn:
        conn.execute(hash_partitions("whatsapp_keys", 4))
    keys = _rows(3200, tenants=16)
    pg.insert_keys(keys)
    with pg.connect() as conn:
        leaves = [
            int(r[0])
            for r in conn.execute(
                "SELECT c.oid FROM pg_partition_tree('whatsapp_keys') t "
                "JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf ORDER BY c.relname"
            )
        ]
    assert len(leaves) == 4
    one_run = run_cleanup(pg.settings(**NO_GUARD), DRY)

    # Stop inside the second leaf: after its second batch.
    def in_second_leaf(seen: list[Progress]) -> bool:
        return sum(1 for p in seen if p.oid == leaves[1]) >= 2

    first, clock1 = _run(pg, monkeypatch, after=in_second_leaf)
    assert first.status == "partial"
    assert first.drain is not None
    oid, _, stopped = clock1.ranges()[-1]
    assert oid == leaves[1]
    points = {p.oid: p.block for p in first.drain.resume}
    assert points[leaves[1]] == stopped
    assert leaves[0] in points  # done: its next walk starts at its end
    assert leaves[2] not in points
    assert leaves[3] not in points

    second, clock2 = _run(pg, monkeypatch)
    assert second.status == "completed"
    walked = clock2.ranges()
    assert walked[0][:2] == (leaves[1], stopped)
    assert {o for o, _, _ in walked} == set(leaves[1:])  # the first leaf is clean: not walked
    assert min(lo for o, lo, _ in walked if o == leaves[1]) == stopped
    assert first.deleted + second.deleted == one_run.eligible
    assert pg.key_set() == _survivors(keys, 30)


def test_a_completed_run_leaves_no_backlog_for_keys_the_application_refreshed(
    pg: PgSchema, table: list[KeyRow]
) -> None:
    _last, refreshed = refresh_last_old_key(pg)
    settings = pg.settings(CLEANUP_BATCH_SIZE="5", CLEANUP_GUARD_MIN_KEYS="100000")
    report = run_cleanup(settings, LIVE, progress=refreshed)
    assert report.status == "completed"
    assert report.skipped_pages == 0
    assert report.deleted == report.eligible - 1  # the refreshed key rightly stays
    # The loop walked every page that could hold an eligible key: none is left for a later
    # run (KeysRemaining "0 once a run completes"), though one measured key was not deleted.
    assert report.remaining == 0
    assert report.trend[-1].remaining == 0
    assert "backlog" not in render_text(report)


def test_drain_totals_count_the_keys_a_failed_run_of_the_drain_deleted(
    keys_table: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg = keys_table
    pg.insert_keys([KeyRow("c0", "session", f"k{i}", (40, 5)[i % 2], BIG) for i in range(2400)])
    settings = pg.settings(**NO_GUARD)

    # Run 1: its deadline after 2 batches -> partial, recorded with where it stopped.
    first, _ = _run(pg, monkeypatch, after=2, flags=LIVE)
    monkeypatch.undo()
    assert first.status == "partial"

    # Run 2: its connection is killed after 2 committed batches -> failed; they stay deleted.
    committed: list[int] = []

    def kill_after_second_batch(p: Progress) -> None:
        committed.append(p.deleted)
        if p.batches == 2:
            with pg.connect() as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pg.cleanup_backend(),))

    with pytest.raises(CleanupError):
        run_cleanup(settings, LIVE, progress=kill_after_second_batch)
    assert committed[-1] > 0
    with pg.connect() as conn:
        failed = conn.execute(
            "SELECT status, deleted, report->>'error' FROM keys_cleanup_runs ORDER BY id"
        ).fetchall()[-1]
    assert failed == ("failed", committed[-1], "AdminShutdown")  # its type, not its message
    # Its loop failed within the segment it started at the first run's point: the next run
    # starts there again, not past pages it may not have done.
    assert first.drain is not None
    with pg.connect() as conn:
        row = conn.execute(
            "SELECT report -> 'drain' -> 'resume' FROM keys_cleanup_runs ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert row is not None
    assert [p["block"] for p in row[0]] == [p.block for p in first.drain.resume]

    # Run 3 finishes the drain: no page the failed run left is skipped.
    last = run_cleanup(settings, LIVE)
    assert last.status == "completed"
    assert first.deleted + committed[-1] + last.deleted == first.eligible == 1200
    assert pg.key_set() == {("c0", "session", f"k{i}") for i in range(1, 2400, 2)}
    assert last.drain is not None
    # drain.deleted is "exact: each run's deleted summed", the failed run's included.
    assert (last.drain.runs, last.drain.deleted) == (3, 1200), last.drain
    assert last.drain.since == first.drain.since


def test_a_run_that_fails_before_its_loop_leaves_the_drain_where_it_was(
    keys_table: PgSchema, rows: list[KeyRow], monkeypatch: pytest.MonkeyPatch
) -> None:
    pg = keys_table
    first, clock1 = _run(pg, monkeypatch, after=4, flags=LIVE)
    monkeypatch.undo()
    assert first.status == "partial"
    assert first.drain is not None
    stopped = clock1.ranges()[-1][2]

    def no_loop(*_: object, **__: object) -> None:
        raise RuntimeError("the loop could not start")

    monkeypatch.setattr(deleteloop._WalPace, "__init__", no_loop)
    with pytest.raises(RuntimeError):
        run_cleanup(pg.settings(**NO_GUARD), LIVE)
    monkeypatch.undo()
    with pg.connect() as conn:
        recorded = conn.execute(
            "SELECT status, deleted, report ? 'drain' FROM keys_cleanup_runs ORDER BY id"
        ).fetchall()
    assert recorded == [("partial", first.deleted, True), ("failed", 0, False)]

    # The next run resumes at the first run's point, and its drain counts the runs that ran
    # the loop.
    last, clock3 = _run(pg, monkeypatch)
    assert last.status == "completed"
    assert clock3.ranges()[0][1] == stopped
    assert pg.key_set() == _survivors(rows, 30)
    assert last.drain is not None
    assert (last.drain.runs, last.drain.deleted) == (2, first.deleted + last.deleted)


def test_a_completed_run_whose_prekeys_were_kept_for_a_creds_recheck_reports_their_backlog(
    pg: PgSchema,
) -> None:
    """494bd6d: a completed run that skipped no page reports remaining 0, on the ground that
    the measured keys it did not delete 'were refreshed or removed by the application'. Without
    a timestamp column a DELETE also keeps pre-keys whose session's creds row changed during the
    run (`prekey_creds_changed`: 'checked again next run'): those keys are still there, still
    eligible, and the next run deletes them. The report says no backlog."""
    uploaded_prekeys(pg, 6000)

    def touch_creds() -> None:  # Baileys saves its creds often: same counters, another field
        with pg.connect() as conn:
            conn.execute(
                "UPDATE whatsapp_auth SET creds = %s WHERE company_id = 'a'",
                (Jsonb({**baileys_creds(6001), "lastAccountSyncTimestamp": 1}),),
            )

    done = AfterFirstBatch(touch_creds)
    settings = pg.settings(
        CLEANUP_TIMESTAMP_COLUMN="none", CLEANUP_GUARD_MIN_KEYS="100000", CLEANUP_BATCH_SIZE="100"
    )
    report = run_cleanup(settings, LIVE, progress=done)
    assert done.seen
    assert report.status == "completed"
    assert report.deleted < report.eligible  # the recheck kept the rest
    left = run_cleanup(settings, DRY).eligible  # still there and eligible: the backlog
    assert left > 0
    assert report.remaining == left, (report.remaining, left, report.deleted, report.eligible)
