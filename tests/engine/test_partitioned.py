"""Declaratively partitioned key tables (hash, list, range, sub-partitions, a default partition):
measured once over the parent, deleted leaf by leaf, and a partition attached or detached
during the run ends it `partial`, with nothing wrong deleted."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from psycopg import errors as pg_errors
from psycopg import sql

from handler import db
from handler.cleanup import run_cleanup
from handler.deleteloop import Progress
from handler.schema import hash_partitions, reference_schema
from handler.settings import ConfigError, Flags
from tests.support.db import ME_LID, KeyRow, PgSchema, baileys_creds
from tests.support.encoded import Layout, add_creds, insert, keys_left
from tests.support.progress import AfterFirstBatch
from tests.support.tables import (
    AGE_CREDS,
    DRY,
    FORCE,
    expected_survivors,
    mixed_rows,
    slow_deletes,
)

NO_GUARD = {"CLEANUP_GUARD_MIN_KEYS": "100000"}


def _hash(pg: PgSchema) -> None:
    with pg.connect() as conn:
        conn.execute(hash_partitions("whatsapp_keys", 8))  # 3 tenants: some leaves stay empty


def _list(pg: PgSchema) -> None:
    """c0 alone; c1 sub-partitioned by hash of key_id; the rest in the default partition."""
    with pg.connect() as conn:
        conn.execute(reference_schema(partition_by="LIST (company_id)"))
        conn.execute(
            """
            CREATE TABLE keys_c0 PARTITION OF whatsapp_keys FOR VALUES IN ('c0');
            CREATE TABLE keys_c1 PARTITION OF whatsapp_keys FOR VALUES IN ('c1')
              PARTITION BY HASH (key_id);
            CREATE TABLE keys_c1_a PARTITION OF keys_c1 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
            CREATE TABLE keys_c1_b PARTITION OF keys_c1 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
            CREATE TABLE keys_empty PARTITION OF whatsapp_keys FOR VALUES IN ('nobody');
            CREATE TABLE keys_rest PARTITION OF whatsapp_keys DEFAULT;
            """
        )


def _range(pg: PgSchema) -> None:
    with pg.connect() as conn:
        conn.execute(reference_schema(partition_by="RANGE (company_id)"))
        conn.execute(
            """
            CREATE TABLE keys_lo PARTITION OF whatsapp_keys FOR VALUES FROM (MINVALUE) TO ('c1');
            CREATE TABLE keys_mid PARTITION OF whatsapp_keys FOR VALUES FROM ('c1') TO ('c2');
            CREATE TABLE keys_hi PARTITION OF whatsapp_keys FOR VALUES FROM ('c2') TO (MAXVALUE);
            """
        )


LAYOUTS: dict[str, Callable[[PgSchema], None]] = {"hash": _hash, "list": _list, "range": _range}


def _leaf_counts(pg: PgSchema) -> dict[str, int]:
    with pg.connect() as conn:
        rows = conn.execute(
            "SELECT tableoid::regclass::text, count(*) FROM whatsapp_keys GROUP BY 1"
        ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_partitioned_table_dry_and_live_delete_exactly_the_eligible_keys(
    pg: PgSchema, layout: str
) -> None:
    LAYOUTS[layout](pg)
    pg.add_auth(AGE_CREDS)
    rows = mixed_rows()
    pg.insert_keys(rows)
    survivors = expected_survivors(rows, 30)
    dry = run_cleanup(pg.settings(), DRY)
    assert dry.status == "completed"
    assert dry.eligible == len(rows) - len(survivors)
    assert pg.count() == len(rows)  # the dry run deletes nothing
    # Small batches: several per leaf.
    report = run_cleanup(pg.settings(CLEANUP_BATCH_SIZE="5"), FORCE)
    assert report.status == "completed", report.reason
    assert report.deleted == dry.eligible
    assert pg.key_set() == survivors
    assert report.before is not None
    assert report.before.keys == len(rows)
    assert report.before.table_bytes > 0  # the leaves' sizes, not the parent's (none)


def test_partitioned_table_keeps_protected_types_and_the_prekey_window(pg: PgSchema) -> None:
    _hash(pg)
    pg.add_auth({"a": baileys_creds(2101, 2001)})
    old_prekeys = [KeyRow("a", "pre-key", str(i), 60) for i in range(1, 2101)]
    protected = [KeyRow(f"t{i}", "app-state-sync-key", f"k{i}", 60) for i in range(20)]
    pg.insert_keys(old_prekeys + protected)
    report = run_cleanup(pg.settings(**NO_GUARD), FORCE)
    assert report.status == "completed", report.reason
    left = pg.key_set()
    assert {k for c, t, k in left if t == "pre-key"} == {str(i) for i in range(1001, 2101)}
    assert {r.ident for r in protected} <= left
    assert report.deleted == 1000


def _run_with(pg: PgSchema, action: Callable[[], None]) -> tuple[object, AfterFirstBatch]:
    after = AfterFirstBatch(action)
    report = run_cleanup(pg.settings(CLEANUP_BATCH_SIZE="3", **NO_GUARD), FORCE, progress=after)
    return report, after


def _idents(pg: PgSchema, table: str) -> set[tuple[str, str, str]]:
    return pg.key_set(table)


def test_leaf_detached_mid_run_ends_partial_and_deletes_nothing_wrong(pg: PgSchema) -> None:
    _hash(pg)
    pg.add_auth(AGE_CREDS)
    rows = mixed_rows()
    pg.insert_keys(rows)
    survivors = expected_survivors(rows, 30)
    last = max(_leaf_counts(pg))  # the leaves are deleted in name order: this one comes last
    in_last = _idents(pg, last)
    assert in_last - survivors  # it holds eligible keys

    def detach() -> None:
        with pg.connect() as conn:
            conn.execute(f"ALTER TABLE whatsapp_keys DETACH PARTITION {last}")

    report, after = _run_with(pg, detach)
    assert after.seen
    assert report.status == "partial"  # type: ignore[attr-defined]
    reason = report.reason  # type: ignore[attr-defined]
    assert "partitions of" in reason
    assert "changed during the run" in reason
    assert "1 partition(s) detached or dropped" in reason
    assert _idents(pg, last) == in_last  # the detached leaf is untouched
    left = pg.key_set() | in_last
    # Only eligible keys went, and not all of them (the run stopped).
    assert survivors <= left
    assert 0 < report.deleted < len(rows) - len(survivors)  # type: ignore[attr-defined]
    assert len(left) == len(rows) - report.deleted  # type: ignore[attr-defined]


def test_partition_attached_mid_run_ends_partial_and_leaves_it_untouched(pg: PgSchema) -> None:
    _list(pg)
    pg.add_auth(AGE_CREDS)
    rows = [r for r in mixed_rows() if r.company != "c2"]
    pg.insert_keys(rows)
    late = [KeyRow("late", "session", f"s{i}", 60) for i in range(30)]
    with pg.connect() as conn:
        conn.execute("CREATE TABLE keys_late (LIKE whatsapp_keys INCLUDING DEFAULTS)")
    pg.insert_keys(late, table="keys_late")

    def attach() -> None:
        with pg.connect() as conn:
            conn.execute(
                "ALTER TABLE whatsapp_keys ATTACH PARTITION keys_late FOR VALUES IN ('late')"
            )

    report, after = _run_with(pg, attach)
    assert after.seen
    assert report.status == "partial"  # type: ignore[attr-defined]
    assert "0 partition(s) detached or dropped, 1 attached" in report.reason  # type: ignore[attr-defined]
    left = pg.key_set()
    assert {r.ident for r in late} <= left  # old, but not measured: never deleted
    assert expected_survivors(rows, 30) <= left
    assert len(left) == len(rows) + len(late) - report.deleted  # type: ignore[attr-defined]


def test_leaf_dropped_mid_run_ends_partial_and_deletes_nothing_wrong(pg: PgSchema) -> None:
    """DROP, between two leaves, of the leaf the next batch walks: the run stops `partial`
    (never an error, and nothing deleted from another table of that name)."""
    _hash(pg)
    pg.add_auth(AGE_CREDS)
    rows = mixed_rows()
    pg.insert_keys(rows)
    survivors = expected_survivors(rows, 30)
    counts = _leaf_counts(pg)
    dropped: dict[str, set[tuple[str, str, str]]] = {}

    def drop_next(p: Progress) -> None:
        with pg.connect() as conn:
            row = conn.execute(
                "SELECT relname::text, pg_relation_size(oid) / current_setting('block_size')::int "
                "FROM pg_class WHERE oid = %s",
                (p.oid,),
            ).fetchone()
            assert row is not None
            current, pages = str(row[0]), int(row[1])
            if dropped or p.end_page < pages:
                return  # once, after the current leaf's last batch
            name = min(leaf for leaf in counts if leaf > current)  # the next batch's
            dropped[name] = _idents(pg, name)
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))

    settings = pg.settings(CLEANUP_BATCH_SIZE="3", **NO_GUARD)
    report = run_cleanup(settings, FORCE, progress=drop_next)
    [gone] = dropped.values()
    assert gone - survivors  # it held eligible keys
    assert report.status == "partial", report.reason
    assert report.reason is not None
    assert "changed during the run" in report.reason
    assert "1 partition(s) detached or dropped" in report.reason
    left = pg.key_set()
    # Only eligible keys went, and not all of them (the run stopped).
    assert survivors - gone <= left
    assert len(left) == len(rows) - len(gone) - report.deleted
    assert 0 < report.deleted < len(rows) - len(survivors | gone)


def test_detach_and_drop_at_any_depth_wait_for_the_batch(pg: PgSchema) -> None:
    """While a batch deletes from one leaf, DETACH or DROP of any partition (another leaf, a
    sub-partition's leaf, a partitioned partition) waits for its transaction: what the leaf
    re-read under the batch's lock relies on. The key lifecycle is off (no key type column), so
    the batch's DELETE reads its own leaf only: what the DDL waits for is the batch's lock."""
    _list(pg)
    pg.add_auth(AGE_CREDS)
    rows = mixed_rows()
    pg.insert_keys(rows)
    # A statement trigger on the leaf: the batches name the leaf, so the parent's statement
    # triggers would not fire. keys_c0 is walked first (name order).
    slow_deletes(pg, 3.0, table="keys_c0")
    settings = pg.settings(
        CLEANUP_BATCH_TIMEOUT_MS="20000", CLEANUP_KEY_TYPE_COLUMN="none", **NO_GUARD
    )
    reports: list[object] = []
    runner = threading.Thread(target=lambda: reports.append(run_cleanup(settings, FORCE)))
    runner.start()
    blocked: dict[str, bool] = {}
    try:
        pid = None
        with pg.connect() as watch:
            for _ in range(200):  # until a batch sits in the trigger's sleep
                pid = pid or _backend(pg)
                row = watch.execute(
                    "SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchone()
                if row is not None and row[0] == "PgSleep":
                    break
                time.sleep(0.02)
            else:
                pytest.fail("no batch reached the slow leaf")
        ddl = {
            "detach a leaf": "ALTER TABLE whatsapp_keys DETACH PARTITION keys_rest",
            "drop a leaf": "DROP TABLE keys_rest",
            "detach a sub-partition's leaf": "ALTER TABLE keys_c1 DETACH PARTITION keys_c1_a",
            "drop a sub-partition's leaf": "DROP TABLE keys_c1_b",
            "detach a partitioned partition": "ALTER TABLE whatsapp_keys DETACH PARTITION keys_c1",
        }
        with pg.connect() as other:
            other.autocommit = True
            other.execute("SET lock_timeout = '200ms'")
            for what, statement in ddl.items():
                try:
                    with other.transaction():
                        other.execute(statement)
                        raise _RolledBack
                except pg_errors.LockNotAvailable:
                    blocked[what] = True
                except _RolledBack:
                    blocked[what] = False
    finally:
        runner.join(60)
    assert blocked == dict.fromkeys(ddl, True)
    assert reports
    report = reports[0]
    assert report.status == "completed"  # type: ignore[attr-defined]
    assert 0 < report.deleted < len(rows)  # type: ignore[attr-defined]
    assert pg.count() == len(rows) - report.deleted  # type: ignore[attr-defined]


class _RolledBack(Exception):
    """Leaves a transaction block that ran its statement: rolled back, nothing changed."""


def _backend(pg: PgSchema) -> int | None:
    try:
        return pg.cleanup_backend()
    except AssertionError:
        return None


def test_other_leaf_locked_ends_partial_on_the_lock_timeout_not_as_row_waits(
    pg: PgSchema,
) -> None:
    """A leaf no batch deletes from (an empty one), locked by another session (VACUUM FULL, a
    TRUNCATE in a transaction): each batch's DELETE reads it (the sender-key rule's lookup
    reads the partitioned table), so the batch's table lock waits for it with the lock timeout,
    and the run stops on it as on the table's own lock, not as rows held (split ranges, pages
    skipped after the 100 ms row wait)."""
    _hash(pg)
    pg.add_auth(AGE_CREDS)
    rows = mixed_rows()
    pg.insert_keys(rows)
    empty = min({f"whatsapp_keys_p{i}" for i in range(8)} - set(_leaf_counts(pg)))
    locker = pg.connect()

    def lock_empty() -> None:
        locker.execute("BEGIN")
        locker.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(empty))
        )

    settings = pg.settings(
        CLEANUP_BATCH_SIZE="3",
        CLEANUP_LOCK_TIMEOUT_MS="300",
        CLEANUP_BATCH_ATTEMPTS="2",
        **NO_GUARD,
    )
    after = AfterFirstBatch(lock_empty)
    try:
        report = run_cleanup(settings, FORCE, progress=after)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert after.seen
    assert report.status == "partial"
    assert report.reason is not None
    assert "lock timeout on" in report.reason
    assert report.batches == 1
    assert not any("skipped" in note for note in report.notes)
    assert pg.count() == len(rows) - report.deleted


def test_default_and_empty_leaves_and_sub_partitions_are_walked(pg: PgSchema) -> None:
    _list(pg)
    pg.add_auth(AGE_CREDS)
    rows = mixed_rows()
    pg.insert_keys(rows)
    before = _leaf_counts(pg)
    assert set(before) == {"keys_c0", "keys_c1_a", "keys_c1_b", "keys_rest"}  # keys_empty: none
    report = run_cleanup(pg.settings(CLEANUP_BATCH_SIZE="4", **NO_GUARD), FORCE)
    assert report.status == "completed", report.reason
    assert pg.key_set() == expected_survivors(rows, 30)
    after = _leaf_counts(pg)
    assert all(after[leaf] < before[leaf] for leaf in before)  # every leaf had old keys


def test_leaves_are_read_at_any_depth(pg: PgSchema) -> None:
    _list(pg)
    with pg.connect() as conn:
        target = db.resolve_target(conn, None, "whatsapp_keys", "updated_at", "key_type")
        assert target.partitioned
        names = [leaf.name for leaf in db.leaves(conn, target)]
    assert names == ["keys_c0", "keys_c1_a", "keys_c1_b", "keys_empty", "keys_rest"]


def test_partitioned_partition_without_leaves_is_no_leaf(pg: PgSchema) -> None:
    _range(pg)
    with pg.connect() as conn:
        conn.execute("ALTER TABLE whatsapp_keys DETACH PARTITION keys_hi")
        conn.execute(
            "CREATE TABLE keys_hi2 PARTITION OF whatsapp_keys FOR VALUES FROM ('c2') TO "
            "(MAXVALUE) PARTITION BY HASH (key_id)"
        )
        target = db.resolve_target(conn, None, "whatsapp_keys", "updated_at", "key_type")
        # It has no heap of its own: nothing to walk.
        assert [leaf.name for leaf in db.leaves(conn, target)] == ["keys_lo", "keys_mid"]


def test_foreign_table_partition_is_refused(pg: PgSchema) -> None:
    with pg.connect() as conn:
        if not conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'file_fdw'"
        ).fetchone():
            pytest.skip("file_fdw is not available on this server")
        conn.execute(f"CREATE EXTENSION file_fdw SCHEMA {pg.schema}")
        conn.execute("CREATE SERVER IF NOT EXISTS kc_files FOREIGN DATA WRAPPER file_fdw")
    _range(pg)
    with pg.connect() as conn:
        conn.execute("ALTER TABLE whatsapp_keys DETACH PARTITION keys_hi")
        # A foreign partition needs a parent without unique indexes.
        conn.execute("ALTER TABLE whatsapp_keys DROP CONSTRAINT whatsapp_keys_pkey")
        conn.execute(
            "CREATE FOREIGN TABLE keys_far PARTITION OF whatsapp_keys FOR VALUES FROM ('c2') "
            "TO (MAXVALUE) SERVER kc_files OPTIONS (filename '/dev/null')"
        )
    pg.insert_keys([KeyRow("c0", "session", "k", 60)])
    with pytest.raises(ConfigError, match=r"partition \S*keys_far is not an ordinary table"):
        run_cleanup(pg.settings(), FORCE)
    assert pg.count("keys_lo") == 1  # nothing deleted


def test_verbose_live_run_with_vacuum_on_a_partitioned_table(pg: PgSchema) -> None:
    _hash(pg)
    pg.add_auth(AGE_CREDS)
    rows = mixed_rows()
    pg.insert_keys(rows)
    survivors = expected_survivors(rows, 30)
    flags = Flags(dry_run=False, force=True, verbose=True, vacuum=True)
    report = run_cleanup(pg.settings(CLEANUP_BATCH_SIZE="7"), flags)
    assert report.status == "completed", report.reason
    assert pg.key_set() == survivors
    assert report.vacuumed
    # Counted by RETURNING, leaf by leaf: the per-type split adds up to the deletions.
    assert sum(t.deleted or 0 for t in report.by_type.values()) == report.deleted
    listed = {(k.key["company_id"], k.key["key_type"], k.key["key_id"]) for k in report.keys}
    assert listed
    assert listed <= {r.ident for r in rows} - survivors
    assert report.after is not None
    assert report.after.keys == len(survivors)
    # The deletions per partition, in a note: they add up, and each leaf's matches its rows.
    note = next(n for n in report.notes if n.startswith("deleted per partition: "))
    per_leaf = {
        name.split(".")[1]: int(n.replace(",", ""))
        for name, n in (item.rsplit(" ", 1) for item in note.split(": ", 1)[1].split(", "))
    }
    assert len(per_leaf) == 8
    assert sum(per_leaf.values()) == report.deleted
    assert 0 in per_leaf.values()  # an empty leaf (3 tenants, 8 partitions)


def test_per_partition_counts_only_in_verbose_runs(pg: PgSchema) -> None:
    _hash(pg)
    pg.add_auth(AGE_CREDS)
    pg.insert_keys(mixed_rows())
    report = run_cleanup(pg.settings(), FORCE)
    assert report.deleted > 0
    assert not any(n.startswith("deleted per partition") for n in report.notes)


def _sender_keys_and_memory() -> list[KeyRow]:
    """Old sender keys of 6 tenants (all leaves but a few), half of them with their group's
    memory row (so kept), half without (so eligible)."""
    rows = []
    for t in range(6):
        for g in range(10):
            rows.append(KeyRow(f"c{t}", "sender-key", f"g{g}@g.us::777::0", 60))
            if g % 2:
                rows.append(KeyRow(f"c{t}", "sender-key-memory", f"g{g}@g.us", 2))
    return rows


def _loops(node: dict[str, object], wanted: Callable[[dict[str, object]], bool]) -> int:
    """How many times the nodes of an EXPLAIN (ANALYZE, FORMAT JSON) plan tree that match
    `wanted` ran, summed. InitPlans are left out: they run once per statement, not per row (the
    walk of the tenants, handler/db/predicates.py `_per_tenant`, is one)."""
    if node.get("Parent Relationship") == "InitPlan":
        return 0
    here = node.get("Actual Loops", 0) if wanted(node) else 0
    assert isinstance(here, int)
    children = node.get("Plans") or []
    assert isinstance(children, list)
    return here + sum(_loops(child, wanted) for child in children)


def _subplan_runs(node: dict[str, object]) -> int:
    """How many times the SubPlans of the plan ran, outside its InitPlans."""
    return _loops(node, lambda n: n.get("Parent Relationship") == "SubPlan")


def _memory_scans(node: dict[str, object]) -> int:
    """How many times the plan read the memory rows (a hash join's inner side, each loop)."""
    return _loops(node, lambda n: n.get("Node Type") == "Hash")


Pass = tuple[db.Target, list[object], db.Policy, bool]


def _dry_runs_of_both(pg: PgSchema, monkeypatch: pytest.MonkeyPatch) -> list[Pass]:
    """The same old sender keys and memory rows in `whatsapp_keys` (hash-partitioned) and
    `plain_keys`: a dry run of each, with the same figures, and the measuring passes they made
    (target, edges, policy, by_tenant), to EXPLAIN."""
    _hash(pg)
    with pg.connect() as conn:
        conn.execute(reference_schema("plain_keys"))
    rows = _sender_keys_and_memory()
    pg.insert_keys(rows)
    pg.insert_keys(rows, table="plain_keys")
    passes: list[Pass] = []
    real = db.measure

    def recording(
        conn: db.Conn,
        target: db.Target,
        edges: list[object],
        policy: db.Policy,
        *,
        by_tenant: bool = False,
        heads: dict[int, int] | None = None,
    ) -> object:
        passes.append((target, edges, policy, by_tenant))
        return real(conn, target, edges, policy, by_tenant=by_tenant, heads=heads)  # type: ignore[arg-type]

    monkeypatch.setattr(db, "measure", recording)
    reports = {
        table: run_cleanup(pg.settings(CLEANUP_TABLE=table, **NO_GUARD), DRY)
        for table in ("plain_keys", "whatsapp_keys")
    }
    # The same figures either way: 30 sender keys kept by their memory row, 30 eligible.
    kept = {t: [(k.key_type, k.keys) for k in r.kept] for t, r in reports.items()}
    assert kept["plain_keys"] == kept["whatsapp_keys"]
    assert ("sender-key", 30) in kept["whatsapp_keys"]
    assert reports["plain_keys"].eligible == reports["whatsapp_keys"].eligible == 30
    return passes


def _pass_plan(conn: db.Conn, p: Pass) -> dict[str, object]:
    target, edges, policy, by_tenant = p
    query, params = db.measure_statement(target, edges, policy, by_tenant=by_tenant)  # type: ignore[arg-type]
    row = conn.execute(
        sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) {}").format(query), params
    ).fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]
    assert isinstance(plan, dict)
    return plan


def test_measuring_pass_reads_memory_rows_once_not_per_leaf(
    pg: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender-key rule's memory rows are read once, by one join over the whole table, as on
    a plain table: no lookup per leaf (PostgreSQL computes a partitioned table's projection in
    each leaf's scan, so a subquery there was built once per leaf) nor per key."""
    passes = _dry_runs_of_both(pg, monkeypatch)
    counts = {}
    with pg.connect() as conn:
        for p in passes:
            plan = _pass_plan(conn, p)
            counts[p[0].name] = (_subplan_runs(plan), _memory_scans(plan))
    assert counts["plain_keys"] == (0, 1)  # no lookup: one scan of the memory rows
    assert counts["whatsapp_keys"] == counts["plain_keys"]


_CONDITIONS = ("Index Cond", "Recheck Cond", "Filter")


def _memory_reads(node: dict[str, object]) -> list[list[str]]:
    """Per scan of the memory rows in the plan (a node with a condition on
    'sender-key-memory'), the conditions it and the nodes above it within the same relation
    scan apply (a Bitmap Heap Scan filters what its Bitmap Index Scan found)."""

    def walk(n: dict[str, object], above: list[str]) -> list[list[str]]:
        here = [str(n[c]) for c in _CONDITIONS if c in n]
        children = n.get("Plans") or []
        assert isinstance(children, list)
        scan = str(n.get("Node Type", "")).endswith("Scan")
        reads = [[*above, *here]] if scan and any("sender-key-memory" in c for c in here) else []
        # Conditions carry down only from a bitmap heap scan to its index scans.
        carried = [*above, *here] if n.get("Node Type") == "Bitmap Heap Scan" else []
        return reads + [r for child in children for r in walk(child, carried)]

    return walk(node, [])


def test_measuring_pass_bounds_its_memory_rows_by_the_tables_tenants(
    pg: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the primary key led by the tenant and key-type columns, the memory rows are asked
    for per tenant (the tenants found by a walk of that index), so they can be read as one
    range of it per tenant, with the same figures (every tenant's memory rows are found: 30
    kept). A condition on the key type alone, the key's second column, reads the whole index
    on PostgreSQL before 18 (docs/performance.md)."""
    passes = _dry_runs_of_both(pg, monkeypatch)
    reads = {}
    with pg.connect() as conn:
        for p in passes:
            reads[p[0].name] = _memory_reads(_pass_plan(conn, p))
    for name in ("plain_keys", "whatsapp_keys"):
        assert reads[name], name
        for conds in reads[name]:
            assert any("company_id = ANY" in c for c in conds), (name, conds)


def test_sender_key_lookup_reads_the_whole_table_when_partitioned_by_key_type(
    pg: PgSchema,
) -> None:
    """The memory rows may sit in another leaf than the sender keys (here: LIST by key type): a
    batch on the sender keys' leaf still sees them, so our own sender key stays."""
    with pg.connect() as conn:
        conn.execute(reference_schema(partition_by="LIST (key_type)"))
        conn.execute(
            """
            CREATE TABLE keys_sk PARTITION OF whatsapp_keys FOR VALUES IN ('sender-key');
            CREATE TABLE keys_skm PARTITION OF whatsapp_keys FOR VALUES IN ('sender-key-memory');
            CREATE TABLE keys_other PARTITION OF whatsapp_keys DEFAULT;
            """
        )
    pg.add_auth({"a": baileys_creds(1, 1)})
    ours = f"g1@g.us::{ME_LID}_1::12"  # its group's memory row is fresh: still sending
    ours_alone = f"g3@g.us::{ME_LID}_1::12"  # no memory row: goes
    theirs = "g1@g.us::777_1::0"  # another member's key: goes
    pg.insert_keys(
        [
            KeyRow("a", "sender-key", ours, 60),
            KeyRow("a", "sender-key", ours_alone, 60),
            KeyRow("a", "sender-key", theirs, 60),
            KeyRow("a", "sender-key-memory", "g1@g.us", 2),
        ]
    )
    dry = run_cleanup(pg.settings(**NO_GUARD), DRY)
    report = run_cleanup(pg.settings(**NO_GUARD), FORCE)
    assert report.status == "completed", report.reason
    left = {k for c, t, k in pg.key_set() if t == "sender-key"}
    assert left == {ours}
    assert report.deleted == dry.eligible == 2


def test_encoded_table_partitioned_by_key_reads_creds_from_another_leaf(pg: PgSchema) -> None:
    """Without a timestamp, each batch re-reads the session's creds row (docs/layouts.md); the
    creds row sits in one leaf of 8 (HASH by key), the pre-keys in all of them."""
    layout = Layout()
    with pg.connect() as conn:
        conn.execute(
            "CREATE TABLE auth_keys (session_id text NOT NULL, key text NOT NULL, "
            "value jsonb NOT NULL, PRIMARY KEY (session_id, key)) PARTITION BY HASH (key)"
        )
        for i in range(8):
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} PARTITION OF auth_keys "
                    "FOR VALUES WITH (MODULUS 8, REMAINDER {})"
                ).format(sql.Identifier(f"auth_keys_{i}"), sql.Literal(i))
            )
    add_creds(pg, layout, {"s1": baileys_creds(2101, 2001)})
    insert(pg, layout, "s1", [f"pre-key-{i}" for i in range(1, 2101)])
    report = run_cleanup(pg.settings(**layout.env(CLEANUP_BATCH_SIZE="50")), FORCE)
    assert report.status == "completed", report.reason
    left = {k for s, k in keys_left(pg, layout) if k.startswith("pre-key-")}
    assert left == {f"pre-key-{i}" for i in range(1001, 2101)}
    assert report.deleted == 1000


@pytest.mark.parametrize("named", ["keys_sk", "keys_c1"])
def test_a_partition_named_as_the_target_is_refused_naming_its_root(
    pg: PgSchema, named: str
) -> None:
    """A leaf (or a sub-partitioned partition) as CLEANUP_TABLE would be read as a table of its
    own: its lookups would miss the memory and creds rows in the other partitions (here our
    own sender key's memory row), and a run on the root would not exclude it. Refused, with the
    table to name instead; nothing is deleted."""
    with pg.connect() as conn:
        conn.execute(reference_schema(partition_by="LIST (key_type)"))
        conn.execute(
            """
            CREATE TABLE keys_sk PARTITION OF whatsapp_keys FOR VALUES IN ('sender-key');
            CREATE TABLE keys_c1 PARTITION OF whatsapp_keys FOR VALUES IN ('session')
              PARTITION BY HASH (key_id);
            CREATE TABLE keys_c1_a PARTITION OF keys_c1 FOR VALUES WITH (MODULUS 1, REMAINDER 0);
            CREATE TABLE keys_other PARTITION OF whatsapp_keys DEFAULT;
            """
        )
    pg.add_auth({"a": baileys_creds(1, 1)})
    ours = f"g1@g.us::{ME_LID}_1::12"
    rows = [
        KeyRow("a", "sender-key", ours, 60),
        KeyRow("a", "sender-key-memory", "g1@g.us", 2),  # still sending to g1
        KeyRow("a", "session", "5599.0", 60),
    ]
    pg.insert_keys(rows)
    settings = pg.settings(CLEANUP_TABLE=named, **NO_GUARD)
    with pytest.raises(
        ConfigError,
        match=rf"refusing \S*{named}: it is a partition of \S*whatsapp_keys; name that table "
        r"in CLEANUP_TABLE",
    ):
        run_cleanup(settings, FORCE)
    assert pg.key_set() == {r.ident for r in rows}
