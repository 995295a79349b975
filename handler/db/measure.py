"""The measuring pass (one scan: per key type and tenant, the keys, their ages and what each
rule takes), the table's sizes, the auth table's reads, and the dry run's listing."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.rows import class_row, dict_row

from handler.db.catalog import Conn, fetch_one
from handler.db.predicates import (
    FIRST_TIMESTAMP,
    LAST_TIMESTAMP,
    aged,
    applies_ttl,
    column_ref,
    creds_hash,
    eligible_predicate,
    encoded_session,
    expired,
    in_range,
    key_type_text,
    lifecycle_branches,
    lifecycle_case,
    listing_columns,
    measures_orphans,
    memory_join,
    no_auth_row,
    policy_params,
    prekey_ids,
    prekeys_due,
    tenant_expr,
    tenant_ref,
    timestamp_expr,
)
from handler.domain import (
    AuthTable,
    KeepReason,
    ListedKey,
    Listing,
    Measurement,
    Orphans,
    Policy,
    Sizes,
    Target,
    TenantCounts,
    TypeCounts,
)
from handler.errors import CleanupError

# The name a partitioned table's rows go by in the measuring pass (see _source).
PARTITIONED_ROWS = "kc_t"


def sizes(conn: Conn, target: Target) -> Sizes:
    """The table's sizes and its heap's pages; of a partitioned table, its leaves' sums (the
    parent has no storage of its own)."""
    if target.partitioned:
        with conn.cursor(row_factory=class_row(Sizes)) as cur:
            return fetch_one(
                cur.execute(
                    """
                    SELECT coalesce(sum(pg_table_size(relid)), 0)::bigint AS table_bytes,
                           coalesce(sum(pg_indexes_size(relid)), 0)::bigint AS index_bytes,
                           coalesce(sum(pg_total_relation_size(relid)), 0)::bigint AS total_bytes,
                           coalesce(sum(pg_relation_size(relid)), 0)::bigint
                             / current_setting('block_size')::int AS pages
                    FROM pg_partition_tree(%(oid)s::regclass) WHERE isleaf
                    """,
                    {"oid": target.oid},
                )
            )
    with conn.cursor(row_factory=class_row(Sizes)) as cur:
        return fetch_one(
            cur.execute(
                """
                SELECT pg_table_size(%(oid)s) AS table_bytes,
                       pg_indexes_size(%(oid)s) AS index_bytes,
                       pg_total_relation_size(%(oid)s) AS total_bytes,
                       pg_relation_size(%(oid)s) / current_setting('block_size')::int AS pages
                """,
                {"oid": target.oid},
            )
        )


@dataclass(frozen=True)
class _Pass:
    """What one measuring pass counts: its rules, and the distinct edges each row is compared
    with (bucket edges, cutoffs, the orphan grace cutoff), by index (column n<i>, param e<i>)."""

    target: Target
    policy: Policy
    ttl: bool  # the TTL rule applies
    orphans: Orphans | None  # the orphan rule is measured
    by_tenant: bool
    grace: datetime  # the orphan grace cutoff (the age cutoff without the rule)
    cutoffs: dict[str, datetime]  # per-type cutoffs of unprotected types
    distinct: list[datetime]
    reasons: list[KeepReason]  # the lifecycle's reasons, by code 1..n (column k<code>)
    # Per code 1..n: its key type, its place among that type's reasons (0-based) and how many
    # the type has (see KEPT_BITS).
    slots: list[tuple[str, int, int]]
    # The resume point: per relation (oid), the first page not in the head (handler/resume.py);
    # empty when the run does not resume.
    heads: Mapping[int, int]

    @property
    def ts(self) -> sql.Composable:
        return timestamp_expr(self.target)

    def col(self, prefix: str, edge: datetime) -> sql.Composable:
        return sql.Identifier(f"{prefix}{self.distinct.index(edge)}")

    def at(self, prefix: str, pick: Callable[[datetime], datetime]) -> sql.Composable:
        """Per group, the `prefix` count at its own edge: pick(its key type's cutoff)."""
        default = self.col(prefix, pick(self.policy.cutoff))
        if not self.target.has_key_types or not self.cutoffs:
            return default
        return sql.SQL("CASE kt {whens} ELSE {default} END").format(
            whens=sql.SQL(" ").join(
                sql.SQL("WHEN {} THEN {}").format(sql.Literal(t), self.col(prefix, pick(c)))
                for t, c in self.cutoffs.items()
            ),
            default=default,
        )

    def lower(self, cutoff: datetime) -> datetime:
        return min(cutoff, self.grace)


def _plan(
    target: Target,
    edges: Sequence[datetime],
    policy: Policy,
    by_tenant: bool,
    heads: Mapping[int, int],
) -> _Pass:
    orphans = policy.orphans if measures_orphans(target, policy) else None
    grace = policy.orphans.cutoff if policy.orphans is not None else policy.cutoff
    cutoffs = {t: c for t, c in policy.type_cutoffs.items() if t not in policy.protected}
    distinct = sorted(
        {
            *edges,
            policy.cutoff,
            grace,
            *cutoffs.values(),
            *(min(c, grace) for c in cutoffs.values()),
        }
        | {min(policy.cutoff, grace)}
    )
    branches = lifecycle_branches(target, policy)
    return _Pass(
        target=target,
        policy=policy,
        ttl=applies_ttl(target, policy),
        orphans=orphans,
        by_tenant=(by_tenant or orphans is not None) and target.has_tenant,
        grace=grace,
        cutoffs=cutoffs,
        distinct=distinct,
        reasons=[r for conds in branches.values() for r, _ in conds],
        slots=[(t, i, len(conds)) for t, conds in branches.items() for i in range(len(conds))],
        heads={oid: block for oid, block in heads.items() if block > 0},
    )


def _head(p: _Pass) -> sql.Composable:
    """TRUE for a row in the head: before its relation's resume point (a ctid is only
    meaningful in its relation: of a partitioned table, tableoid names the leaf). Qualified:
    the memory-row join (`memory_join`) is in the same FROM."""

    def before(block: int) -> sql.Composable:
        return sql.SQL("{ctid} < {b}::tid").format(
            ctid=column_ref(p.target, "ctid"), b=sql.Literal(f"({block},0)")
        )

    if not p.target.partitioned:
        return before(p.heads.get(p.target.oid, 0))
    return sql.SQL("CASE {tableoid} {whens} ELSE false END").format(
        tableoid=column_ref(p.target, "tableoid"),
        whens=sql.SQL(" ").join(
            sql.SQL("WHEN {}::oid THEN {}").format(sql.Literal(oid), before(block))
            for oid, block in sorted(p.heads.items())
        ),
    )


def _newer(p: _Pass, prefix: str, cond: sql.Composable) -> list[sql.Composable]:
    """Per edge, the rows (meeting `cond`) with an in-range timestamp at or after it."""
    return [
        # An edge is finite, so `ts >= edge AND ts < LAST` is "in range and newer".
        sql.SQL("count(*) FILTER (WHERE {c}{ts} >= {e} AND {ts} < {last}) AS {name}").format(
            c=cond,
            ts=p.ts,
            e=sql.Placeholder(f"e{i}"),
            last=LAST_TIMESTAMP,
            name=sql.Identifier(f"{prefix}{i}"),
        )
        for i in range(len(p.distinct))
    ]


def _group_counts(p: _Pass) -> list[sql.Composable]:
    """Per group (key type, tenant): the keys, their in-range extremes, the newer-than counts,
    the keys touched since the grace cutoff, and the expired keys' counts (the TTL rule)."""
    ts, ok = p.ts, in_range(p.ts)
    counts = [
        sql.SQL("count(*) AS keys"),
        sql.SQL("count(*) FILTER (WHERE {ok}) AS with_ts").format(ok=ok),
        sql.SQL("min({ts}) FILTER (WHERE {ok}) AS oldest").format(ts=ts, ok=ok),
        sql.SQL("max({ts}) FILTER (WHERE {ok}) AS newest").format(ts=ts, ok=ok),
        sql.SQL("count({ts}) - count(*) FILTER (WHERE {ok}) AS oor").format(ts=ts, ok=ok),
        *_newer(p, "n", sql.SQL("")),
        sql.SQL("count(*) FILTER (WHERE {ts} >= %(orphan_cutoff)s) AS fresh").format(ts=ts)
        if p.orphans is not None
        else sql.SQL("0 AS fresh"),
    ]
    if not p.ttl:
        return [
            *counts,
            sql.SQL("0 AS x"),
            sql.SQL("0 AS xts"),
            *(sql.SQL("0 AS {}").format(sql.Identifier(f"xn{i}")) for i in range(len(p.distinct))),
        ]
    x = expired(p.target, p.policy)
    return [
        *counts,
        sql.SQL("count(*) FILTER (WHERE {x}) AS x").format(x=x),
        sql.SQL("count(*) FILTER (WHERE {x} AND {ok}) AS xts").format(x=x, ok=ok),
        *_newer(p, "xn", sql.SQL("{} AND ").format(x)),
    ]


# The lifecycle's kept keys are counted by one sum per group (ks), each row adding
# 2^(KEPT_BITS * i) for the i-th reason (0-based) of its key type to keep it: a key type has at
# most 3 reasons, and a group (one key type, one tenant) holds one type's keys, so each reason
# has its own bits. PostgreSQL sums bigint exactly (into numeric). Fields below the top one
# are exact while a group holds fewer than 2^KEPT_BITS keys; `measure` refuses a larger one.
KEPT_BITS = 31
MAX_GROUP_KEYS = 2**KEPT_BITS - 1


def _weight(index: int) -> sql.Composable:
    return sql.SQL("{}::bigint").format(sql.Literal(2 ** (KEPT_BITS * index)))


def _inner_kept(p: _Pass) -> list[sql.Composable]:
    """Per group, counted in the scan: the packed kept keys (ks, see KEPT_BITS); of all kept,
    the expired ones (lkx, for the TTL figure) and the ones quiet since the grace cutoff (lkq,
    for the orphan rule's union). lkx and lkq read kc again, so only when their rule is on."""
    if not p.reasons:
        return [sql.SQL("0 AS ks"), sql.SQL("0 AS lkx"), sql.SQL("0 AS lkq")]
    lkx = (
        sql.SQL("count(*) FILTER (WHERE kc > 0 AND {x}) AS lkx").format(
            x=expired(p.target, p.policy)
        )
        if p.ttl
        else sql.SQL("0 AS lkx")
    )
    lkq = (
        sql.SQL("count(*) FILTER (WHERE kc > 0) AS lkq")
        if p.orphans is not None and p.target.timestamp_column is None
        else sql.SQL(
            "count(*) FILTER (WHERE kc > 0 AND {ts} >= {first} AND {ts} < %(orphan_cutoff)s) AS lkq"
        ).format(ts=p.ts, first=FIRST_TIMESTAMP)
        if p.orphans is not None
        else sql.SQL("0 AS lkq")
    )
    return [sql.SQL("coalesce(sum(kc), 0) AS ks"), lkx, lkq]


def _kept_counts(p: _Pass) -> list[sql.Composable]:
    """Per group and lifecycle reason, the kept keys (k<code>), unpacked from ks."""
    kept: list[sql.Composable] = []
    for code, (key_type, index, count) in enumerate(p.slots, start=1):
        field = sql.SQL("div(ks, {w})").format(w=_weight(index))
        if index < count - 1:
            field = sql.SQL("mod({f}, {w})").format(f=field, w=_weight(1))
        kept.append(
            sql.SQL("CASE WHEN kt = {t} THEN {f} ELSE 0 END::bigint AS {name}").format(
                t=sql.Literal(key_type), f=field, name=sql.Identifier(f"k{code}")
            )
        )
    return kept


def _due(target: Target, policy: Policy) -> sql.Composable:
    """TRUE for a row the age or TTL rule would take (before the lifecycle keeps it)."""
    return sql.SQL("({} OR {})").format(aged(target, policy), expired(target, policy))


def _source(p: _Pass) -> sql.Composable:
    """The rows the pass reads. With the key lifecycle: each row's reason to be kept (kc: its
    weight, see KEPT_BITS; 0: none), decided once, and only for the rows the age or TTL rule
    would take (in steady state a day's worth: the rest pay one comparison). One sum reads it:
    PostgreSQL inlines kc into every aggregate that names it, so a count per reason would
    decide it once per reason.

    With a key-type column, a sender key's memory row is read from a join (`memory_join`), so
    the whole pass is one that PostgreSQL can run in parallel workers, as it runs the plain
    scan of the same columns; a lookup per key (a correlated subquery) would keep it in one
    process. The encoded layout keeps the lookup."""
    target = p.target
    branches = lifecycle_branches(target, p.policy)
    if not branches:
        return target.ident
    table: sql.Composable = target.ident
    # The head flag (resuming a drain): computed where ctid and tableoid are still visible.
    head = sql.SQL(", {} AS hd").format(_head(p)) if p.heads else sql.SQL("")
    # Only the rows the age or TTL rule would take are given a reason to be kept (kc).
    due = _due(target, p.policy)
    join = memory_join(target, due)
    if target.partitioned and join is None:
        # PostgreSQL computes a partitioned table's projection in each leaf's scan, and with it
        # the sender-key rule's hashed subquery over the whole table: once per leaf (7 x
        # ~70 ms at 1M rows in 8 leaves). Read the rows through a subquery instead: the
        # projection, and the hash, then happen once, above the leaves.
        table = sql.SQL("(SELECT *{head} FROM {t} OFFSET 0) AS {alias}").format(
            head=head, t=target.ident, alias=sql.Identifier(PARTITIONED_ROWS)
        )
        head = sql.SQL(", hd") if p.heads else sql.SQL("")
        target = replace(target, row_alias=PARTITIONED_ROWS)
        branches = lifecycle_branches(target, p.policy)
        due = _due(target, p.policy)
    elif join is not None:
        table = sql.Composed([table, join[0]])
        branches = lifecycle_branches(target, p.policy, join[1])
    by_type = lifecycle_case(
        target,
        branches,
        lambda conds: sql.SQL("CASE {} ELSE 0 END").format(
            sql.SQL(" ").join(
                sql.SQL("WHEN {} THEN {}").format(c, _weight(i)) for i, (_, c) in enumerate(conds)
            )
        ),
        sql.SQL("0"),
    )
    # Only the columns the pass reads: `*` would carry every value along (~300 bytes a row).
    used = (
        target.encoded.key_column if target.encoded is not None else target.key_type_column,
        target.timestamp_column,
        target.tenant_column if p.by_tenant else None,
        target.expires_column if p.ttl else None,
    )
    return sql.SQL(
        "(SELECT {cols}, CASE WHEN {due} THEN {by_type} ELSE 0 END AS kc{head} "
        "FROM {table}) AS kc_rows"
    ).format(
        head=head,
        cols=sql.SQL(", ").join(
            column_ref(target, c) for c in dict.fromkeys(used) if c is not None
        ),
        due=due,
        by_type=by_type,
        table=table,
    )


def _derived(p: _Pass) -> sql.Composable:  # a declared SQL statement builder
    """Per group: p = protected, noauth / member (the orphan rule's tenant facts), tfresh = the
    tenant's fresh keys, lk = kept by the lifecycle, u = aged or expired, q = quiet since the
    grace cutoff (a tenant's key), qu = quiet and (aged or expired). Expired rows are x; those
    with an in-range timestamp older than an edge are xts - xn(edge)."""
    noauth: sql.Composable = sql.SQL("false")
    member: sql.Composable = sql.SQL("false")
    if p.orphans is not None:
        noauth = sql.SQL("(g.tn IS NOT NULL AND {})").format(
            no_auth_row(p.target, p.orphans, sql.SQL("g.tn"))
        )
        member = sql.SQL("coalesce(g.tn = ANY (%(orphan_tenants)s), false)")
    protected = (
        sql.SQL("coalesce(kt = ANY (%(protected)s::text[]), false)")
        if p.target.has_key_types
        else sql.SQL("false")
    )
    kept_sum = sql.SQL(" + ").join(
        sql.Identifier(f"k{code}") for code in range(1, len(p.reasons) + 1)
    )
    if p.target.timestamp_column is None:
        u = _due_untimed(p)
        q: sql.Composable = sql.SQL("CASE WHEN tn IS NULL THEN 0 ELSE keys END")
        qu: sql.Composable = sql.SQL("CASE WHEN tn IS NULL THEN 0 ELSE {} END").format(u)
        # No key's last use is known: no tenant is fresh, every key of a tenant is quiet.
        tfresh: sql.Composable = sql.SQL("0::numeric")
    else:
        u = sql.SQL("with_ts - {n_cut} + x - (xts - {xn_cut})").format(
            n_cut=p.at("n", lambda c: c), xn_cut=p.at("xn", lambda c: c)
        )
        q = sql.SQL("CASE WHEN tn IS NULL THEN 0 ELSE with_ts - {n_grace} END").format(
            n_grace=p.col("n", p.grace)
        )
        qu = sql.SQL(
            "CASE WHEN tn IS NULL THEN 0 "
            "ELSE (with_ts - {n_low}) + (xts - {xn_grace}) - (xts - {xn_low}) END"
        ).format(
            n_low=p.at("n", p.lower), xn_grace=p.col("xn", p.grace), xn_low=p.at("xn", p.lower)
        )
        tfresh = sql.SQL("sum(fresh) OVER (PARTITION BY tn)")
    return sql.SQL(
        """
        SELECT g.*, {protected} AS p, {noauth} AS noauth, {member} AS member,
               {tfresh} AS tfresh, {kept_sum} AS lk, {u} AS u, {q} AS q, {qu} AS qu
        FROM g
        """
    ).format(
        protected=protected,
        noauth=noauth,
        member=member,
        tfresh=tfresh,
        kept_sum=kept_sum if p.reasons else sql.SQL("0"),
        u=_if_known(p, u),
        q=_if_known(p, q),
        qu=_if_known(p, qu),
    )


def _if_known(p: _Pass, figure: sql.Composable) -> sql.Composable:
    """A figure of the rules, 0 for a group of encoded keys of no known type: no rule takes
    those (their tenant facts still count: a fresh one keeps its tenant)."""
    if p.target.encoded is None:
        return figure
    return sql.SQL("CASE WHEN kt IS NULL THEN 0 ELSE {} END").format(figure)


def _due_untimed(p: _Pass) -> sql.Composable:
    """Without a timestamp no key is aged but pre-keys, when the pre-key window applies (all of
    them are then due, and the window keeps what Baileys may need); expired keys (a TTL column)
    are due too."""
    if prekeys_due(p.target, p.policy):
        return sql.SQL("CASE WHEN kt = 'pre-key' THEN keys ELSE x END")
    return sql.SQL("x")


def _totals(p: _Pass) -> list[sql.Composable]:
    """Per key type (and per tenant), the groups summed into each figure, named as read."""

    def total(expr: str, name: str) -> sql.Composable:
        return sql.SQL("sum(" + expr + ")::bigint AS {}").format(sql.Identifier(name))

    edges = range(len(p.distinct))
    return [
        total("keys", "keys"),
        total("with_ts", "with_ts"),
        sql.SQL("min(oldest) AS oldest"),
        sql.SQL("max(newest) AS newest"),
        total("oor", "oor"),
        *(total(f"n{i}", f"n{i}") for i in edges),
        total("CASE WHEN p THEN 0 ELSE u - lk END", "eligible"),  # by age or TTL
        total("CASE WHEN p THEN u ELSE 0 END", "protected"),  # protected from them
        total("CASE WHEN p THEN 0 ELSE x - lkx END", "expired"),  # less what Baileys needs
        total("CASE WHEN lost THEN q ELSE 0 END", "orphaned"),
        total("CASE WHEN NOT lost THEN 0 WHEN p THEN q ELSE q - (qu - lkq) END", "orphan_extra"),
        total("CASE WHEN lost AND p THEN qu ELSE 0 END", "protected_orphaned"),
        # The same two figures in the head (before the resume point).
        total("CASE WHEN NOT hd OR p THEN 0 ELSE u - lk END", "head_eligible"),
        total(
            "CASE WHEN NOT hd OR NOT lost THEN 0 WHEN p THEN q ELSE q - (qu - lkq) END",
            "head_orphan_extra",
        ),
        _largest_packed_group(p),
        sql.SQL("coalesce(bool_and(noauth), false) AS without_auth"),
        sql.SQL("coalesce(bool_or(lost), false) AS confirmed"),
        total("fresh", "fresh"),
        total("CASE WHEN p THEN 0 ELSE xts END", "xts"),
        *(total(f"CASE WHEN p THEN 0 ELSE xn{i} END", f"xn{i}") for i in edges),
        # Kept by the lifecycle: not in a tenant the orphan rule takes (those keys go with it).
        *(
            total(f"CASE WHEN p OR lost THEN 0 ELSE k{code} END", f"k{code}")
            for code in range(1, len(p.reasons) + 1)
        ),
    ]


def _largest_packed_group(p: _Pass) -> sql.Composable:
    """The most keys in one group of a key type with more than one reason to keep a key (the
    packed fields below the top one are exact only below 2^KEPT_BITS keys)."""
    packed = sorted({key_type for key_type, _, count in p.slots if count > 1})
    if not packed:
        return sql.SQL("NULL::bigint AS largest_group")
    return sql.SQL("max(keys) FILTER (WHERE kt = ANY ({types}::text[])) AS largest_group").format(
        types=sql.Literal(packed)
    )


def _query(p: _Pass) -> sql.Composed:  # a declared SQL statement builder
    """Groups by key type, tenant and head (g0), with the kept counts unpacked (g), their
    derived figures (d), and the sums per key type
    and, with `by_tenant`, per tenant (GROUPING SETS; is_tenant tells the rows apart)."""
    if p.by_tenant:
        # Unqualified: the rows may come from the kc_rows subquery. In its own type: the auth
        # table and the measured set are compared with it as each DELETE compares them.
        tenant: sql.Composable = tenant_expr(p.target, False)
        head = sql.SQL("kt AS key_type, tn::text AS tenant, GROUPING(kt) AS is_tenant")
        group = sql.SQL("GROUPING SETS ((kt), (tn))")
    else:
        tenant = sql.SQL("NULL::text")
        head = sql.SQL("kt AS key_type, NULL::text AS tenant, 0 AS is_tenant")
        group = sql.SQL("kt")
    return sql.SQL(
        """
        WITH g0 AS (
          SELECT {kt} AS kt, {tenant} AS tn, {hd} AS hd, {inner} FROM {source} GROUP BY 1, 2, 3
        ), g AS (SELECT g0.*{kept} FROM g0), d0 AS ({derived}),
        -- Orphaned: no auth row, in the set, and no key of the tenant touched in the grace.
        d AS (SELECT d0.*, (noauth AND member AND tfresh = 0) AS lost FROM d0)
        SELECT {head}, {outer} FROM d GROUP BY {group}
        """
    ).format(
        kt=key_type_text(p.target),
        tenant=tenant,
        # In the kc_rows subquery when there is one (a ctid is not visible outside it).
        hd=(sql.SQL("hd") if lifecycle_branches(p.target, p.policy) else _head(p))
        if p.heads
        else sql.SQL("false"),
        inner=sql.SQL(", ").join([*_group_counts(p), *_inner_kept(p)]),
        kept=sql.SQL("").join(sql.SQL(", {}").format(k) for k in _kept_counts(p)),
        source=_source(p),
        derived=_derived(p),
        head=head,
        outer=sql.SQL(", ").join(_totals(p)),
        group=group,
    )


def _by_edge(p: _Pass, row: dict[str, Any], prefix: str) -> dict[datetime, int]:
    return {edge: row[f"{prefix}{i}"] for i, edge in enumerate(p.distinct)}


def _type_counts(p: _Pass, row: dict[str, Any]) -> TypeCounts:
    return TypeCounts(
        key_type=row["key_type"],
        keys=row["keys"],
        with_timestamp=row["with_ts"],
        oldest=row["oldest"],
        newest=row["newest"],
        out_of_range=row["oor"],
        newer_than=_by_edge(p, row, "n"),
        eligible=row["eligible"],
        protected=row["protected"],
        expired=row["expired"],
        orphaned=row["orphaned"],
        orphan_extra=row["orphan_extra"],
        protected_orphaned=row["protected_orphaned"],
        expired_with_timestamp=row["xts"],
        expired_newer_than=_by_edge(p, row, "xn") if p.ttl else {},
        # prekey_window without the pre-keys of tenants without creds: those have their own code.
        kept={r: row[f"k{code}"] for code, r in enumerate(p.reasons, start=1)},
        head_eligible=row["head_eligible"],
        head_orphan_extra=row["head_orphan_extra"],
    )


def _tenant_counts(row: dict[str, Any]) -> TenantCounts:
    return TenantCounts(
        tenant=row["tenant"],
        keys=row["keys"],
        eligible=row["eligible"],
        orphaned=row["orphaned"],
        orphan_extra=row["orphan_extra"],
        without_auth=row["without_auth"],
        fresh=row["fresh"],
        confirmed=row["confirmed"],
    )


def _statement(p: _Pass) -> tuple[sql.Composed, dict[str, Any]]:
    return _query(p), policy_params(p.policy) | {f"e{i}": edge for i, edge in enumerate(p.distinct)}


def statement(
    target: Target, edges: Sequence[datetime], policy: Policy, *, by_tenant: bool = False
) -> tuple[sql.Composed, dict[str, Any]]:
    """The measuring pass's statement and parameters, as `measure` runs them (for EXPLAIN)."""
    return _statement(_plan(target, edges, policy, by_tenant, {}))


def measure(
    conn: Conn,
    target: Target,
    edges: Sequence[datetime],
    policy: Policy,
    *,
    by_tenant: bool = False,
    heads: Mapping[int, int] | None = None,
) -> Measurement:
    """One pass over the table: per key type (and per tenant), the keys, how many are newer
    than each edge, and the keys each rule makes eligible.

    Each row costs one comparison per distinct edge (bucket edges, cutoffs, the orphan grace
    cutoff), and with the TTL rule as many on its expiry: the rows are grouped by key type and
    tenant with those counts, and every rule's figures follow per group from them (a key type
    has one cutoff and is protected or not; a tenant has an auth row or not). So the auth table
    is joined to the groups, not to the rows, and no per-row policy expression runs. The
    groups are then summed per key type and per tenant (GROUPING SETS). Out-of-range timestamps
    are counted apart and left out of every other figure (an infinite `newest` could not even
    be loaded). `heads`: a resume point (relation oid -> page); the same pass then counts the
    eligible keys before it apart (a third grouping column), for the loop to skip that head
    when it holds none.
    """
    p = _plan(target, edges, policy, by_tenant, heads or {})
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        # The memory rows are a few ranges of an index (`_per_tenant`): the planner estimates
        # them below min_parallel_index_scan_size (512kB), and without a parallel index scan
        # each process builds its own hash of them (3 x 29 ms at 1M keys, 2 cores) where the
        # workers could share one (14 ms; docs/performance.md). For this statement only.
        cur.execute("SET LOCAL min_parallel_index_scan_size = 0")
        rows = cur.execute(*_statement(p)).fetchall()
    if any((r["largest_group"] or 0) > MAX_GROUP_KEYS for r in rows):
        raise CleanupError(
            f"{target.qualified} holds more than {MAX_GROUP_KEYS:,} keys of one type for one "
            "tenant: the measuring pass cannot count them exactly (nothing was deleted)"
        )
    return Measurement(
        types=[_type_counts(p, r) for r in rows if not r["is_tenant"]],
        tenants=[_tenant_counts(r) for r in rows if r["is_tenant"]],
    )


def auth_has_tenants(conn: Conn, target: Target, orphans: Orphans) -> bool:
    """True when the auth table holds a row with a tenant; raises psycopg.Error when it cannot be
    read, has no tenant column, or its tenant column cannot be compared with the key table's.

    The second subquery is planned, never run (LIMIT 0): planning is what checks the comparison.
    Encoded: the key table itself holds a creds row of some session.
    """
    if target.encoded is not None:
        probe = sql.SQL("SELECT EXISTS (SELECT 1 FROM {t} WHERE {creds}) AS has_tenants").format(
            t=target.ident, creds=creds_rows(target)
        )
        with conn.cursor(row_factory=dict_row) as cur:
            return bool(fetch_one(cur.execute(probe))["has_tenants"])
    col = sql.Identifier(orphans.tenant_column or target.tenant_column or "")
    query = sql.SQL(
        """
        SELECT EXISTS (SELECT 1 FROM {auth} WHERE {col} IS NOT NULL) AS has_tenants,
               (SELECT count(*) FROM (
                  SELECT 1 FROM {keys} WHERE EXISTS (
                    SELECT 1 FROM {auth} AS kc_auth WHERE kc_auth.{col} = {tenant})
                  LIMIT 0) AS planned) AS planned
        """
    ).format(auth=orphans.ident, col=col, keys=target.ident, tenant=tenant_ref(target))
    with conn.cursor(row_factory=dict_row) as cur:
        return bool(fetch_one(cur.execute(query))["has_tenants"])


# Creds column types read as JSON in the database; text ones are parsed by the job.
JSON_TYPES = frozenset({"jsonb", "json"})
TEXT_TYPES = frozenset({"text", "character varying"})


def creds_rows(target: Target) -> sql.Composable:
    """Encoded: TRUE for a creds row (`creds`, or `<session><sep>creds`) of a non-empty session."""
    enc = target.encoded
    if enc is None:  # pragma: no cover - callers check
        raise ValueError("the target is not of the encoded layout")
    key = sql.SQL("{}::text").format(sql.Identifier(enc.key_column))
    if enc.separator is None:
        return sql.SQL("{key} = {creds}").format(key=key, creds=sql.Literal(enc.creds_key))
    suffix = enc.separator + enc.creds_key
    # The session is what precedes the FIRST separator, as in every other statement.
    return sql.SQL(
        "(right({key}, {n}) = {suffix} AND strpos({key}, {sep}) = length({key}) - {n} + 1 "
        "AND length({key}) > {n})"
    ).format(
        key=key,
        n=sql.Literal(len(suffix)),
        suffix=sql.Literal(suffix),
        sep=sql.Literal(enc.separator),
    )


def read_encoded_creds(conn: Conn, target: Target) -> list[tuple[str | None, object, str]]:
    """(session, creds) per creds row of an encoded table: its value read as read_creds reads
    a creds column. A table without sessions is one session, named ''."""
    enc = target.encoded
    if enc is None:  # pragma: no cover - callers check
        raise ValueError("the target is not of the encoded layout")
    if target.tenant_column is not None:
        tenant: sql.Composable = sql.SQL("{}::text").format(sql.Identifier(target.tenant_column))
    elif enc.separator is not None:
        tenant = encoded_session(target, False)
    else:
        tenant = sql.SQL("''::text")
    query = sql.SQL(
        "SELECT {tenant} AS tenant, {value} AS creds, {hash} AS hash FROM {t} WHERE {creds}"
    ).format(
        tenant=tenant,
        value=_creds_value(enc.value_column, enc.value_type),
        hash=creds_hash(sql.Identifier(enc.value_column)),
        t=target.ident,
        creds=creds_rows(target),
    )
    with conn.cursor(row_factory=dict_row) as cur:
        return [(r["tenant"], r["creds"], r["hash"]) for r in cur.execute(query).fetchall()]


def _creds_value(creds_column: str, kind: str, path: tuple[str, ...] = ()) -> sql.Composable:
    """Only the pre-key counters and `me` of a JSON object (the rest of the creds, private keys
    included, never leaves the database), or the raw value when it is not an object (a JSON
    string holding it, or text) for the caller to parse. `path` (CLEANUP_CREDS_PATH): where
    the creds sit inside a JSON column (a text column's is followed by the caller)."""
    creds: sql.Composable = sql.Identifier(creds_column)
    if kind in JSON_TYPES:
        if path:
            creds = sql.SQL("({c}::jsonb #> {p}::text[])").format(
                c=creds, p=sql.Literal(list(path))
            )
        return sql.SQL(
            "CASE WHEN jsonb_typeof({c}::jsonb) = 'object' THEN jsonb_build_object("
            "'nextPreKeyId', {c}::jsonb -> 'nextPreKeyId', "
            "'firstUnuploadedPreKeyId', {c}::jsonb -> 'firstUnuploadedPreKeyId', "
            "'me', jsonb_build_object('id', {c}::jsonb -> 'me' -> 'id', "
            "'lid', {c}::jsonb -> 'me' -> 'lid')) ELSE {c}::jsonb END"
        ).format(c=creds)
    return sql.SQL("{}::text").format(creds)


def read_creds(
    conn: Conn, auth: AuthTable, tenant_column: str, creds_column: str, path: tuple[str, ...] = ()
) -> list[tuple[str | None, object, str]]:
    """(tenant, creds) per auth row (see _creds_value)."""
    value = _creds_value(creds_column, auth.columns[creds_column], path)
    query = sql.SQL(
        "SELECT {tenant}::text AS tenant, {value} AS creds, {hash} AS hash FROM {auth}"
    ).format(
        tenant=sql.Identifier(tenant_column),
        value=value,
        hash=creds_hash(sql.Identifier(creds_column)),
        auth=auth.ident,
    )
    with conn.cursor(row_factory=dict_row) as cur:
        return [(r["tenant"], r["creds"], r["hash"]) for r in cur.execute(query).fetchall()]


def prekey_floors(
    conn: Conn, target: Target, firsts: Mapping[str, int], window: int
) -> dict[str, int]:
    """Per tenant (its firstUnuploadedPreKeyId in `firsts`): the lowest of the `window` highest
    pre-key ids the table holds below that id (all of them when it holds fewer).

    The server hands out the pool it was given; Baileys deletes a pre-key once a contact used
    it, and a retry receipt takes the next id for one contact without uploading it
    (messages-recv.ts sendRetryRequest -> getNextPreKeys(authState, 1)), which moves
    firstUnuploadedPreKeyId past the pool. So the ids still in the table below it, newest
    first, are the server's pool with the unused keys handed out directly: the window counts
    those, not ids. One scan of the pre-key rows; {} without key types."""
    if not firsts or not target.has_key_types:
        return {}
    query = sql.SQL(
        """
        SELECT tenant, min(k) AS floor FROM (
          SELECT u.tenant, x.k,
                 row_number() OVER (PARTITION BY u.tenant ORDER BY x.k DESC) AS rn
          FROM {ids} AS x
          JOIN unnest(%(tenants)s::text[], %(firsts)s::bigint[]) AS u(tenant, first)
            ON u.tenant = x.tn AND x.k < u.first
        ) AS ranked
        WHERE rn <= %(window)s GROUP BY tenant
        """
    ).format(ids=prekey_ids(target))
    params = {"tenants": list(firsts), "firsts": list(firsts.values()), "window": window}
    with conn.cursor(row_factory=dict_row) as cur:
        return {r["tenant"]: int(r["floor"]) for r in cur.execute(query, params).fetchall()}


def list_eligible(conn: Conn, target: Target, policy: Policy, now: datetime, limit: int) -> Listing:
    """The oldest `limit` eligible keys (what a live run would delete first by age)."""
    query = sql.SQL(
        "SELECT {cols} FROM {table} WHERE {eligible} ORDER BY {ts} LIMIT %(limit)s"
    ).format(
        cols=listing_columns(target),
        table=target.ident,
        eligible=eligible_predicate(target, policy),
        ts=timestamp_expr(target),
    )
    params = policy_params(policy) | {"now": now, "limit": limit}
    with conn.cursor(row_factory=class_row(ListedKey)) as cur:
        return cur.execute(query, params).fetchall()
