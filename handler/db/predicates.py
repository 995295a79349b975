"""The WHERE expressions: what "eligible" means in SQL (age, TTL, orphans, protection, the key
lifecycle's CASE), the policy's parameters, and the listing's columns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from handler.domain import (
    MAX_ID_DIGITS,
    Encoded,
    KeepReason,
    Lifecycle,
    Orphans,
    Policy,
    Target,
)
from handler.keyparse import LONGEST_FIRST

# Timestamps outside [FIRST, LAST) are "out of range": infinity, -infinity, BC dates and years
# past 9999. Python cannot load them (min/max would fail every run), and -infinity or a BC
# date would sort before any cutoff; such a row is counted apart and never deleted. The first
# day of year 1 is left out too, so that a zone conversion cannot step into year 0.
FIRST_TIMESTAMP = sql.SQL("'0001-01-02 00:00:00+00'::timestamptz")
LAST_TIMESTAMP = sql.SQL("'9999-12-31 00:00:00+00'::timestamptz")


def array_literal(values: Sequence[str]) -> str:
    """A PostgreSQL array literal of `values`, each element quoted. Passed as a str, psycopg
    sends it untyped, so the server reads it with the compared column's array type."""
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "{" + ",".join(quoted) + "}"


def policy_params(policy: Policy) -> dict[str, Any]:
    """The statement parameters the policy's expressions read (%(cutoff)s, %(kc_lo)s, ...)."""
    params: dict[str, Any] = {"cutoff": policy.cutoff, "protected": list(policy.protected)}
    if policy.lifecycle is not None:
        # Two maps rather than one of pairs: each row then costs one lookup per bound.
        windows = policy.lifecycle.windows
        params["kc_lo"] = Jsonb({t: w[0] for t, w in windows.items()})
        params["kc_hi"] = Jsonb({t: w[1] for t, w in windows.items()})
        params["kc_own"] = Jsonb({t: list(u) for t, u in policy.lifecycle.own_users.items()})
        params["kc_unknown"] = list(policy.lifecycle.unknown_own)
        if (recheck := policy.lifecycle.recheck) is not None:
            params["kc_sessions"] = list(recheck.hashes)
            params["kc_hashes"] = list(recheck.hashes.values())
    if policy.expires_now is not None:
        params["expires_now"] = policy.expires_now
    if policy.orphans is not None:
        params["orphan_cutoff"] = policy.orphans.cutoff
        params["orphan_tenants"] = array_literal(policy.orphans.tenants)
    for i, (key_type, cutoff) in enumerate(sorted(policy.type_cutoffs.items())):
        params[f"type_{i}"] = key_type
        params[f"type_cutoff_{i}"] = cutoff
    return params


def _instant(column: str, naive: bool, zone: str | None) -> sql.Composable:
    """A column's value as an instant (timestamptz).

    A `timestamp` column holds wall time in the application's zone: converting each row with
    AT TIME ZONE is exact across daylight-saving changes, where shifting the cutoff to wall
    time would be off by an hour for the repeated hour.
    """
    ident = sql.Identifier(column)
    if naive and zone:
        return sql.SQL("({} AT TIME ZONE {})").format(ident, sql.Literal(zone))
    return ident


def timestamp_expr(target: Target) -> sql.Composable:
    """The row's timestamp as an instant (timestamptz); NULL for a table without one."""
    if target.timestamp_column is None:
        return sql.SQL("NULL::timestamptz")
    return _instant(target.timestamp_column, target.naive_timestamp, target.timestamp_timezone)


def expires_expr(target: Target) -> sql.Composable:
    """The row's expiry as an instant; only for a target with a TTL column."""
    if target.expires_column is None:  # pragma: no cover - callers check
        raise ValueError("the target has no TTL column")
    return _instant(target.expires_column, target.naive_expires, target.timestamp_timezone)


def in_range(ts: sql.Composable) -> sql.Composable:
    """TRUE for a finite timestamp Python can load: not infinity, BC, or past year 9999."""
    return sql.SQL("({ts} >= {first} AND {ts} < {last})").format(
        ts=ts, first=FIRST_TIMESTAMP, last=LAST_TIMESTAMP
    )


def _ref(target: Target, column: str, qualified: bool) -> sql.Composable:
    """A key-table column, qualified by the table when it is compared inside a subquery."""
    if qualified:
        return column_ref(target, column)
    return sql.Identifier(column)


def _enc(target: Target) -> Encoded:
    if target.encoded is None:  # pragma: no cover - callers check
        raise ValueError("the target is not of the encoded layout")
    return target.encoded


def _encoded_rest(target: Target, qualified: bool) -> sql.Composable:
    """The key after its session prefix ("<type>-<id>"); NULL when the separator is missing.
    The session is what precedes the FIRST separator (handler/keyparse.py split_session)."""
    enc = _enc(target)
    key = sql.SQL("{}::text").format(_ref(target, enc.key_column, qualified))
    if enc.separator is None:
        return key
    return sql.SQL(
        "CASE WHEN strpos({k}, {sep}) > 0 THEN substr({k}, strpos({k}, {sep}) + {n}) END"
    ).format(k=key, sep=sql.Literal(enc.separator), n=sql.Literal(len(enc.separator)))


def encoded_session(target: Target, qualified: bool) -> sql.Composable:
    """The session prefix of an encoded key (NULL without the separator)."""
    enc = _enc(target)
    key = sql.SQL("{}::text").format(_ref(target, enc.key_column, qualified))
    return sql.SQL(
        "CASE WHEN strpos({k}, {sep}) > 0 THEN left({k}, strpos({k}, {sep}) - 1) END"
    ).format(k=key, sep=sql.Literal(enc.separator or ""))


def _encoded_type(target: Target, qualified: bool) -> sql.Composable:
    """The longest known Baileys type that, followed by "-", starts the key; else NULL (an
    unknown key, always kept). Longest first: `sender-key-memory-x` also starts with
    `sender-key-`. The Python twin is handler/keyparse.py key_type_of."""
    rest = _encoded_rest(target, qualified)
    return sql.SQL("(CASE {whens} END)").format(
        whens=sql.SQL(" ").join(
            sql.SQL("WHEN starts_with({rest}, {prefix}) THEN {t}").format(
                rest=rest, prefix=sql.Literal(t + "-"), t=sql.Literal(t)
            )
            for t in LONGEST_FIRST
        )
    )


def key_type_text(target: Target, qualified: bool = False) -> sql.Composable:
    """The key type as text, or NULL for a table without a key-type column (encoded: the type
    parsed from the key, NULL for an unknown one)."""
    if target.encoded is not None:
        return _encoded_type(target, qualified)
    if target.key_type_column is None:
        return sql.SQL("NULL::text")
    return sql.SQL("{}::text").format(_ref(target, target.key_type_column, qualified))


def _key_id(target: Target, key_type: str) -> sql.Composable:
    """The id of a key of `key_type` as text (qualified by the table)."""
    if target.encoded is not None:
        return sql.SQL("substr({rest}, {n})").format(
            rest=_encoded_rest(target, True), n=sql.Literal(len(key_type) + 2)
        )
    return sql.SQL("{}::text").format(column_ref(target, target.key_id_column))


def encoded_key_id(target: Target) -> sql.Composable:
    """An encoded key's id (what follows "<type>-"), NULL for an unknown type; qualified."""
    return sql.SQL("(CASE {kt} {whens} END)").format(
        kt=key_type_text(target, qualified=True),
        whens=sql.SQL(" ").join(
            sql.SQL("WHEN {} THEN {}").format(sql.Literal(t), _key_id(target, t))
            for t in LONGEST_FIRST
        ),
    )


def tenant_expr(target: Target, qualified: bool) -> sql.Composable:
    """The key's tenant: its tenant column, or the encoded key's session prefix."""
    if target.tenant_column is not None:
        return _ref(target, target.tenant_column, qualified)
    if target.encoded is not None and target.encoded.separator is not None:
        return encoded_session(target, qualified)
    raise ValueError("the target has no tenant column")  # pragma: no cover - callers check


def tenant_ref(target: Target) -> sql.Composable:
    """The key's tenant, qualified by the table (it is compared inside a subquery)."""
    return tenant_expr(target, True)


def known_type(target: Target) -> sql.Composable:
    """FALSE for an encoded key of no known type: no rule ever takes it."""
    if target.encoded is None:
        return sql.SQL("true")
    return sql.SQL("({} IS NOT NULL)").format(key_type_text(target))


def creds_key_of(target: Target, tenant: sql.Composable) -> sql.Composable:
    """The encoded key of `tenant`'s creds row."""
    enc = _enc(target)
    if enc.separator is None:
        return sql.Literal(enc.creds_key)
    return sql.SQL("({tenant}::text || {suffix})").format(
        tenant=tenant, suffix=sql.Literal(enc.separator + enc.creds_key)
    )


def _protected(target: Target) -> sql.Composable:
    """TRUE for rows of a protected type. NULL key types are never protected."""
    if not target.has_key_types:
        return sql.SQL("false")
    return sql.SQL("coalesce({kt} = ANY (%(protected)s::text[]), false)").format(
        kt=key_type_text(target)
    )


def _row_cutoff(target: Target, policy: Policy) -> sql.Composable:
    if not target.has_key_types or not policy.type_cutoffs:
        return sql.SQL("%(cutoff)s")
    whens = [
        sql.SQL("WHEN {p} THEN {c}").format(
            p=sql.Placeholder(f"type_{i}"), c=sql.Placeholder(f"type_cutoff_{i}")
        )
        for i in range(len(policy.type_cutoffs))
    ]
    return sql.SQL("CASE {kt} {whens} ELSE %(cutoff)s END").format(
        kt=key_type_text(target), whens=sql.SQL(" ").join(whens)
    )


def applies_ttl(target: Target, policy: Policy) -> bool:
    return policy.expires_now is not None and target.expires_column is not None


def applies_orphans(target: Target, policy: Policy) -> bool:
    """True when the orphan rule may delete: it has a measured set of tenants."""
    return policy.orphans is not None and target.has_tenant and bool(policy.orphans.tenants)


def measures_orphans(target: Target, policy: Policy) -> bool:
    """True when the measuring pass looks for orphaned tenants (their set may be empty)."""
    return policy.orphans is not None and target.has_tenant


def prekeys_due(target: Target, policy: Policy) -> bool:
    """Without a timestamp, pre-keys are the one type a rule may take by itself: every one is
    due, and the pre-key window keeps the ones Baileys may still need."""
    return (
        target.timestamp_column is None
        and target.has_key_types
        and policy.lifecycle is not None
        and not policy.lifecycle.prekey_age_only
    )


def aged(target: Target, policy: Policy) -> sql.Composable:
    """The age rule, before protection. Out-of-range timestamps (-infinity, BC dates) would sort
    before any cutoff: the lower bound keeps them, as NULL timestamps are kept. Without a
    timestamp the age rule is off: only pre-keys are due (`prekeys_due`)."""
    if target.timestamp_column is None:
        if prekeys_due(target, policy):
            return sql.SQL("coalesce({} = 'pre-key', false)").format(key_type_text(target))
        return sql.SQL("false")
    ts = timestamp_expr(target)
    return sql.SQL("({ts} >= {first} AND {ts} < {cut})").format(
        ts=ts, first=FIRST_TIMESTAMP, cut=_row_cutoff(target, policy)
    )


def expired(target: Target, policy: Policy) -> sql.Composable:
    """The TTL rule, before protection: the expiry has passed by the run's clock.

    As for timestamps, an out-of-range expiry (-infinity, a BC date) is never a reason to
    delete: it is more likely a sentinel or an import accident than a TTL. infinity never
    passes. Nor does a key whose own timestamp is NULL or out of range: such rows are never
    deleted, by any rule (docs/safety.md).
    """
    if not applies_ttl(target, policy):
        return sql.SQL("false")
    exp = expires_expr(target)
    # IS NOT NULL first: most keys have no expiry, and AND stops at false but not at NULL.
    return sql.SQL(
        "({col} IS NOT NULL AND {exp} >= {first} AND {exp} < %(expires_now)s AND {ts_ok})"
    ).format(
        col=sql.Identifier(target.expires_column or ""),
        exp=exp,
        first=FIRST_TIMESTAMP,
        ts_ok=in_range(timestamp_expr(target))
        if target.timestamp_column is not None
        else sql.SQL("true"),
    )


def _orphan_quiet(target: Target) -> sql.Composable:
    """The orphan rule's own conditions on the key: a tenant, untouched since the grace cutoff
    (without a timestamp: a tenant, and a known type)."""
    if target.timestamp_column is None:
        return sql.SQL("({tenant} IS NOT NULL AND {known})").format(
            tenant=tenant_ref(target), known=known_type(target)
        )
    ts = timestamp_expr(target)
    return sql.SQL(
        "({tenant} IS NOT NULL AND {ts} >= {first} AND {ts} < %(orphan_cutoff)s)"
    ).format(tenant=tenant_ref(target), ts=ts, first=FIRST_TIMESTAMP)


def in_orphan_set(target: Target) -> sql.Composable:
    """TRUE for a key of a tenant in the measured set, compared in the tenant column's type."""
    return sql.SQL("coalesce({tenant} = ANY (%(orphan_tenants)s), false)").format(
        tenant=tenant_ref(target)
    )


def no_auth_row(target: Target, orphans: Orphans, tenant: sql.Composable) -> sql.Composable:
    """TRUE when the auth table has no row for `tenant`: the one comparison of tenant ids, the
    same in the measuring pass (per group) and in each DELETE (per key). Encoded: no creds row
    for the session in the key table itself (its primary key serves the lookup)."""
    if target.encoded is not None:
        same = (
            sql.SQL("kc_auth.{col} = {tenant} AND ").format(
                col=sql.Identifier(target.tenant_column), tenant=tenant
            )
            if target.tenant_column is not None
            else sql.SQL("")
        )
        return sql.SQL(
            "NOT EXISTS (SELECT 1 FROM {table} AS kc_auth WHERE {same}kc_auth.{key} = {creds})"
        ).format(
            table=target.whole_ident,
            same=same,
            key=sql.Identifier(target.encoded.key_column),
            creds=creds_key_of(target, tenant),
        )
    column = orphans.tenant_column or target.tenant_column or ""
    return sql.SQL(
        "NOT EXISTS (SELECT 1 FROM {auth} AS kc_auth WHERE kc_auth.{col} = {tenant})"
    ).format(auth=orphans.ident, col=sql.Identifier(column), tenant=tenant)


def _orphaned(target: Target, policy: Policy) -> sql.Composable:
    """The orphan rule: a key of a tenant in the measured set, quiet, and the tenant has no row
    in the auth table at this statement.

    The set was fixed by the measuring pass, so a tenant that loses its auth row during the run
    waits for the next one; NOT EXISTS is evaluated by each DELETE, so a tenant whose creds row
    appears between two batches keeps its keys.
    """
    if not applies_orphans(target, policy) or policy.orphans is None:
        return sql.SQL("false")
    return sql.SQL("({member} AND {quiet} AND {no_auth})").format(
        member=in_orphan_set(target),
        quiet=_orphan_quiet(target),
        no_auth=no_auth_row(target, policy.orphans, tenant_ref(target)),
    )


def column_ref(target: Target, column: str | None) -> sql.Composable:
    """A key-table column qualified by the table (or the name its rows go by), for use
    inside a correlated subquery."""
    if target.row_alias is not None:
        return sql.Identifier(target.row_alias, column or "")
    return sql.Identifier(target.schema, target.name, column or "")


def _tenant_text(target: Target) -> sql.Composable:
    """The tenant as the lifecycle maps name it; '' for an encoded table of one session."""
    if not target.has_tenant:
        return sql.SQL("''::text" if target.encoded is not None else "NULL::text")
    return sql.SQL("{}::text").format(tenant_ref(target))


# Per key type, the lifecycle's reasons to keep a key of that type, first match wins.
Branches = dict[str, list[tuple[KeepReason, sql.Composable]]]


def creds_hash(value: sql.Composable) -> sql.Composable:
    """What tells a creds row's value from another: md5 of its text (never shown anywhere)."""
    return sql.SQL("md5({}::text)").format(value)


def _stable_sessions(target: Target, lc: Lifecycle) -> sql.Composable:
    """The sessions whose creds row is still the one read: an uncorrelated subquery, so each
    statement looks every creds row up once (by its key), whatever the rows it scans."""
    if lc.recheck is not None and lc.recheck.auth is None and target.encoded is None:
        # The columns layout with no auth table read: no creds, so no session is stable (and
        # every pre-key is kept already, its tenant having no window).
        return sql.SQL("ARRAY[]::text[]")
    if lc.recheck is not None and lc.recheck.auth is not None:
        schema, table, tenant_col, creds_col = lc.recheck.auth
        found = sql.SQL(
            "SELECT 1 FROM {auth} AS kc_c WHERE kc_c.{tenant}::text = kc_u.s AND {hash} = kc_u.h"
        ).format(
            auth=sql.Identifier(schema, table),
            tenant=sql.Identifier(tenant_col),
            hash=creds_hash(sql.SQL("kc_c.{}").format(sql.Identifier(creds_col))),
        )
    else:
        enc = _enc(target)
        same = (
            sql.SQL("kc_c.{}::text = kc_u.s AND ").format(sql.Identifier(target.tenant_column))
            if target.tenant_column is not None
            else sql.SQL("")
        )
        found = sql.SQL(
            "SELECT 1 FROM {table} AS kc_c WHERE {same}kc_c.{key} = {creds} AND {hash} = kc_u.h"
        ).format(
            table=target.whole_ident,
            same=same,
            key=sql.Identifier(enc.key_column),
            creds=creds_key_of(target, sql.SQL("kc_u.s")),
            hash=creds_hash(sql.SQL("kc_c.{}").format(sql.Identifier(enc.value_column))),
        )
    return sql.SQL(
        "ARRAY(SELECT kc_u.s FROM unnest(%(kc_sessions)s::text[], %(kc_hashes)s::text[]) "
        "AS kc_u(s, h) WHERE EXISTS ({found}))"
    ).format(found=found)


def _prekey_branch(
    target: Target, lc: Lifecycle, kid: sql.Composable, tenant: sql.Composable
) -> list[tuple[KeepReason, sql.Composable]]:
    """A pre-key is kept when its tenant has no window (creds not read: told apart in the
    report) or its id is inside the window. Cost: a digit test (ltrim, a third of a regular
    expression's cost here), two casts and up to three JSON lookups.

    Without a timestamp nothing shows a pre-key is new: ids above the window are kept (Baileys
    writes new pre-keys before the creds that count them), and so is every pre-key of a
    session whose creds row changed since it was read (`lc.recheck`)."""
    lo = sql.SQL("(%(kc_lo)s::jsonb -> {tenant})").format(tenant=tenant)
    hi = sql.SQL("(%(kc_hi)s::jsonb -> {tenant})").format(tenant=tenant)
    outside = (
        sql.SQL("{kid}::bigint < {lo}::bigint OR {kid}::bigint > {hi}::bigint")
        if target.timestamp_column is not None
        else sql.SQL("{kid}::bigint < {lo}::bigint")
    ).format(kid=kid, lo=lo, hi=hi)
    changed: list[tuple[KeepReason, sql.Composable]] = []
    if lc.recheck is not None:
        changed = [
            (
                "prekey_creds_changed",
                sql.SQL("NOT coalesce({tenant} = ANY ({stable}), false)").format(
                    tenant=tenant, stable=_stable_sessions(target, lc)
                ),
            )
        ]
    return [
        ("prekey_no_creds", sql.SQL("{lo} IS NULL").format(lo=lo)),
        *changed,
        # CASE, not AND: SQL does not promise to test the digits before the cast. A
        # non-numeric id compares as NULL: kept.
        (
            "prekey_window",
            sql.SQL(
                "coalesce(CASE WHEN ltrim({kid}, '0123456789') = '' AND length({kid}) "
                "BETWEEN 1 AND {digits} THEN NOT ({outside}) END, true)"
            ).format(kid=kid, digits=sql.Literal(MAX_ID_DIGITS), outside=outside),
        ),
    ]


def _own_user(tenant: sql.Composable, user: sql.Composable) -> sql.Composable:
    """TRUE when the tenant's own users hold `user`. `_1` (LID) and other domain suffixes of
    the signal address are cut first (Signal/libsignal.ts)."""
    own = sql.SQL("(%(kc_own)s::jsonb -> {tenant})").format(tenant=tenant)
    return sql.SQL("({own} ? split_part({user}, '_', 1))").format(own=own, user=user)


def _sender_key_branch(
    target: Target, kid: sql.Composable, tenant: sql.Composable, memory: sql.Composable | None
) -> list[tuple[KeepReason, sql.Composable]]:
    """Our own sender key, while its group's sender-key-memory row is there. Unknown own users
    (no creds): every sender key might be ours, so each waits for its group's memory row.
    Once a batch deletes that row (by age), a later batch of the same run may take the key:
    the run's bound and its per-type counts allow for it (`MeasuredRun.follows`). `memory`:
    TRUE when that row is there, read from a join (`memory_join`) instead of a lookup per key.
    """
    mine = sql.SQL("coalesce({}, true)").format(
        _own_user(tenant, sql.SQL("split_part({}, '::', 2)").format(kid))
    )
    there = (
        memory
        if memory is not None
        else sql.SQL("EXISTS (SELECT 1 FROM {table} AS kc_m WHERE {row})").format(
            table=target.whole_ident, row=_memory_row(target, kid)
        )
    )
    return [("own_sender_key", sql.SQL("({} AND {})").format(mine, there))]


def _memory_row(target: Target, kid: sql.Composable) -> sql.Composable:
    """The condition on kc_m that makes it the memory row of the sender key `kid`'s group."""
    same_tenant = (
        sql.SQL("kc_m.{col} = {tenant} AND ").format(
            col=sql.Identifier(target.tenant_column), tenant=tenant_ref(target)
        )
        if target.tenant_column is not None
        else sql.SQL("")
    )
    group = sql.SQL("split_part({}, '::', 1)").format(kid)
    if target.encoded is not None:
        # The group's memory row is "[<session><sep>]sender-key-memory-<group>" in the same table.
        return sql.SQL("{same_tenant}kc_m.{key} = {prefix}'sender-key-memory-' || {group}").format(
            same_tenant=same_tenant,
            key=sql.Identifier(target.encoded.key_column),
            prefix=_session_prefix(target),
            group=group,
        )
    return sql.SQL(
        "{same_tenant}kc_m.{kt_col}::text = 'sender-key-memory' AND kc_m.{kid_col}::text = {group}"
    ).format(
        same_tenant=same_tenant,
        kt_col=sql.Identifier(target.key_type_column or ""),
        kid_col=sql.Identifier(target.key_id_column or ""),
        group=group,
    )


def _unknown_own(lc: Lifecycle, tenant: sql.Composable) -> list[tuple[KeepReason, sql.Composable]]:
    """Sessions kept because their tenant's own devices should be known and are not: any
    session of them might be the account's own (docs/key-lifecycle.md)."""
    if lc.own_unread:
        return [("own_unknown", sql.SQL("true"))]
    if not lc.unknown_own:
        return []
    return [
        (
            "own_unknown",
            sql.SQL("coalesce({tenant} = ANY (%(kc_unknown)s::text[]), false)").format(
                tenant=tenant
            ),
        )
    ]


def _session_prefix(target: Target) -> sql.Composable:
    """`<session><sep> || ` before a key built from the outer row's session; '' without one."""
    enc = _enc(target)
    if enc.separator is None:
        return sql.SQL("")
    return sql.SQL("{tenant} || {sep} || ").format(
        tenant=tenant_ref(target), sep=sql.Literal(enc.separator)
    )


def lifecycle_branches(
    target: Target, policy: Policy, memory: sql.Composable | None = None
) -> Branches:
    """Per key type, the conditions under which Baileys still needs a key of that type, each
    with its reason (docs/key-lifecycle.md); {} when the lifecycle does not apply.

    The per-tenant facts come from the run's JSON parameters (kc_lo, kc_hi, kc_own), read once
    from the creds. Callers dispatch on the key type once (`CASE key_type WHEN ...`), so a row
    of another type costs a few comparisons. `memory`: see _sender_key_branch.
    """
    lc = policy.lifecycle
    if lc is None:
        return {}
    if target.encoded is None and (target.key_type_column is None or target.key_id_column is None):
        return {}
    tenant = _tenant_text(target)
    branches: Branches = {}
    if not lc.prekey_age_only:
        branches["pre-key"] = _prekey_branch(target, lc, _key_id(target, "pre-key"), tenant)
    own_session = _own_user(
        tenant, sql.SQL("split_part({}, '.', 1)").format(_key_id(target, "session"))
    )
    branches["session"] = [
        ("own_session", sql.SQL("coalesce({}, false)").format(own_session)),
        *_unknown_own(lc, tenant),
    ]
    branches["sender-key"] = _sender_key_branch(
        target, _key_id(target, "sender-key"), tenant, memory
    )
    tc_kid = _key_id(target, "tctoken")
    # coalesce: a NULL id (a table that allows one) is not the index, in the DELETE's NOT as
    # in the measuring pass's CASE.
    branches["tctoken"] = [
        ("index", sql.SQL("coalesce({kid} = '__index', false)").format(kid=tc_kid))
    ]
    return branches


def prekey_ids(target: Target) -> sql.Composable:
    """The table's pre-keys as (tn: the tenant as the lifecycle's maps name it, k: the id as
    a number, NULL when it is not one), as a subquery for `db.prekey_floors`."""
    kid = _key_id(target, "pre-key")
    kt = key_type_text(target, qualified=True)
    return sql.SQL(
        "(SELECT {tn} AS tn, CASE WHEN ltrim({kid}, '0123456789') = '' AND length({kid}) "
        "BETWEEN 1 AND {digits} THEN {kid}::bigint END AS k FROM {table} "
        "WHERE {kt} = 'pre-key')"
    ).format(
        tn=_tenant_text(target),
        kid=kid,
        digits=sql.Literal(MAX_ID_DIGITS),
        table=target.whole_ident,
        kt=kt,
    )


# The name of the memory-row join's relation and of its group column (memory_join).
MEMORY_ROWS = "kc_mem"


def memory_join(
    target: Target, due: sql.Composable
) -> tuple[sql.Composable, sql.Composable] | None:
    """For a scan of every row (the measuring pass) of a table with a key-type column: a LEFT
    JOIN to the sender-key-memory rows, one per tenant and group, matched to each sender key's
    group, and the condition that reads it (TRUE: the key's memory row is there). The same
    answer as the lookup per key in `_sender_key_branch`, compared in the same types, but one
    a parallel plan can run; None for the encoded layout (its memory rows have no column of
    their own to read them by). The join matches at most one row per key: by the primary key
    when it is made of the tenant, type and id columns (then the workers can share one hash
    of the memory rows), else by DISTINCT (each worker builds its own). It reads no memory
    row's other columns: the index holds what it needs (an index-only scan).

    `due`: TRUE for a row whose memory row the caller reads (the pass reads it only for a key
    the age or TTL rule would take): only those sender keys are matched, so the others skip
    the group id and the hash probe. When the primary key starts with the tenant and type
    columns, the memory rows are read as one range of it per tenant (`_per_tenant`)."""
    if target.encoded is not None or target.key_type_column is None:
        return None
    key_columns = {target.tenant_column, target.key_type_column, target.key_id_column}
    unique = bool(target.primary_key) and set(target.primary_key) <= key_columns
    kid = _key_id(target, "sender-key")
    tenant = (
        sql.SQL("{col} AS kc_mt, ").format(col=sql.Identifier(target.tenant_column))
        if target.tenant_column is not None
        else sql.SQL("")
    )
    same_tenant = (
        sql.SQL("{m}.kc_mt = {tenant} AND ").format(
            m=sql.Identifier(MEMORY_ROWS), tenant=tenant_ref(target)
        )
        if target.tenant_column is not None
        else sql.SQL("")
    )
    join = sql.SQL(
        " LEFT JOIN (SELECT {distinct}{tenant}{kid_col}::text AS kc_mg FROM {table} "
        "WHERE {kt_col}::text = 'sender-key-memory'{per_tenant}) AS {m} "
        "ON {same_tenant}{m}.kc_mg = CASE WHEN {kt} = 'sender-key' AND {due} "
        "THEN split_part({kid}, '::', 1) END"
    ).format(
        distinct=sql.SQL("" if unique else "DISTINCT "),
        tenant=tenant,
        kid_col=sql.Identifier(target.key_id_column or ""),
        table=target.whole_ident,
        kt_col=sql.Identifier(target.key_type_column),
        per_tenant=_per_tenant(target),
        m=sql.Identifier(MEMORY_ROWS),
        same_tenant=same_tenant,
        kt=key_type_text(target, qualified=True),
        due=due,
        kid=kid,
    )
    return join, sql.SQL("({}.kc_mg IS NOT NULL)").format(sql.Identifier(MEMORY_ROWS))


def _per_tenant(target: Target) -> sql.Composable:
    """When the primary key starts with the tenant and key-type columns: `AND tenant = ANY
    (every tenant of the table)`, the tenants found by a walk of that index (one descent per
    tenant). The memory rows then come from one range of the index per tenant, where a
    condition on the key type alone reads the whole index on PostgreSQL before 18 (7,495
    pages for 80,100 memory rows at 1M keys, docs/performance.md). The same rows: a memory row
    without a tenant matches no key. The walk's `ORDER BY` reads the primary key's index:
    PostgreSQL refuses a primary key on an index that does not sort as `ORDER BY` does (another
    operator class or collation). '' for any other primary key: the walk needs that index, and
    would read the whole table once per tenant without it."""
    col = target.tenant_column
    if col is None or target.primary_key[:2] != (col, target.key_type_column):
        return sql.SQL("")
    return sql.SQL(
        " AND {col} = ANY (ARRAY(WITH RECURSIVE kc_tenants(t) AS ("
        "(SELECT {col} FROM {table} WHERE {col} IS NOT NULL ORDER BY {col} LIMIT 1) "
        "UNION ALL SELECT (SELECT {col} FROM {table} WHERE {col} > kc_tenants.t "
        "ORDER BY {col} LIMIT 1) FROM kc_tenants WHERE kc_tenants.t IS NOT NULL) "
        "SELECT t FROM kc_tenants WHERE t IS NOT NULL))"
    ).format(col=sql.Identifier(col), table=target.whole_ident)


def lifecycle_case(
    target: Target,
    branches: Branches,
    per_type: Callable[[list[tuple[KeepReason, sql.Composable]]], sql.Composable],
    default: sql.Composable,
) -> sql.Composable:
    """`CASE key_type WHEN 'pre-key' THEN ... END`: one dispatch on the key type."""
    return sql.SQL("CASE {kt} {whens} ELSE {default} END").format(
        kt=key_type_text(target, qualified=True),
        whens=sql.SQL(" ").join(
            sql.SQL("WHEN {} THEN {}").format(sql.Literal(key_type), per_type(conds))
            for key_type, conds in branches.items()
        ),
        default=default,
    )


def lifecycle_keep(target: Target, policy: Policy) -> sql.Composable:
    """TRUE for a key the age and TTL rules must leave: one that Baileys still needs."""
    branches = lifecycle_branches(target, policy)
    if not branches:
        return sql.SQL("false")
    return lifecycle_case(
        target,
        branches,
        lambda conds: sql.SQL("({})").format(sql.SQL(" OR ").join(c for _, c in conds)),
        sql.SQL("false"),
    )


def eligible_predicate(target: Target, policy: Policy) -> sql.Composable:
    """The one definition of "may be deleted", used to list and delete (measure() counts by
    the same parts): aged or expired, not protected and not needed by Baileys (the key
    lifecycle), or orphaned (protected or not)."""
    eligible = sql.SQL(
        "((({aged} OR {expired}) AND NOT {protected} AND NOT {keep}) OR {orphaned})"
    ).format(
        aged=aged(target, policy),
        expired=expired(target, policy),
        protected=_protected(target),
        keep=lifecycle_keep(target, policy),
        orphaned=_orphaned(target, policy),
    )
    if target.encoded is None:
        return eligible
    # An encoded key of no known type is never taken, by any rule; nor is a creds row.
    return sql.SQL("({known} AND {eligible})").format(known=known_type(target), eligible=eligible)


def key_columns(target: Target) -> tuple[str, ...]:
    """Columns that name a key in listings: the primary key (never the value), else the ctid."""
    value = target.encoded.value_column if target.encoded is not None else "value"
    pk = tuple(c for c in target.primary_key if c not in {"value", value})
    return pk or ("ctid",)


def _listing_parts(target: Target, now_param: str) -> dict[str, sql.Composable]:
    """A listed key's parts, by ListedKey's field names: its primary-key columns as text, its
    key type and its age in days; never the value.

    The age of a NULL or out-of-range timestamp is NULL (unknown): `now - 'infinity'` would
    fail the statement ("cannot subtract infinite timestamps").
    """
    key = sql.SQL("jsonb_build_array({})").format(
        sql.SQL(", ").join(
            sql.SQL("{}::text").format(sql.Identifier(c)) for c in key_columns(target)
        )
    )
    ts = timestamp_expr(target)
    age = sql.SQL("CASE WHEN {ok} THEN extract(epoch FROM {now} - {ts}) / 86400.0 END").format(
        ok=in_range(ts), now=sql.Placeholder(now_param), ts=ts
    )
    return {
        "key": key,
        "key_type": key_type_text(target),
        "age_days": sql.SQL("{}::float8").format(age),
    }


def listing_columns(target: Target, now_param: str = "now") -> sql.Composable:
    """The select list of a listing: `key, key_type, age_days` (ListedKey's fields)."""
    return sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(expr, sql.Identifier(name))
        for name, expr in _listing_parts(target, now_param).items()
    )


def listing_object(target: Target, now_param: str = "now") -> sql.Composable:
    """A listed key as one JSON object with ListedKey's fields (for RETURNING)."""
    return sql.SQL("jsonb_build_object({})").format(
        sql.SQL(", ").join(
            sql.SQL("{}, {}").format(sql.Literal(name), expr)
            for name, expr in _listing_parts(target, now_param).items()
        )
    )
