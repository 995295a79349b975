"""Deletion: one batch's DELETE over a page range, the locks it takes first, and VACUUM."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from handler.db.catalog import Conn, fetch_one
from handler.db.predicates import (
    applies_orphans,
    eligible_predicate,
    in_orphan_set,
    key_type_text,
    listing_object,
    policy_params,
)
from handler.domain import BatchResult, ListedKey, Listing, Policy, Target


def _returning_query(  # a declared SQL statement builder
    target: Target, where: sql.Composable, *, orphans: bool, listed: bool
) -> sql.Composed:
    """The DELETE that hands back each deleted row's key type (and orphan-set membership, and
    with `listed` the first list_limit keys), summed per key type."""
    item = listing_object(target) if listed else sql.SQL("NULL::jsonb")
    listing = sql.SQL("(array_agg(item))[1:%(list_limit)s]") if listed else sql.SQL("NULL::jsonb[]")
    return sql.SQL(
        """
        WITH deleted AS (
          DELETE FROM {table} WHERE {where}
          RETURNING {kt} AS key_type, {member} AS kc_o, {item} AS item
        )
        SELECT key_type, count(*) AS deleted, count(*) FILTER (WHERE kc_o) AS orphaned,
               {listing} AS items
        FROM deleted GROUP BY key_type
        """
    ).format(
        table=target.ident,
        where=where,
        kt=key_type_text(target),
        member=in_orphan_set(target) if orphans else sql.SQL("false"),
        item=item,
        listing=listing,
    )


def _batch_result(rows: list[dict[str, Any]]) -> BatchResult:
    by_type: dict[str | None, int] = {}
    listed: Listing = []
    orphaned = 0
    for row in rows:
        by_type[row["key_type"]] = int(row["deleted"])
        orphaned += int(row["orphaned"])
        listed.extend(ListedKey(**item) for item in row["items"] or ())
    return BatchResult(sum(by_type.values()), by_type, listed, orphaned)


def delete_range(
    conn: Conn,
    target: Target,
    policy: Policy,
    *,
    first_page: int,
    end_page: int,
    count_by_type: bool,
    list_limit: int,
    now: datetime,
) -> BatchResult:
    """Delete the eligible rows whose physical position is in [first_page, end_page).

    Walking the heap by TID range makes the whole run one sequential pass, however many batches.
    The eligibility predicate is evaluated by the DELETE itself, so a key refreshed since it was
    counted is not deleted. A row another transaction holds makes the statement wait, bounded
    by lock_timeout (the caller then splits the range).

    The plain DELETE only counts. With `count_by_type` (or a listing) it also returns each
    deleted row's key type, which PostgreSQL gets by handing back every deleted row: about
    1.33x the plain statement's time (1.21x against 0.91x the single DELETE,
    bench/results/delete-forms-1000000.md), so only when asked, or when the orphan rule has
    tenants to take: their keys are then counted apart, to bound them by the measured count.
    """
    where = sql.SQL("ctid >= %(lo)s::tid AND ctid < %(hi)s::tid AND {eligible}").format(
        eligible=eligible_predicate(target, policy)
    )
    params = policy_params(policy) | {
        "lo": f"({first_page},0)",
        "hi": f"({end_page},0)",
        "now": now,
        "list_limit": list_limit,
    }
    orphans = applies_orphans(target, policy)
    if not count_by_type and list_limit <= 0 and not orphans:
        cur = conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(target.ident, where), params)
        return BatchResult(cur.rowcount, None, [])
    query = _returning_query(target, where, orphans=orphans, listed=list_limit > 0)
    with conn.cursor(row_factory=dict_row) as returning:
        return _batch_result(returning.execute(query, params).fetchall())


def lock_for_delete_then_row_wait(
    conn: Conn, target: Target, *, row_wait_ms: int | None, shared: sql.Composable | None = None
) -> frozenset[int] | None:
    """The table lock a DELETE takes (under the current lock_timeout), then, once it is held,
    lock_timeout = row_wait_ms for the rows: statements in one round trip. A timeout here
    is always the table lock's. With `shared`, that table's ACCESS SHARE lock (the one the
    DELETE's subquery takes) instead of the row wait: `row_wait_ms` is then None and set by
    the caller after it.

    A partitioned target's lock is the parent's, without ONLY: it is every partition's too, and
    the batch's statement reads every leaf (its lookups of other rows read the partitioned
    table), so a lock another session holds on any leaf is met here, under the table-lock
    timeout. Returned for it, read in the same round trip once the lock is held: its leaf
    partitions' OIDs as the catalog has them then (pg_partition_tree, at any depth; it takes
    ACCESS SHARE on each partition, already held). None for a plain table."""
    statements = [sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(target.ident)]
    if target.partitioned:
        statements.append(
            sql.SQL(
                "SELECT ARRAY(SELECT relid::bigint FROM pg_partition_tree({}::regclass) "
                "WHERE isleaf)"
            ).format(sql.Literal(target.oid))
        )
    if row_wait_ms is not None:
        statements.append(
            sql.SQL("SELECT set_config('lock_timeout', {}, true)").format(
                sql.Literal(f"{max(1, row_wait_ms)}ms")
            )
        )
    cur = conn.execute(sql.SQL("; ").join(statements))
    if not target.partitioned:
        return None
    cur.nextset()  # past the LOCK's result: the leaves
    return frozenset(int(oid) for oid in fetch_one(cur)[0])


def lock_shared_then_row_wait(conn: Conn, table: sql.Composable, *, row_wait_ms: int) -> None:
    """ACCESS SHARE on a table the DELETE reads (under the current lock_timeout), then the row
    wait as above: a timeout here is always that table's lock."""
    conn.execute(
        sql.SQL(
            "LOCK TABLE {} IN ACCESS SHARE MODE; SELECT set_config('lock_timeout', {}, true)"
        ).format(table, sql.Literal(f"{max(1, row_wait_ms)}ms"))
    )


def vacuum_analyze(conn: Conn, target: Target) -> list[str]:
    """VACUUM (ANALYZE) the table, without truncating its heap; returns the server's notices
    (e.g. a permission skip). Truncation takes ACCESS EXCLUSIVE on the live key table, which
    every reader and writer waits for, and hot standbys replay that lock against their queries:
    it is left to autovacuum, and the freed pages are reused by the table's next writes."""
    notices: list[str] = []

    def collect(diag: psycopg.errors.Diagnostic) -> None:
        if diag.message_primary:
            notices.append(diag.message_primary)

    conn.add_notice_handler(collect)
    try:
        conn.execute(sql.SQL("VACUUM (ANALYZE, TRUNCATE false) {}").format(target.ident))
    finally:
        conn.remove_notice_handler(collect)
    return notices
