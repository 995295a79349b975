"""The run history as the engine uses it: a side channel, never a failed run.

Every statement is in handler.db; this module decides what a run reads and writes, and what a
history that cannot be read or written costs (a note on the report). A broken connection is
re-raised: that is the run's failure, not the history's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg

from handler import db, resume
from handler.report import STALLED_ALERT_RUNS, TREND_RUNS, Drain, Report, TrendPoint
from handler.settings import Settings

# The orphan rule takes a tenant only when a run at least this much earlier found it orphaned
# too (and every run since): a reload, restore or migration of the auth table is over by then.
ORPHAN_CONFIRM_AFTER = timedelta(hours=1)
# How far back the count of stalled runs looks.
MAX_STALLED_RUNS = 1000


def trend_points(runs: list[db.RunPoint]) -> list[TrendPoint]:
    """The run history's last runs as the report's trend."""
    return [
        TrendPoint(
            finished_at=r.finished_at, keys=r.keys, total_bytes=r.total_bytes, remaining=r.remaining
        )
        for r in runs
    ]


def history_row(report: Report, orphan_candidates: list[str] | None = None) -> db.HistoryRow:
    return db.HistoryRow(
        event_id=report.event_id,
        target_table=report.table,
        started_at=report.started_at or datetime.now(UTC),
        status=report.status,
        keys_before=report.before.keys if report.before else None,
        keys_after=report.after.keys if report.after else None,
        total_bytes_before=report.before.total_bytes if report.before else None,
        total_bytes_after=report.after.total_bytes if report.after else None,
        eligible=report.eligible,
        deleted=report.deleted,
        duration_ms=report.duration_ms,
        report_json=report.model_dump_json(),
        orphan_candidates=orphan_candidates,
    )


def failed_row(
    *,
    event_id: str | None,
    table: str,
    started_at: datetime,
    error: str,
    eligible: int | None,
    deleted: int,
    batches: int,
    drain: Drain | None,
    duration_ms: int,
) -> db.HistoryRow:
    """The row of a live run that raised: what is known of it. `error` is the exception's type,
    never its message (a database error may quote a value or a connection string). No sizes:
    they were not measured after the run, so the trend leaves the row out; `deleted` is what the
    loop's committed batches deleted, and `drain` carries the drain on."""
    report: dict[str, object] = {
        "status": "failed",
        "dry_run": False,
        "table": table,
        "event_id": event_id,
        "started_at": started_at.isoformat(),
        "error": error,
        "eligible": eligible,
        "deleted": deleted,
        "batches": batches,
        "remaining": None,
        "duration_ms": duration_ms,
    }
    if drain is not None:
        report["drain"] = drain.model_dump(mode="json")
    return db.HistoryRow(
        event_id=event_id,
        target_table=table,
        started_at=started_at,
        status="failed",
        keys_before=None,
        keys_after=None,
        total_bytes_before=None,
        total_bytes_after=None,
        eligible=eligible or 0,
        deleted=deleted,
        duration_ms=duration_ms,
        report_json=json.dumps(report),
    )


def _noted(report: Report, note: str) -> Report:
    return report.model_copy(update={"notes": [*report.notes, note]})


class History:
    """One run's reads and writes of the history table (CLEANUP_HISTORY_TABLE)."""

    def __init__(self, conn: db.Conn, settings: Settings, notes: list[str]) -> None:
        self.conn = conn
        self.schema, self.name = settings.history_table_parts
        self.notes = notes  # the run's notes, for what is read before the report exists

    def _read[T](self, read: Callable[[], T], *, problem: str | None) -> tuple[T | None, str]:
        """`read()` when the table exists; None (and why, for a note) when it does not or
        cannot be read. `problem`: the note's text after the error's name; None, no note."""
        try:
            if not db.history_exists(self.conn, self.schema, self.name):
                return None, ""
            return read(), ""
        except psycopg.Error as exc:
            if self.conn.broken:
                raise
            if problem is not None:
                return None, problem.format(error=type(exc).__name__)
            return None, ""

    def completed_before(self, event_id: str, table: str) -> datetime | None:
        """When this event already completed; None if not, or unknown (a note: the advisory
        lock still keeps two deliveries from running at once)."""
        done, note = self._read(
            lambda: db.completed_run_for_event(self.conn, self.schema, self.name, event_id, table),
            problem="run history not readable ({error}): a repeated delivery of this event is "
            "not recognised; see keys-cleanup init-db for the grants",
        )
        if note:
            self.notes.append(note)
        return done

    def earlier_candidates(self, table: str, now: datetime) -> set[str] | None:
        """The tenants that the last run at least ORPHAN_CONFIRM_AFTER ago, and every run
        since, recorded as orphan candidates; None when none did (or the history is not
        readable: a note)."""
        runs, note = self._read(
            lambda: db.orphan_candidates(
                self.conn, self.schema, self.name, table, now - ORPHAN_CONFIRM_AFTER
            ),
            problem="run history not readable ({error}): the orphan rule cannot confirm any "
            "tenant, and deletes nothing this run",
        )
        if note:
            self.notes.append(note)
        if runs is None:
            return None
        confirmed = set(runs[0])
        for later in runs[1:]:
            confirmed &= set(later)
        return confirmed

    def count_stalls(self, report: Report, *, readable: bool) -> Report:
        """A live run that ended partial having deleted nothing: how many in a row, from the
        history (unreadable, or not `readable` for this run: this run alone counts)."""
        if report.dry_run or report.status != "partial" or report.deleted:
            return report
        before = 0
        if readable:
            earlier, _ = self._read(
                lambda: db.stalled_runs_before(
                    self.conn, self.schema, self.name, report.table, MAX_STALLED_RUNS
                ),
                problem=None,
            )
            before = earlier or 0
        runs = before + 1
        update: dict[str, object] = {"stalled_runs": runs}
        if runs >= STALLED_ALERT_RUNS:
            update["notes"] = [
                *report.notes,
                f"{runs} live runs in a row ended partial having deleted nothing: the job is "
                "stuck, see the reason (a replica or slot far behind, a table lock)",
            ]
        return report.model_copy(update=update)

    def record(self, report: Report, candidates: list[str] | None) -> Report:
        """Add the run to the history table, creating it when the role may. Failing to is a
        note on the report, never a failed run (the rows are already deleted)."""
        try:
            if not db.history_exists(self.conn, self.schema, self.name):
                db.create_history(self.conn, self.schema, self.name)
            db.insert_history(self.conn, self.schema, self.name, history_row(report, candidates))
        except psycopg.Error as exc:
            if self.conn.broken:
                raise
            return _noted(
                report, f"run history not recorded ({type(exc).__name__}; see keys-cleanup init-db)"
            )
        return report

    def record_failed(self, row: db.HistoryRow) -> None:
        """Add a failed run's row (`failed_row`), creating the table when the role may. Errors
        are the caller's: the run's own error goes on whatever happens here."""
        if not db.history_exists(self.conn, self.schema, self.name):
            db.create_history(self.conn, self.schema, self.name)
        db.insert_history(self.conn, self.schema, self.name, row)

    def drain(self, table: str) -> tuple[Drain | None, str | None]:
        """The drain in progress: the last run that ran the delete loop, when it ended
        `partial` or `failed` (else a new drain begins); and why a recorded one cannot be
        used."""
        last, note = self._read(
            lambda: db.last_drain(self.conn, self.schema, self.name, table),
            problem="run history not readable ({error}): the loop starts at page 0",
        )
        if note:
            return None, note
        if last is None or last[0] not in ("partial", "failed"):
            return None, None
        return resume.read_drain(last[1])

    def with_trend(self, report: Report) -> Report:
        """The last recorded runs' keys and sizes (this one included when recorded); a failed
        read is a note on the report."""
        points, note = self._read(
            lambda: db.recent_runs(self.conn, self.schema, self.name, report.table, TREND_RUNS),
            problem="run history not read ({error}); no trend this run",
        )
        if note:
            return _noted(report, note)
        if points is None:
            return report
        return report.model_copy(update={"trend": trend_points(points)})
