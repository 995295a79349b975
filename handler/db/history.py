"""Run history: one row per live run, for duplicate deliveries, the orphan rule's
confirmation, stalled runs and the size trend."""

from __future__ import annotations

from datetime import datetime

from psycopg import sql
from psycopg.rows import class_row, dict_row

from handler.db.catalog import Conn, fetch_one
from handler.domain import DayTrend, HistoryRow, RunPoint, Target, table_ident


def history_ident(schema: str | None, name: str) -> sql.Composable:
    return table_ident(schema, name)


def history_exists(conn: Conn, schema: str | None, name: str) -> bool:
    ident = history_ident(schema, name).as_string(conn)
    with conn.cursor(row_factory=dict_row) as cur:
        row = fetch_one(cur.execute("SELECT to_regclass(%s) IS NOT NULL AS found", (ident,)))
    return row["found"] is True


def _can_delete(conn: Conn, target: Target) -> bool:
    with conn.cursor(row_factory=dict_row) as cur:
        row = fetch_one(
            cur.execute("SELECT has_table_privilege(%s::oid, 'DELETE') AS ok", (target.oid,))
        )
    return bool(row["ok"])


def _history_privileges(conn: Conn, schema: str | None, name: str) -> list[str]:
    """What this role lacks to record runs: SELECT and INSERT on the history table and USAGE on
    its id sequence, or CREATE on the schema it would be created in."""
    ident = history_ident(schema, name).as_string(conn)
    with conn.cursor(row_factory=dict_row) as cur:
        r = fetch_one(
            cur.execute(
                """
                SELECT c.oid IS NOT NULL AS found, n.nspname AS nsp, c.relname AS rel,
                       has_table_privilege(c.oid, 'SELECT') AS can_select,
                       has_table_privilege(c.oid, 'INSERT') AS can_insert,
                       s.seq,
                       s.seq IS NULL OR has_sequence_privilege(s.seq, 'USAGE') AS can_use_seq,
                       coalesce(%(schema)s, current_schema()) AS home,
                       has_schema_privilege(coalesce(%(schema)s, current_schema()), 'CREATE')
                         AS can_create
                FROM (SELECT to_regclass(%(ident)s) AS oid) r
                LEFT JOIN pg_class c ON c.oid = r.oid
                LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
                LEFT JOIN LATERAL (SELECT pg_get_serial_sequence(%(ident)s, 'id') AS seq) s
                  ON c.oid IS NOT NULL
                """,
                {"ident": ident, "schema": schema},
            )
        )
    if not r["found"]:
        if r["can_create"]:
            return []
        return [f"CREATE on the schema {r['home']} (to create {name}; or run keys-cleanup init-db)"]
    qualified = f"{r['nsp']}.{r['rel']}"
    lacking = [
        f"{p} on {qualified}"
        for p, ok in (("SELECT", r["can_select"]), ("INSERT", r["can_insert"]))
        if not ok
    ]
    if not r["can_use_seq"]:
        lacking.append(f"USAGE on the sequence {r['seq']}")
    return lacking


def missing_live_privileges(
    conn: Conn, target: Target, history: tuple[str | None, str] | None
) -> tuple[list[str], list[str]]:
    """What a live run needs that this role lacks: (fatal, history), as `PRIVILEGE on object`.

    Fatal: DELETE on the key table (the first batch would fail with permission denied).
    History (a live run goes on without it, with a note): SELECT and INSERT on the history
    table and USAGE on its id sequence, or CREATE on the schema it would be created in.
    """
    fatal = [] if _can_delete(conn, target) else [f"DELETE on {target.qualified}"]
    if history is None:
        return fatal, []
    return fatal, _history_privileges(conn, *history)


def create_history(conn: Conn, schema: str | None, name: str) -> None:
    table = history_ident(schema, name)
    conn.execute(
        sql.SQL(
            """
            CREATE TABLE IF NOT EXISTS {table} (
              id                 bigserial PRIMARY KEY,
              event_id           text,
              target_table       text NOT NULL,
              started_at         timestamptz NOT NULL,
              finished_at        timestamptz NOT NULL DEFAULT now(),
              status             text NOT NULL,
              keys_before        bigint,
              keys_after         bigint,
              total_bytes_before bigint,
              total_bytes_after  bigint,
              eligible           bigint NOT NULL,
              deleted            bigint NOT NULL,
              duration_ms        bigint NOT NULL,
              report             jsonb NOT NULL
            )
            """
        ).format(table=table)
    )
    conn.execute(
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS {index} ON {table} (event_id) WHERE event_id IS NOT NULL"
        ).format(index=sql.Identifier(f"{name}_event_idx"), table=table)
    )


def completed_run_for_event(
    conn: Conn, schema: str | None, name: str, event_id: str, target_table: str
) -> datetime | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            sql.SQL(
                "SELECT max(finished_at) AS finished_at FROM {} "
                "WHERE event_id = %s AND target_table = %s AND status = 'completed'"
            ).format(history_ident(schema, name)),
            (event_id, target_table),
        ).fetchone()
    return row["finished_at"] if row else None


def insert_history(conn: Conn, schema: str | None, name: str, row: HistoryRow) -> None:
    conn.execute(
        sql.SQL(
            """
            INSERT INTO {} (event_id, target_table, started_at, status, keys_before, keys_after,
                            total_bytes_before, total_bytes_after, eligible, deleted, duration_ms,
                            report)
            VALUES (%(event_id)s, %(target_table)s, %(started_at)s, %(status)s,
                    %(keys_before)s, %(keys_after)s, %(total_bytes_before)s,
                    %(total_bytes_after)s, %(eligible)s, %(deleted)s, %(duration_ms)s,
                    %(report_json)s::jsonb
                    || jsonb_strip_nulls(jsonb_build_object(
                         'orphan_candidate_ids', %(orphan_candidates)s::text[])))
            """
        ).format(history_ident(schema, name)),
        {
            "event_id": row.event_id,
            "target_table": row.target_table,
            "started_at": row.started_at,
            "status": row.status,
            "keys_before": row.keys_before,
            "keys_after": row.keys_after,
            "total_bytes_before": row.total_bytes_before,
            "total_bytes_after": row.total_bytes_after,
            "eligible": row.eligible,
            "deleted": row.deleted,
            "duration_ms": row.duration_ms,
            "report_json": row.report_json,
            "orphan_candidates": row.orphan_candidates,
        },
    )


def orphan_candidates(
    conn: Conn, schema: str | None, name: str, target_table: str, before: datetime
) -> list[list[str]] | None:
    """The orphan candidates' ids recorded by the last run that started at or before `before`, and
    by every run since, oldest first; None when no run up to `before` recorded any."""
    table = history_ident(schema, name)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            sql.SQL(
                """
                SELECT report -> 'orphan_candidate_ids' AS ids FROM {table}
                WHERE target_table = %(target)s AND report ? 'orphan_candidate_ids'
                  AND started_at >= (SELECT max(started_at) FROM {table}
                                     WHERE target_table = %(target)s
                                       AND report ? 'orphan_candidate_ids'
                                       AND started_at <= %(before)s)
                ORDER BY started_at, id
                """
            ).format(table=table),
            {"target": target_table, "before": before},
        ).fetchall()
    if not rows:
        return None
    return [[str(t) for t in r["ids"] or ()] for r in rows]


def last_drain(
    conn: Conn, schema: str | None, name: str, target_table: str
) -> tuple[str, object] | None:
    """The status and recorded drain (handler/resume.py) of the table's last run that ran the
    delete loop; None when there is none."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            sql.SQL(
                "SELECT status, report -> 'drain' AS drain FROM {} "
                "WHERE target_table = %s AND report ? 'drain' "
                "AND jsonb_typeof(report -> 'drain') = 'object' "
                "ORDER BY finished_at DESC, id DESC LIMIT 1"
            ).format(history_ident(schema, name)),
            (target_table,),
        ).fetchone()
    return None if row is None else (str(row["status"]), row["drain"])


def history_trend(
    conn: Conn, schema: str | None, name: str, days: int, target_table: str | None
) -> list[DayTrend]:
    """Per day and table, newest first: runs, the last run's keys and size after, deleted and
    time; of `target_table` only, or of every table when None. A failed run counts in the runs,
    statuses, deleted and time; it measured no sizes nor backlog after itself, so the keys,
    size and backlog are the day's last other run's."""
    table_filter = sql.SQL("AND target_table = %(target)s") if target_table else sql.SQL("")
    query = sql.SQL(
        """
        SELECT date_trunc('day', started_at, 'UTC') AS day,
               target_table AS "table",
               count(*) AS runs,
               string_agg(DISTINCT status, ',' ORDER BY status) AS statuses,
               (array_agg(coalesce(keys_after, keys_before) ORDER BY started_at DESC)
                  FILTER (WHERE status <> 'failed'))[1] AS keys,
               (array_agg(coalesce(total_bytes_after, total_bytes_before)
                          ORDER BY started_at DESC) FILTER (WHERE status <> 'failed'))[1]
                 AS total_bytes,
               sum(deleted)::bigint AS deleted,
               sum(duration_ms)::bigint AS duration_ms,
               (array_agg(CASE WHEN jsonb_typeof(report -> 'remaining') = 'number'
                               THEN (report ->> 'remaining')::numeric::bigint END
                          ORDER BY started_at DESC) FILTER (WHERE status <> 'failed'))[1]
                 AS remaining
        FROM {table}
        WHERE started_at >= now() - make_interval(days => %(days)s) {table_filter}
        GROUP BY 1, 2
        ORDER BY 1 DESC, 2
        """
    ).format(table=history_ident(schema, name), table_filter=table_filter)
    with conn.cursor(row_factory=class_row(DayTrend)) as cur:
        return cur.execute(query, {"days": days, "target": target_table}).fetchall()


def stalled_runs_before(
    conn: Conn, schema: str | None, name: str, target_table: str, limit: int
) -> int:
    """How many of the table's last recorded runs, newest first and at most `limit`, ended
    `partial` having deleted nothing, before the first one that did not."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            sql.SQL(
                "SELECT status = 'partial' AND deleted = 0 AS stalled FROM {} "
                "WHERE target_table = %s ORDER BY finished_at DESC, id DESC LIMIT %s"
            ).format(history_ident(schema, name)),
            (target_table, limit),
        ).fetchall()
    count = 0
    for row in rows:
        if not row["stalled"]:
            break
        count += 1
    return count


def recent_runs(
    conn: Conn, schema: str | None, name: str, target_table: str | None, limit: int
) -> list[RunPoint]:
    """The last `limit` runs that measured the table (of `target_table`, or of any table),
    oldest first: keys and total size as each left it (after, or before when not measured)."""
    table_filter = sql.SQL("AND target_table = %(target)s") if target_table else sql.SQL("")
    query = sql.SQL(
        """
        SELECT finished_at, keys, total_bytes, remaining FROM (
          SELECT id, finished_at,
                 coalesce(keys_after, keys_before) AS keys,
                 coalesce(total_bytes_after, total_bytes_before) AS total_bytes,
                 CASE WHEN jsonb_typeof(report -> 'remaining') = 'number'
                      THEN (report ->> 'remaining')::numeric::bigint END AS remaining
          FROM {table}
          WHERE coalesce(keys_after, keys_before) IS NOT NULL
            AND coalesce(total_bytes_after, total_bytes_before) IS NOT NULL {table_filter}
          ORDER BY finished_at DESC, id DESC
          LIMIT %(limit)s
        ) AS recent
        ORDER BY finished_at, id
        """
    ).format(table=history_ident(schema, name), table_filter=table_filter)
    with conn.cursor(row_factory=class_row(RunPoint)) as cur:
        return cur.execute(query, {"target": target_table, "limit": limit}).fetchall()
