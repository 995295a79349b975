"""What paces the delete loop: the WAL position, replica lag, checkpoint settings."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from handler.db.catalog import Conn, fetch_one
from handler.domain import CheckpointSettings, Lag, ReplicationState


def _replication_rows(conn: Conn) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """
            WITH pos AS (SELECT pg_current_wal_insert_lsn() AS lsn)
            SELECT 'lsn' AS kind, NULL::text AS name, NULL::text AS addr,
                   lsn - '0/0'::pg_lsn AS value
            FROM pos
            UNION ALL
            SELECT 'standby', application_name, host(client_addr), pos.lsn - replay_lsn
            FROM pg_stat_replication, pos
            WHERE replay_lsn IS NOT NULL
            UNION ALL
            SELECT 'hidden', NULL, NULL, count(*)
            FROM pg_stat_replication
            WHERE state IS NULL
            UNION ALL
            SELECT CASE WHEN active THEN 'slot' ELSE 'idle' END, slot_name::text, NULL,
                   pos.lsn - confirmed_flush_lsn
            FROM pg_replication_slots, pos
            WHERE slot_type = 'logical' AND confirmed_flush_lsn IS NOT NULL
            """
        ).fetchall()


def replication_state(conn: Conn) -> ReplicationState:
    """One statement before each batch: the WAL position and every replica's lag in bytes.

    Positions are the WAL *insert* position, which counts WAL still in WAL buffers: what the
    run has produced, whether or not it was written yet (the engine commits synchronously
    while replicas are attached, so that it is written and sent at once).
    Standbys: position - replay_lsn, what readers on the standby do not see yet.
    Logical slots: position - confirmed_flush_lsn, what the consumer has not confirmed.
    restart_lsn (the WAL the primary keeps for the slot) lags confirmed_flush_lsn by up to the
    interval between running-transactions records even for a consumer that keeps up, so it
    would throttle a healthy CDC feed; an idle consumer holds back both.
    A standby that has not reported a position yet (replay_lsn NULL) is not counted.
    A logical slot without a connected consumer (`active` false) is returned apart: waiting
    cannot make it catch up, and an abandoned one would make every run stop at its first batch.
    """
    lsn, hidden, lags, idle = 0, 0, [], []
    for row in _replication_rows(conn):
        kind, name, addr, value = row["kind"], row["name"], row["addr"], row["value"]
        if kind == "lsn":
            lsn = int(value)
        elif kind == "hidden":
            hidden = int(value)
        elif kind == "standby":
            label = f"standby {name or '(unnamed)'}" + (f" ({addr})" if addr else "")
            lags.append(Lag(label, max(0, int(value))))
        elif kind == "idle":
            idle.append(Lag(f"logical slot {name}", max(0, int(value))))
        else:
            lags.append(Lag(f"logical slot {name}", max(0, int(value))))
    return ReplicationState(lsn, lags, hidden, idle)


def wal_insert_position(conn: Conn) -> int:
    """The WAL insert position in bytes since 0/0 (WAL in WAL buffers included)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = fetch_one(cur.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn AS lsn"))
    return int(row["lsn"])


def nudge_standbys(conn: Conn) -> None:
    """Commit a transaction with an xid: one small WAL record that makes standbys report.

    A standby reports its replay position when it receives WAL, else only every
    wal_receiver_status_interval (10 s by default). While the run waits for it, no WAL flows,
    so the primary's view of its lag would stay as it was when the wait began. (The commit is
    asynchronous, as it writes no other WAL: the WAL writer sends it within wal_writer_delay.)
    """
    conn.execute("SELECT pg_current_xact_id()")


def checkpoint_settings(conn: Conn) -> CheckpointSettings:
    """The settings that decide when WAL volume forces a checkpoint, and how close it is.

    pg_control_checkpoint() is executable by PUBLIC on stock PostgreSQL; where a provider
    revoked it, the distance to the next checkpoint is unknown (None).
    """
    with conn.cursor(row_factory=dict_row) as cur:
        row = fetch_one(
            cur.execute(
                """
                SELECT pg_size_bytes(current_setting('max_wal_size')) AS max_wal_size,
                       current_setting('checkpoint_completion_target')::float8
                         AS completion_target,
                       extract(epoch FROM current_setting('checkpoint_timeout')::interval)::float8
                         AS timeout_s
                """
            )
        )
        try:
            since = fetch_one(
                cur.execute(
                    "SELECT pg_current_wal_lsn() - redo_lsn AS since FROM pg_control_checkpoint()"
                )
            )["since"]
        except psycopg.errors.InsufficientPrivilege:
            since = None
    return CheckpointSettings(
        max_wal_size=int(row["max_wal_size"]),
        completion_target=float(row["completion_target"]),
        timeout_s=float(row["timeout_s"]),
        since_checkpoint=None if since is None else int(since),
    )
