"""`--vacuum`: VACUUM (ANALYZE) after a completed run, as a courtesy that never fails the run.

The rows are already deleted, and autovacuum reclaims the space anyway. Any trouble with it
(its lock held by another VACUUM, CREATE INDEX CONCURRENTLY or an anti-wraparound autovacuum;
the deadline; a permission) is a note, never a failed run, which would lose the history row
and trigger a retry.
"""

from __future__ import annotations

import psycopg
from psycopg import errors as pg_errors

from handler import db
from handler.deleteloop import remaining_ms
from handler.report import Status
from handler.settings import Settings

# VACUUM is skipped with less time than this left: started, it would only be cancelled.
MIN_VACUUM_BUDGET_MS = 10_000


def vacuum(
    conn: db.Conn,
    target: db.Target,
    settings: Settings,
    *,
    status: Status,
    deadline: float | None,
    notes: list[str],
) -> bool:
    """VACUUM (ANALYZE) the table after a completed run; True when it ran on the table."""
    s = settings
    if status != "completed":
        notes.append("VACUUM skipped: the run did not complete")
        return False
    remaining = remaining_ms(deadline)
    if remaining < MIN_VACUUM_BUDGET_MS:
        notes.append(f"VACUUM skipped: {max(0, remaining) / 1000:.1f} s left before the deadline")
        return False
    try:
        db.set_timeouts(
            conn,
            statement_ms=int(min(s.statement_timeout_ms, remaining)),
            lock_ms=s.lock_timeout_ms,
        )
        skipped = [n for n in db.vacuum_analyze(conn, target) if "skipping" in n]
    except pg_errors.LockNotAvailable:
        notes.append(
            "VACUUM not done: another session holds its lock (a VACUUM, CREATE INDEX "
            "CONCURRENTLY or anti-wraparound autovacuum); autovacuum reclaims the space"
        )
        return False
    except pg_errors.QueryCanceled:
        notes.append(
            "VACUUM not finished: cancelled at its time limit (the deadline, or "
            "CLEANUP_STATEMENT_TIMEOUT_MS); autovacuum reclaims the space"
        )
        return False
    except psycopg.Error as exc:
        if conn.broken:
            raise
        notes.append(f"VACUUM failed ({type(exc).__name__}); the deletions stand")
        return False
    finally:
        if not conn.broken:
            # The session's own timeouts again, for the after-run measurement and history.
            db.set_timeouts(conn, statement_ms=s.statement_timeout_ms, lock_ms=s.lock_timeout_ms)
    notes.extend(skipped)
    return not skipped
