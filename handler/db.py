"""Every SQL statement the job runs, and nothing else.

Identifiers go through `sql.Identifier`, values are parameters. The engine (cleanup.py) decides
what to run and when; this module only knows how.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from handler.lifecycle import MAX_ID_DIGITS, KeepReason, Lifecycle
from handler.pacing import Lag

Conn = psycopg.Connection[TupleRow]

MIN_SERVER_VERSION = 140000  # TID Range Scan (ctid >= x AND ctid < y) arrived in PostgreSQL 14
TIMESTAMPTZ = "timestamp with time zone"
TIMESTAMP = "timestamp without time zone"
TIMESTAMP_TYPES = frozenset({TIMESTAMPTZ, TIMESTAMP})
# Timestamps outside [FIRST, LAST) are "out of range": infinity, -infinity, BC dates and years
# past 9999. Python cannot load them (min/max would fail every run), and -infinity or a BC
# date would sort before any cutoff; such a row is counted apart and never deleted. The first
# day of year 1 is left out too, so that a zone conversion cannot step into year 0.
FIRST_TIMESTAMP = sql.SQL("'0001-01-02 00:00:00+00'::timestamptz")
LAST_TIMESTAMP = sql.SQL("'9999-12-31 00:00:00+00'::timestamptz")
# Advisory lock key: a fixed high word ("kc") so our locks don't collide with the
# application's, and the table's OID as the low word, so each target table has its own lock.
LOCK_CLASS = 0x6B63 << 32


class DatabaseError(RuntimeError):
    """A database failure, with a message safe to log (no DSN, no password, no key value)."""


@dataclass(frozen=True)
class Target:
    """A resolved, validated target table."""

    oid: int
    schema: str
    name: str
    timestamp_column: str
    key_type_column: str | None
    primary_key: tuple[str, ...]
    # The column's type has no time zone (`timestamp`): its wall time is read in
    # `timestamp_timezone` when that is set, else in the session's (always UTC).
    naive_timestamp: bool = False
    timestamp_timezone: str | None = None
    # The TTL column, when the table has the configured one (a timestamp, checked).
    expires_column: str | None = None
    naive_expires: bool = False
    # The tenant column, when the table has the configured one.
    tenant_column: str | None = None
    # The key id column, when the table has the configured one (the key-lifecycle rules).
    key_id_column: str | None = None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)


@dataclass(frozen=True)
class Orphans:
    """The orphan rule: keys of a tenant with no row in the auth table, untouched since cutoff.

    `tenants` are the tenants it may take, by their ids as text (`tenant::text`): before the
    measuring pass, the ones the earlier runs recorded; after it, the measured set. Every
    statement compares them in the key table's own type (`tenant = ANY('{...}')`, the literal
    read by that type's input function), as it compares the auth table's ids.
    """

    schema: str | None
    table: str
    cutoff: datetime
    tenants: tuple[str, ...] = ()

    @property
    def ident(self) -> sql.Composable:
        return history_ident(self.schema, self.table)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table


def array_literal(values: Sequence[str]) -> str:
    """A PostgreSQL array literal of `values`, each element quoted. Passed as a str, psycopg
    sends it untyped, so the server reads it with the compared column's array type."""
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "{" + ",".join(quoted) + "}"


@dataclass(frozen=True)
class Policy:
    """Which rows are eligible, by three rules (see docs/rules.md).

    Age: older than their type's cutoff, and not of a protected type. TTL (with `expires_now`):
    expiry before that instant, and not of a protected type. Orphans (with `orphans`): the
    tenant has no row in the auth table and the key is untouched since the grace cutoff,
    protected types included.
    """

    cutoff: datetime
    protected: tuple[str, ...] = ()
    type_cutoffs: dict[str, datetime] = field(default_factory=dict)
    expires_now: datetime | None = None
    orphans: Orphans | None = None
    # The key-lifecycle rules (docs/key-lifecycle.md): keys Baileys still needs, kept whatever
    # their age. None: not applied (no key-type or key-id column).
    lifecycle: Lifecycle | None = None

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"cutoff": self.cutoff, "protected": list(self.protected)}
        if self.lifecycle is not None:
            # Two maps rather than one of pairs: each row then costs one lookup per bound.
            windows = self.lifecycle.windows
            params["kc_lo"] = Jsonb({t: w[0] for t, w in windows.items()})
            params["kc_hi"] = Jsonb({t: w[1] for t, w in windows.items()})
            params["kc_own"] = Jsonb({t: list(u) for t, u in self.lifecycle.own_users.items()})
        if self.expires_now is not None:
            params["expires_now"] = self.expires_now
        if self.orphans is not None:
            params["orphan_cutoff"] = self.orphans.cutoff
            params["orphan_tenants"] = array_literal(self.orphans.tenants)
        for i, (key_type, cutoff) in enumerate(sorted(self.type_cutoffs.items())):
            params[f"type_{i}"] = key_type
            params[f"type_cutoff_{i}"] = cutoff
        return params


def redact(message: str, dsn: str | None) -> str:
    """Remove the DSN and its password from a driver message (libpq may echo parts of it)."""
    if dsn:
        message = message.replace(dsn, "[database url]")
        try:
            password = conninfo_to_dict(dsn).get("password")
        except psycopg.Error:
            password = None
        if password:
            message = message.replace(str(password), "***")
    # A URL with credentials that slipped through in another spelling.
    return re.sub(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", r"\1***@", message)


def connect(dsn: str, *, connect_timeout_s: int) -> Conn:
    """Open an autocommit connection. Errors come back as DatabaseError without secrets."""
    try:
        conn = psycopg.connect(
            dsn,
            autocommit=True,
            connect_timeout=connect_timeout_s,
            application_name="keys-cleanup",
        )
    except psycopg.Error as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise DatabaseError(f"could not connect to the database: {redact(detail, dsn)}") from None
    # Reports read the same whatever the server's default zone, and `now() - interval` is
    # exactly N x 24 hours: UTC has no daylight-saving shifts.
    conn.execute("SET TimeZone = 'UTC'")
    # No JIT: the measuring pass is one scan whose plan cost passes jit_optimize_above_cost at
    # 300k rows, and compiling it took 0.3-0.5 s with the key lifecycle's expressions, more
    # than the whole scan; without it the pass ran faster at 1M rows with the old rules too
    # (bench/results/rules-1000000.md).
    conn.execute("SET jit = off")
    return conn


def set_timeouts(conn: Conn, *, statement_ms: int, lock_ms: int, local: bool = False) -> None:
    scope = sql.SQL("LOCAL ") if local else sql.SQL("")
    conn.execute(
        sql.SQL("SET {}statement_timeout = {}").format(
            scope, sql.Literal(f"{max(1, statement_ms)}ms")
        )
    )
    conn.execute(
        sql.SQL("SET {}lock_timeout = {}").format(scope, sql.Literal(f"{max(1, lock_ms)}ms"))
    )


def set_local(conn: Conn, **settings: str) -> None:
    """SET LOCAL several settings in one statement (inside a transaction)."""
    conn.execute(
        sql.SQL("SELECT {}").format(
            sql.SQL(", ").join(
                sql.SQL("set_config({}, {}, true)").format(sql.Literal(name), sql.Literal(value))
                for name, value in settings.items()
            )
        )
    )


def server_version(conn: Conn) -> int:
    return conn.info.server_version


def table_columns(conn: Conn, oid: int) -> dict[str, str]:
    """A relation's live columns: name -> type as format_type spells it."""
    return dict(
        conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
            (oid,),
        ).fetchall()
    )


def find_relation(conn: Conn, schema: str | None, name: str) -> tuple[int, str, str, str] | None:
    """(oid, schema, name, relkind) of the relation `name` resolves to, as PostgreSQL resolves
    it (search path order, pg_catalog first), or None."""
    row = conn.execute(
        """
        SELECT c.oid, n.nspname, c.relname, c.relkind
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relname = %(name)s
          AND CASE WHEN %(schema)s::text IS NULL
                   THEN n.nspname = ANY (current_schemas(true))
                   ELSE n.nspname = %(schema)s END
        ORDER BY array_position(current_schemas(true), n.nspname::text)
        LIMIT 1
        """,
        {"schema": schema, "name": name},
    ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]), str(row[2]), str(row[3]))


def resolve_target(
    conn: Conn,
    schema: str | None,
    name: str,
    timestamp_column: str,
    key_type_column: str | None,
    timestamp_timezone: str | None = None,
    *,
    expires_column: str | None = None,
    tenant_column: str | None = None,
    key_id_column: str | None = None,
) -> Target:
    """Find the table in the catalog and check its columns; raise LookupError/TypeError.

    An unqualified name resolves as PostgreSQL resolves it, pg_catalog first (it is on every
    search path implicitly), so `pg_class` is found as the system table and refused.
    """
    row = find_relation(conn, schema, name)
    shown = f"{schema}.{name}" if schema else name
    if row is None:
        raise LookupError(f"table {shown} does not exist (or is not visible to this role)")
    oid, nspname, relname, relkind = row
    if nspname in {"pg_catalog", "information_schema"} or nspname.startswith("pg_"):
        raise LookupError(f"refusing {nspname}.{relname}: it is a system table")
    if relkind != "r":
        raise LookupError(f"{nspname}.{relname} is not an ordinary table (relkind {relkind})")
    columns = table_columns(conn, oid)
    ts_type = columns.get(timestamp_column)
    if ts_type is None:
        raise LookupError(f"column {timestamp_column} does not exist in {nspname}.{relname}")
    if ts_type not in TIMESTAMP_TYPES:
        raise TypeError(
            f"column {nspname}.{relname}.{timestamp_column} is {ts_type}, not a timestamp"
        )
    if key_type_column is not None and key_type_column not in columns:
        raise LookupError(
            f"column {key_type_column} does not exist in {nspname}.{relname} "
            "(set CLEANUP_KEY_TYPE_COLUMN=none if the table has no key-type column)"
        )
    # The TTL column is optional: used when the table has it, checked when it does.
    expires_type = columns.get(expires_column) if expires_column else None
    if expires_type is not None and expires_type not in TIMESTAMP_TYPES:
        raise TypeError(
            f"column {nspname}.{relname}.{expires_column} is {expires_type}, not a timestamp "
            "(set CLEANUP_EXPIRES_COLUMN to the TTL column, or unset it to turn the TTL rule off)"
        )
    primary_key = tuple(
        r[0]
        for r in conn.execute(
            """
            SELECT a.attname
            FROM pg_index i
            CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
            WHERE i.indrelid = %s AND i.indisprimary
            ORDER BY k.ord
            """,
            (oid,),
        ).fetchall()
    )
    return Target(
        oid,
        nspname,
        relname,
        timestamp_column,
        key_type_column,
        primary_key,
        naive_timestamp=ts_type == TIMESTAMP,
        timestamp_timezone=timestamp_timezone,
        expires_column=expires_column if expires_type is not None else None,
        naive_expires=expires_type == TIMESTAMP,
        tenant_column=tenant_column if tenant_column in columns else None,
        key_id_column=key_id_column if key_id_column in columns else None,
    )


def abbreviation_offset(conn: Conn, zone: str) -> timedelta | None:
    """The fixed UTC offset PostgreSQL reads `zone` as when it is a time-zone abbreviation
    (pg_timezone_abbrevs, matched without regard to case, as PostgreSQL matches them), else
    None. `AT TIME ZONE` takes an abbreviation before a zone name of the same spelling."""
    row = conn.execute(
        "SELECT utc_offset FROM pg_timezone_abbrevs WHERE lower(abbrev) = lower(%s) LIMIT 1",
        (zone,),
    ).fetchone()
    return None if row is None else row[0]


def try_lock(conn: Conn, target: Target) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_CLASS + target.oid,)).fetchone()
    return bool(row and row[0])


def unlock(conn: Conn, target: Target) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_CLASS + target.oid,))


def _one(cur: psycopg.Cursor[TupleRow]) -> TupleRow:
    row = cur.fetchone()
    if row is None:  # pragma: no cover - aggregates and scalar SELECTs always return a row
        raise DatabaseError("the query returned no row")
    return row


def clock(conn: Conn, days: Sequence[int]) -> tuple[datetime, dict[int, datetime]]:
    """The database's now() and `now() - d days` for each d, from one statement.

    Every cutoff and bucket edge comes from the database clock, in one snapshot of it, so a
    30-day retention and the 30-day bucket edge are the same instant.
    """
    wanted = sorted(set(days))
    row = _one(
        conn.execute(
            sql.SQL("SELECT now(){}").format(
                sql.SQL("").join(
                    # Hours, not days: a day is 24 hours here whatever the session's zone.
                    sql.SQL(", now() - make_interval(hours => {})").format(sql.Literal(d * 24))
                    for d in wanted
                )
            )
        )
    )
    return row[0], dict(zip(wanted, row[1:], strict=True))


# ---------------------------------------------------------------------------------------------
# Predicates


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
    """The row's timestamp as an instant (timestamptz)."""
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


def _key_type(target: Target) -> sql.Composable:
    """The key type as text, or NULL for a table without a key-type column."""
    if target.key_type_column is None:
        return sql.SQL("NULL::text")
    return sql.SQL("{}::text").format(sql.Identifier(target.key_type_column))


def _tenant(target: Target) -> sql.Composable:
    """The key's tenant column, qualified by the table (it is compared inside a subquery)."""
    if target.tenant_column is None:  # pragma: no cover - callers check
        raise ValueError("the target has no tenant column")
    return sql.Identifier(target.schema, target.name, target.tenant_column)


def _protected(target: Target) -> sql.Composable:
    """TRUE for rows of a protected type. NULL key types are never protected."""
    if target.key_type_column is None:
        return sql.SQL("false")
    return sql.SQL("coalesce({kt} = ANY (%(protected)s::text[]), false)").format(
        kt=_key_type(target)
    )


def _row_cutoff(target: Target, policy: Policy) -> sql.Composable:
    if target.key_type_column is None or not policy.type_cutoffs:
        return sql.SQL("%(cutoff)s")
    whens = [
        sql.SQL("WHEN {p} THEN {c}").format(
            p=sql.Placeholder(f"type_{i}"), c=sql.Placeholder(f"type_cutoff_{i}")
        )
        for i in range(len(policy.type_cutoffs))
    ]
    return sql.SQL("CASE {kt} {whens} ELSE %(cutoff)s END").format(
        kt=_key_type(target), whens=sql.SQL(" ").join(whens)
    )


def applies_ttl(target: Target, policy: Policy) -> bool:
    return policy.expires_now is not None and target.expires_column is not None


def applies_orphans(target: Target, policy: Policy) -> bool:
    """True when the orphan rule may delete: it has a measured set of tenants."""
    return (
        policy.orphans is not None
        and target.tenant_column is not None
        and bool(policy.orphans.tenants)
    )


def measures_orphans(target: Target, policy: Policy) -> bool:
    """True when the measuring pass looks for orphaned tenants (their set may be empty)."""
    return policy.orphans is not None and target.tenant_column is not None


def _aged(target: Target, policy: Policy) -> sql.Composable:
    """The age rule, before protection. Out-of-range timestamps (-infinity, BC dates) would sort
    before any cutoff: the lower bound keeps them, as NULL timestamps are kept."""
    ts = timestamp_expr(target)
    return sql.SQL("({ts} >= {first} AND {ts} < {cut})").format(
        ts=ts, first=FIRST_TIMESTAMP, cut=_row_cutoff(target, policy)
    )


def _expired(target: Target, policy: Policy) -> sql.Composable:
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
        ts_ok=in_range(timestamp_expr(target)),
    )


def _orphan_quiet(target: Target, policy: Policy) -> sql.Composable:
    """The orphan rule's own conditions on the key: a tenant, untouched since the grace cutoff."""
    ts = timestamp_expr(target)
    return sql.SQL(
        "({tenant} IS NOT NULL AND {ts} >= {first} AND {ts} < %(orphan_cutoff)s)"
    ).format(tenant=_tenant(target), ts=ts, first=FIRST_TIMESTAMP)


def in_orphan_set(target: Target) -> sql.Composable:
    """TRUE for a key of a tenant in the measured set, compared in the tenant column's type."""
    return sql.SQL("coalesce({tenant} = ANY (%(orphan_tenants)s), false)").format(
        tenant=_tenant(target)
    )


def _no_auth_row(target: Target, orphans: Orphans, tenant: sql.Composable) -> sql.Composable:
    """TRUE when the auth table has no row for `tenant`: the one comparison of tenant ids, the
    same in the measuring pass (per group) and in each DELETE (per key)."""
    return sql.SQL(
        "NOT EXISTS (SELECT 1 FROM {auth} AS kc_auth WHERE kc_auth.{col} = {tenant})"
    ).format(auth=orphans.ident, col=sql.Identifier(target.tenant_column or ""), tenant=tenant)


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
        quiet=_orphan_quiet(target, policy),
        no_auth=_no_auth_row(target, policy.orphans, _tenant(target)),
    )


def _column(target: Target, column: str | None) -> sql.Composable:
    """A key-table column qualified by the table, for use inside a correlated subquery."""
    return sql.Identifier(target.schema, target.name, column or "")


# Per key type, the lifecycle's reasons to keep a key of that type, first match wins.
Branches = dict[str, list[tuple[KeepReason, sql.Composable]]]


def lifecycle_branches(target: Target, policy: Policy) -> Branches:
    """Per key type, the conditions under which Baileys still needs a key of that type, each
    with its reason (docs/key-lifecycle.md); {} when the lifecycle does not apply.

    The per-tenant facts come from the run's JSON parameters (kc_lo, kc_hi, kc_own), read once
    from the creds. Callers dispatch on the key type once (`CASE key_type WHEN ...`), so a row
    of another type costs a few comparisons. Cost of a pre-key: a digit test (ltrim, a third
    of a regular expression's cost here), two casts and up to three JSON lookups.
    """
    lc = policy.lifecycle
    if lc is None or target.key_type_column is None or target.key_id_column is None:
        return {}
    kid = sql.SQL("{}::text").format(_column(target, target.key_id_column))
    tenant = _tenant_text(target)
    own = sql.SQL("(%(kc_own)s::jsonb -> {tenant})").format(tenant=tenant)
    lo = sql.SQL("(%(kc_lo)s::jsonb -> {tenant})").format(tenant=tenant)
    hi = sql.SQL("(%(kc_hi)s::jsonb -> {tenant})").format(tenant=tenant)
    branches: Branches = {}
    if not lc.prekey_age_only:
        branches["pre-key"] = [
            # No window for the tenant: creds not read. Kept, and told apart in the report.
            ("prekey_no_creds", sql.SQL("{lo} IS NULL").format(lo=lo)),
            # CASE, not AND: SQL does not promise to test the digits before the cast. A
            # non-numeric id compares as NULL: kept.
            (
                "prekey_window",
                sql.SQL(
                    "coalesce(CASE WHEN ltrim({kid}, '0123456789') = '' AND length({kid}) "
                    "BETWEEN 1 AND {digits} THEN NOT ({kid}::bigint < {lo}::bigint "
                    "OR {kid}::bigint > {hi}::bigint) END, true)"
                ).format(kid=kid, digits=sql.Literal(MAX_ID_DIGITS), lo=lo, hi=hi),
            ),
        ]

    def own_user(user: sql.Composable) -> sql.Composable:
        # `?` asks whether the tenant's own users hold this one; `_1` (LID) and other domain
        # suffixes of the signal address are cut first (Signal/libsignal.ts).
        return sql.SQL("({own} ? split_part({user}, '_', 1))").format(own=own, user=user)

    branches["session"] = [
        (
            "own_session",
            sql.SQL("coalesce({}, false)").format(
                own_user(sql.SQL("split_part({}, '.', 1)").format(kid))
            ),
        )
    ]
    same_tenant = (
        sql.SQL("kc_m.{col} = {tenant} AND ").format(
            col=sql.Identifier(target.tenant_column), tenant=_tenant(target)
        )
        if target.tenant_column is not None
        else sql.SQL("")
    )
    # Unknown own users (no creds): every sender key might be ours, so each waits for its
    # group's memory row to go first.
    branches["sender-key"] = [
        (
            "own_sender_key",
            sql.SQL(
                "(coalesce({mine}, true) AND EXISTS (SELECT 1 FROM {table} AS kc_m "
                "WHERE {same_tenant}kc_m.{kt_col}::text = 'sender-key-memory' "
                "AND kc_m.{kid_col}::text = split_part({kid}, '::', 1)))"
            ).format(
                mine=own_user(sql.SQL("split_part({}, '::', 2)").format(kid)),
                table=target.ident,
                same_tenant=same_tenant,
                kt_col=sql.Identifier(target.key_type_column),
                kid_col=sql.Identifier(target.key_id_column),
                kid=kid,
            ),
        )
    ]
    branches["tctoken"] = [("index", sql.SQL("{kid} = '__index'").format(kid=kid))]
    return branches


def _tenant_text(target: Target) -> sql.Composable:
    if target.tenant_column is None:
        return sql.SQL("NULL::text")
    return sql.SQL("{}::text").format(_tenant(target))


def lifecycle_case(
    target: Target,
    branches: Branches,
    per_type: Callable[[list[tuple[KeepReason, sql.Composable]]], sql.Composable],
    default: sql.Composable,
) -> sql.Composable:
    """`CASE key_type WHEN 'pre-key' THEN ... END`: one dispatch on the key type."""
    return sql.SQL("CASE {kt}::text {whens} ELSE {default} END").format(
        kt=_column(target, target.key_type_column),
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
    return sql.SQL(
        "((({aged} OR {expired}) AND NOT {protected} AND NOT {keep}) OR {orphaned})"
    ).format(
        aged=_aged(target, policy),
        expired=_expired(target, policy),
        protected=_protected(target),
        keep=lifecycle_keep(target, policy),
        orphaned=_orphaned(target, policy),
    )


# ---------------------------------------------------------------------------------------------
# Measurement


@dataclass(frozen=True)
class Sizes:
    table_bytes: int
    index_bytes: int
    total_bytes: int
    pages: int


def sizes(conn: Conn, target: Target) -> Sizes:
    row = _one(
        conn.execute(
            """
        SELECT pg_table_size(%(oid)s), pg_indexes_size(%(oid)s), pg_total_relation_size(%(oid)s),
               pg_relation_size(%(oid)s) / current_setting('block_size')::int
        """,
            {"oid": target.oid},
        )
    )
    return Sizes(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


@dataclass(frozen=True)
class TypeCounts:
    key_type: str | None
    keys: int
    with_timestamp: int  # rows with an in-range timestamp
    newer_than: dict[datetime, int]  # edge -> rows with an in-range timestamp at or after it
    oldest: datetime | None  # the in-range extremes
    newest: datetime | None
    out_of_range: int = 0  # infinity, -infinity, BC dates, years past 9999: never deleted
    eligible: int = 0  # by the age and TTL rules (each key once)
    protected: int = 0  # kept by protection from the age and TTL rules
    expired: int = 0  # unprotected keys whose expiry has passed and that the lifecycle leaves
    # edge -> expired keys with an in-range timestamp at or after it (for the age buckets)
    expired_newer_than: dict[datetime, int] = field(default_factory=dict)
    expired_with_timestamp: int = 0
    orphaned: int = 0  # keys the orphan rule takes (some are eligible by the others too)
    orphan_extra: int = 0  # orphaned keys the age and TTL rules leave
    protected_orphaned: int = 0  # of `protected`, the ones the orphan rule takes anyway
    # Aged or expired keys the key lifecycle keeps, per reason (not in `eligible`).
    kept: dict[KeepReason, int] = field(default_factory=dict)

    def older_than(self, edge: datetime) -> int:
        return self.with_timestamp - self.newer_than[edge]


@dataclass(frozen=True)
class TenantCounts:
    tenant: str | None
    keys: int
    eligible: int  # by the age and TTL rules
    orphaned: int
    orphan_extra: int
    without_auth: bool  # no row in the auth table (whatever the keys' ages)
    # Keys touched since the orphan grace cutoff (an infinite timestamp counts): a tenant
    # with any is not orphaned, whatever its other keys' ages.
    fresh: int = 0
    # In the measured set: without an auth row, no fresh key, and among the tenants the
    # earlier runs recorded (Orphans.tenants). Its quiet keys are `orphaned`.
    confirmed: bool = False


@dataclass(frozen=True)
class Measurement:
    types: list[TypeCounts]
    tenants: list[TenantCounts]


BUCKET_DAYS = (1, 7, 14, 30)


def _by_type(
    target: Target, choices: dict[str, sql.Composable], default: sql.Composable
) -> sql.Composable:
    """Per group, the column chosen by its key type (a per-type cutoff), else `default`."""
    if target.key_type_column is None or not choices:
        return default
    return sql.SQL("CASE kt {whens} ELSE {default} END").format(
        whens=sql.SQL(" ").join(
            sql.SQL("WHEN {} THEN {}").format(sql.Literal(t), col) for t, col in choices.items()
        ),
        default=default,
    )


def measure(
    conn: Conn,
    target: Target,
    edges: Sequence[datetime],
    policy: Policy,
    *,
    by_tenant: bool = False,
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
    be loaded).
    """
    ts = timestamp_expr(target)
    ok = in_range(ts)
    ttl = applies_ttl(target, policy)
    orphans = measures_orphans(target, policy) and policy.orphans is not None
    by_tenant = (by_tenant or orphans) and target.tenant_column is not None
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
    index = {edge: i for i, edge in enumerate(distinct)}
    last = LAST_TIMESTAMP

    def newer(prefix: str, cond: sql.Composable) -> list[sql.Composable]:
        return [
            # An edge is finite, so `ts >= edge AND ts < LAST` is "in range and newer".
            sql.SQL("count(*) FILTER (WHERE {c}{ts} >= {e} AND {ts} < {last}) AS {name}").format(
                c=cond,
                ts=ts,
                e=sql.Placeholder(f"e{i}"),
                last=last,
                name=sql.Identifier(f"{prefix}{i}"),
            )
            for i in range(len(distinct))
        ]

    expired = _expired(target, policy)
    inner = [
        sql.SQL("count(*) AS keys"),
        sql.SQL("count(*) FILTER (WHERE {ok}) AS with_ts").format(ok=ok),
        sql.SQL("min({ts}) FILTER (WHERE {ok}) AS oldest").format(ts=ts, ok=ok),
        sql.SQL("max({ts}) FILTER (WHERE {ok}) AS newest").format(ts=ts, ok=ok),
        sql.SQL("count({ts}) - count(*) FILTER (WHERE {ok}) AS oor").format(ts=ts, ok=ok),
        *newer("n", sql.SQL("")),
    ]
    inner.append(
        sql.SQL("count(*) FILTER (WHERE {ts} >= %(orphan_cutoff)s) AS fresh").format(ts=ts)
        if orphans
        else sql.SQL("0 AS fresh")
    )
    if ttl:
        inner += [
            sql.SQL("count(*) FILTER (WHERE {x}) AS x").format(x=expired),
            sql.SQL("count(*) FILTER (WHERE {x} AND {ok}) AS xts").format(x=expired, ok=ok),
            *newer("xn", sql.SQL("{} AND ").format(expired)),
        ]
    else:
        inner += [sql.SQL("0 AS x"), sql.SQL("0 AS xts")]
        inner += [sql.SQL("0 AS {}").format(sql.Identifier(f"xn{i}")) for i in range(len(distinct))]
    # The key lifecycle: each row's reason to be kept (kc_code, 0: none), decided once, and only
    # for the rows the age or TTL rule would take (in steady state a day's worth: the rest pay
    # one comparison). Per reason the kept keys (lk in all); of those the expired ones (lkx, for
    # the TTL figure) and the ones quiet since the orphan grace cutoff (lkq, for the orphan
    # rule's union).
    branches = lifecycle_branches(target, policy)
    reasons: list[KeepReason] = [r for conds in branches.values() for r, _ in conds]
    source: sql.Composable = target.ident
    if branches:
        code = iter(range(1, len(reasons) + 1))
        by_type = lifecycle_case(
            target,
            branches,
            lambda conds: sql.SQL("CASE {} ELSE 0 END").format(
                sql.SQL(" ").join(
                    sql.SQL("WHEN {} THEN {}").format(c, sql.Literal(next(code))) for _, c in conds
                )
            ),
            sql.SQL("0"),
        )
        # Only the columns the pass reads: `*` would carry every value along (~300 bytes a row).
        used = [
            c
            for c in (
                target.key_type_column,
                target.timestamp_column,
                target.tenant_column if by_tenant else None,
                target.expires_column if ttl else None,
            )
            if c is not None
        ]
        source = sql.SQL(
            "(SELECT {cols}, CASE WHEN {due} THEN {by_type} ELSE 0 END AS kc_code "
            # OFFSET 0 keeps the planner from inlining kc_code into each count that reads it.
            "FROM {table} OFFSET 0) AS kc_rows"
        ).format(
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in dict.fromkeys(used)),
            due=sql.SQL("({} OR {})").format(_aged(target, policy), expired),
            by_type=by_type,
            table=target.ident,
        )
    inner += [
        sql.SQL("count(*) FILTER (WHERE kc_code = {code}) AS {name}").format(
            code=sql.Literal(i + 1), name=sql.Identifier(f"k{i + 1}")
        )
        for i in range(len(reasons))
    ]
    inner.append(
        sql.SQL("count(*) FILTER (WHERE kc_code > 0 AND {x}) AS lkx").format(x=expired)
        if branches and ttl
        else sql.SQL("0 AS lkx")
    )
    inner.append(
        sql.SQL(
            "count(*) FILTER (WHERE kc_code > 0 AND {ts} >= {first} AND {ts} < %(orphan_cutoff)s) "
            "AS lkq"
        ).format(ts=ts, first=FIRST_TIMESTAMP)
        if branches and orphans
        else sql.SQL("0 AS lkq")
    )
    kept_sum = (
        sql.SQL(" + ").join(sql.Identifier(f"k{i + 1}") for i in range(len(reasons)))
        if reasons
        else sql.SQL("0")
    )

    def col(prefix: str, edge: datetime) -> sql.Composable:
        return sql.Identifier(f"{prefix}{index[edge]}")

    def at(prefix: str, pick: Callable[[datetime], datetime]) -> sql.Composable:
        """The `prefix` count at each group's own edge: pick(the type's cutoff)."""
        return _by_type(
            target,
            {t: col(prefix, pick(c)) for t, c in cutoffs.items()},
            col(prefix, pick(policy.cutoff)),
        )

    def lower(c: datetime) -> datetime:
        return min(c, grace)

    # Unqualified: the rows may come from the kc_rows subquery. In its own type: the auth
    # table and the measured set are compared with it as each DELETE compares them.
    tenant = sql.Identifier(target.tenant_column or "") if by_tenant else sql.SQL("NULL::text")
    noauth: sql.Composable = sql.SQL("false")
    member: sql.Composable = sql.SQL("false")
    if orphans and policy.orphans is not None:
        noauth = sql.SQL("(g.tn IS NOT NULL AND {})").format(
            _no_auth_row(target, policy.orphans, sql.SQL("g.tn"))
        )
        member = sql.SQL("coalesce(g.tn = ANY (%(orphan_tenants)s), false)")
    protected = (
        sql.SQL("coalesce(kt = ANY (%(protected)s::text[]), false)")
        if target.key_type_column is not None
        else sql.SQL("false")
    )
    # Per group: a = aged, u = aged or expired, q = quiet since the grace cutoff (a tenant's
    # key), qu = quiet and (aged or expired). Expired rows are x; those with an in-range
    # timestamp older than an edge are xts - xn(edge).
    derived = sql.SQL(
        """
        SELECT g.*, {protected} AS p, {noauth} AS noauth, {member} AS member,
               sum(fresh) OVER (PARTITION BY tn) AS tfresh, {kept_sum} AS lk,
               with_ts - {n_cut} + x - (xts - {xn_cut}) AS u,
               CASE WHEN tn IS NULL THEN 0 ELSE with_ts - {n_grace} END AS q,
               CASE WHEN tn IS NULL THEN 0
                    ELSE (with_ts - {n_low}) + (xts - {xn_grace}) - (xts - {xn_low}) END AS qu
        FROM g
        """
    ).format(
        protected=protected,
        noauth=noauth,
        member=member,
        kept_sum=kept_sum,
        n_cut=at("n", lambda c: c),
        xn_cut=at("xn", lambda c: c),
        n_grace=col("n", grace),
        xn_grace=col("xn", grace),
        n_low=at("n", lower),
        xn_low=at("xn", lower),
    )

    def total(expr: str) -> sql.Composable:
        return sql.SQL("sum(" + expr + ")::bigint")

    outer = [
        total("keys"),
        total("with_ts"),
        sql.SQL("min(oldest)"),
        sql.SQL("max(newest)"),
        total("oor"),
        *(total(f"n{i}") for i in range(len(distinct))),
        total("CASE WHEN p THEN 0 ELSE u - lk END"),  # eligible by age or TTL
        total("CASE WHEN p THEN u ELSE 0 END"),  # protected from them
        total("CASE WHEN p THEN 0 ELSE x - lkx END"),  # expired, less what Baileys needs
        total("CASE WHEN lost THEN q ELSE 0 END"),  # orphaned
        total("CASE WHEN NOT lost THEN 0 WHEN p THEN q ELSE q - (qu - lkq) END"),  # orphan_extra
        total("CASE WHEN lost AND p THEN qu ELSE 0 END"),  # protected_orphaned
        sql.SQL("coalesce(bool_and(noauth), false)"),
        sql.SQL("coalesce(bool_or(lost), false)"),
        total("fresh"),
        total("CASE WHEN p THEN 0 ELSE xts END"),
        *(total(f"CASE WHEN p THEN 0 ELSE xn{i} END") for i in range(len(distinct))),
        *(total(f"CASE WHEN p THEN 0 ELSE k{i + 1} END") for i in range(len(reasons))),
    ]
    if by_tenant:
        head = sql.SQL("kt, tn::text, GROUPING(kt)")
        group = sql.SQL("GROUPING SETS ((kt), (tn))")
    else:
        head = sql.SQL("kt, NULL::text, 0")
        group = sql.SQL("kt")
    query = sql.SQL(
        """
        WITH g AS (
          SELECT {kt} AS kt, {tenant} AS tn, {inner} FROM {source} GROUP BY 1, 2
        ), d0 AS ({derived}),
        -- Orphaned: no auth row, in the set, and no key of the tenant touched in the grace.
        d AS (SELECT d0.*, (noauth AND member AND tfresh = 0) AS lost FROM d0)
        SELECT {head}, {outer} FROM d GROUP BY {group}
        """
    ).format(
        kt=_key_type(target),
        tenant=tenant,
        inner=sql.SQL(", ").join(inner),
        source=source,
        derived=derived,
        head=head,
        outer=sql.SQL(", ").join(outer),
        group=group,
    )
    params = policy.params() | {f"e{i}": edge for i, edge in enumerate(distinct)}
    types: list[TypeCounts] = []
    tenants: list[TenantCounts] = []
    n = len(distinct)
    for r in conn.execute(query, params).fetchall():
        key_type, tenant_id, is_tenant, v = r[0], r[1], r[2], r[3:]
        extra = v[5 + n :]
        if is_tenant:
            tenants.append(
                TenantCounts(
                    tenant_id,
                    v[0],
                    extra[0],
                    extra[3],
                    extra[4],
                    extra[6],
                    fresh=extra[8],
                    confirmed=extra[7],
                )
            )
            continue
        types.append(
            TypeCounts(
                key_type=key_type,
                keys=v[0],
                with_timestamp=v[1],
                oldest=v[2],
                newest=v[3],
                out_of_range=v[4],
                newer_than=dict(zip(distinct, v[5 : 5 + n], strict=True)),
                eligible=extra[0],
                protected=extra[1],
                expired=extra[2],
                orphaned=extra[3],
                orphan_extra=extra[4],
                protected_orphaned=extra[5],
                expired_with_timestamp=extra[9],
                expired_newer_than=dict(zip(distinct, extra[10 : 10 + n], strict=True))
                if ttl
                else {},
                kept=_kept_by_reason(reasons, extra[10 + n :]),
            )
        )
    return Measurement(types, tenants)


def _kept_by_reason(reasons: list[KeepReason], counts: Sequence[int]) -> dict[KeepReason, int]:
    """The measured lifecycle counts per reason (prekey_window without the pre-keys of tenants
    without creds: the query gives those their own code)."""
    return dict(zip(reasons, counts, strict=True))


def auth_has_tenants(conn: Conn, target: Target, orphans: Orphans) -> bool:
    """True when the auth table holds a row with a tenant; raises psycopg.Error when it cannot be
    read, has no tenant column, or its tenant column cannot be compared with the key table's.

    The second subquery is planned, never run (LIMIT 0): planning is what checks the comparison.
    """
    col = sql.Identifier(target.tenant_column or "")
    row = _one(
        conn.execute(
            sql.SQL(
                """
                SELECT EXISTS (SELECT 1 FROM {auth} WHERE {col} IS NOT NULL),
                       (SELECT count(*) FROM (
                          SELECT 1 FROM {keys} WHERE EXISTS (
                            SELECT 1 FROM {auth} AS kc_auth WHERE kc_auth.{col} = {tenant})
                          LIMIT 0) AS planned)
                """
            ).format(auth=orphans.ident, col=col, keys=target.ident, tenant=_tenant(target))
        )
    )
    return bool(row[0])


@dataclass(frozen=True)
class AuthTable:
    """The table of the tenants' Baileys creds: one row per connected tenant."""

    schema: str
    name: str
    columns: dict[str, str]  # name -> type
    oid: int = 0

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)


def find_auth_table(conn: Conn, schema: str | None, name: str) -> AuthTable | None:
    """The auth table as PostgreSQL resolves the name (the search path when unqualified), with
    its columns; None when there is no such table or view visible to this role."""
    row = conn.execute(
        """
        SELECT c.oid, n.nspname, c.relname
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relname = %(name)s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND CASE WHEN %(schema)s::text IS NULL
                   THEN n.nspname = ANY (current_schemas(false))
                   ELSE n.nspname = %(schema)s END
        ORDER BY array_position(current_schemas(false), n.nspname::text)
        LIMIT 1
        """,
        {"schema": schema, "name": name},
    ).fetchone()
    if row is None:
        return None
    columns = table_columns(conn, row[0])
    return AuthTable(row[1], row[2], columns, row[0])


def column_collation(conn: Conn, oid: int, column: str) -> str | None:
    """A column's collation by name: None for a type without one, "default" for the
    database's."""
    row = conn.execute(
        "SELECT c.collname FROM pg_attribute a LEFT JOIN pg_collation c ON c.oid = a.attcollation "
        "WHERE a.attrelid = %s AND a.attname = %s AND NOT a.attisdropped",
        (oid, column),
    ).fetchone()
    return None if row is None else row[0]


def lock_shared(conn: Conn, ident: sql.Composable) -> None:
    """ACCESS SHARE on a table read by the statements to come, under the current lock_timeout:
    what a SELECT takes, taken first so that a timeout is known to be that table's."""
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(ident))


# Creds column types read as JSON in the database; text ones are parsed by the job.
JSON_TYPES = frozenset({"jsonb", "json"})
TEXT_TYPES = frozenset({"text", "character varying"})


def read_creds(
    conn: Conn, auth: AuthTable, tenant_column: str, creds_column: str
) -> list[tuple[str | None, object]]:
    """(tenant, creds) per auth row: only the pre-key counters and `me` of a JSON object (the
    rest of the creds, private keys included, never leaves the database), or the raw value
    when it is not an object (a JSON string holding it, or text) for the caller to parse."""
    kind = auth.columns[creds_column]
    creds = sql.Identifier(creds_column)
    value: sql.Composable
    if kind in JSON_TYPES:
        value = sql.SQL(
            "CASE WHEN jsonb_typeof({c}::jsonb) = 'object' THEN jsonb_build_object("
            "'nextPreKeyId', {c}::jsonb -> 'nextPreKeyId', "
            "'firstUnuploadedPreKeyId', {c}::jsonb -> 'firstUnuploadedPreKeyId', "
            "'me', jsonb_build_object('id', {c}::jsonb -> 'me' -> 'id', "
            "'lid', {c}::jsonb -> 'me' -> 'lid')) ELSE {c}::jsonb END"
        ).format(c=creds)
    else:
        value = sql.SQL("{}::text").format(creds)
    rows = conn.execute(
        sql.SQL("SELECT {tenant}::text, {value} FROM {auth}").format(
            tenant=sql.Identifier(tenant_column), value=value, auth=auth.ident
        )
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def listing_columns(target: Target, now_param: str = "now") -> sql.Composable:
    """Primary-key columns as text, the key type and the age in days; never the value.

    The age of a NULL or out-of-range timestamp is NULL (unknown): `now - 'infinity'` would
    fail the statement ("cannot subtract infinite timestamps").
    """
    key = sql.SQL("jsonb_build_array({})").format(
        sql.SQL(", ").join(
            sql.SQL("{}::text").format(sql.Identifier(c)) for c in key_columns(target)
        )
    )
    kt = _key_type(target)
    ts = timestamp_expr(target)
    age = sql.SQL("CASE WHEN {ok} THEN extract(epoch FROM {now} - {ts}) / 86400.0 END").format(
        ok=in_range(ts), now=sql.Placeholder(now_param), ts=ts
    )
    return sql.SQL("{key}, {kt}, {age}::float8").format(key=key, kt=kt, age=age)


def key_columns(target: Target) -> tuple[str, ...]:
    """Columns that name a key in listings: the primary key (never the value), else the ctid."""
    pk = tuple(c for c in target.primary_key if c != "value")
    return pk or ("ctid",)


Listing = list[tuple[list[str | None], str | None, float | None]]


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
    params = policy.params() | {"now": now, "limit": limit}
    return [(r[0], r[1], r[2]) for r in conn.execute(query, params).fetchall()]


# ---------------------------------------------------------------------------------------------
# Deletion


@dataclass(frozen=True)
class BatchResult:
    deleted: int
    by_type: dict[str | None, int] | None  # None: not counted per type (the plain DELETE)
    listed: Listing
    orphaned: int = 0  # of `deleted`, keys of the orphan rule's measured tenants


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
    params = policy.params() | {
        "lo": f"({first_page},0)",
        "hi": f"({end_page},0)",
        "now": now,
        "list_limit": list_limit,
    }
    orphans = applies_orphans(target, policy)
    if not count_by_type and list_limit <= 0 and not orphans:
        cur = conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(target.ident, where), params)
        return BatchResult(cur.rowcount, None, [])
    item: sql.Composable
    listing: sql.Composable
    if list_limit > 0:
        item = sql.SQL("jsonb_build_array({cols})").format(cols=listing_columns(target))
        listing = sql.SQL("(array_agg(item))[1:%(list_limit)s]")
    else:
        item = sql.SQL("NULL::jsonb")
        listing = sql.SQL("NULL::jsonb[]")
    query = sql.SQL(
        """
        WITH deleted AS (
          DELETE FROM {table} WHERE {where}
          RETURNING {kt} AS key_type, {member} AS kc_o, {item} AS item
        )
        SELECT key_type, count(*), count(*) FILTER (WHERE kc_o), {listing}
        FROM deleted GROUP BY key_type
        """
    ).format(
        table=target.ident,
        where=where,
        kt=_key_type(target),
        member=in_orphan_set(target) if orphans else sql.SQL("false"),
        item=item,
        listing=listing,
    )
    by_type: dict[str | None, int] = {}
    listed: Listing = []
    orphaned = 0
    for key_type, count, of_orphans, items in conn.execute(query, params).fetchall():
        by_type[key_type] = int(count)
        orphaned += int(of_orphans)
        listed.extend((entry[0], entry[1], entry[2]) for entry in items or ())
    deleted = sum(by_type.values())
    return BatchResult(deleted, by_type, listed, orphaned)


def lock_for_delete_then_row_wait(
    conn: Conn, target: Target, *, row_wait_ms: int | None, shared: sql.Composable | None = None
) -> None:
    """The table lock a DELETE takes (under the current lock_timeout), then, once it is held,
    lock_timeout = row_wait_ms for the rows: two statements in one round trip. A timeout here
    is always the table lock's. With `shared`, that table's ACCESS SHARE lock (the one the
    DELETE's subquery takes) instead of the row wait: `row_wait_ms` is then None and set by
    the caller after it."""
    row_wait = (
        sql.SQL("; SELECT set_config('lock_timeout', {}, true)").format(
            sql.Literal(f"{max(1, row_wait_ms)}ms")
        )
        if row_wait_ms is not None
        else sql.SQL("")
    )
    conn.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE{}").format(target.ident, row_wait))


def lock_shared_then_row_wait(conn: Conn, table: sql.Composable, *, row_wait_ms: int) -> None:
    """ACCESS SHARE on a table the DELETE reads (under the current lock_timeout), then the row
    wait as above: a timeout here is always that table's lock."""
    conn.execute(
        sql.SQL(
            "LOCK TABLE {} IN ACCESS SHARE MODE; SELECT set_config('lock_timeout', {}, true)"
        ).format(table, sql.Literal(f"{max(1, row_wait_ms)}ms"))
    )


def vacuum_analyze(conn: Conn, target: Target) -> list[str]:
    """VACUUM (ANALYZE) the table; returns the server's notices (e.g. a permission skip)."""
    notices: list[str] = []

    def collect(diag: psycopg.errors.Diagnostic) -> None:
        if diag.message_primary:
            notices.append(diag.message_primary)

    conn.add_notice_handler(collect)
    try:
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(target.ident))
    finally:
        conn.remove_notice_handler(collect)
    return notices


# ---------------------------------------------------------------------------------------------
# Run history: one row per live run, for duplicate deliveries and the size trend.


def history_ident(schema: str | None, name: str) -> sql.Composable:
    return sql.Identifier(schema, name) if schema else sql.Identifier(name)


def history_exists(conn: Conn, schema: str | None, name: str) -> bool:
    ident = history_ident(schema, name).as_string(conn)
    return _one(conn.execute("SELECT to_regclass(%s) IS NOT NULL", (ident,)))[0] is True


def missing_live_privileges(
    conn: Conn, target: Target, history: tuple[str | None, str] | None
) -> tuple[list[str], list[str]]:
    """What a live run needs that this role lacks: (fatal, history), as `PRIVILEGE on object`.

    Fatal: DELETE on the key table (the first batch would fail with permission denied).
    History (a live run goes on without it, with a note): SELECT and INSERT on the history
    table and USAGE on its id sequence, or CREATE on the schema it would be created in.
    """
    fatal: list[str] = []
    if not _one(conn.execute("SELECT has_table_privilege(%s::oid, 'DELETE')", (target.oid,)))[0]:
        fatal.append(f"DELETE on {target.qualified}")
    if history is None:
        return fatal, []
    schema, name = history
    ident = history_ident(schema, name).as_string(conn)
    row = _one(
        conn.execute(
            """
            SELECT c.oid IS NOT NULL, n.nspname, c.relname,
                   has_table_privilege(c.oid, 'SELECT'), has_table_privilege(c.oid, 'INSERT'),
                   s.seq, s.seq IS NULL OR has_sequence_privilege(s.seq, 'USAGE'),
                   coalesce(%(schema)s, current_schema()),
                   has_schema_privilege(coalesce(%(schema)s, current_schema()), 'CREATE')
            FROM (SELECT to_regclass(%(ident)s) AS oid) r
            LEFT JOIN pg_class c ON c.oid = r.oid
            LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN LATERAL (SELECT pg_get_serial_sequence(%(ident)s, 'id') AS seq) s
              ON c.oid IS NOT NULL
            """,
            {"ident": ident, "schema": schema},
        )
    )
    exists, nsp, rel, can_select, can_insert, seq, can_use_seq, home, can_create = row
    lacking: list[str] = []
    if exists:
        qualified = f"{nsp}.{rel}"
        lacking += [
            f"{p} on {qualified}"
            for p, ok in (("SELECT", can_select), ("INSERT", can_insert))
            if not ok
        ]
        if not can_use_seq:
            lacking.append(f"USAGE on the sequence {seq}")
    elif not can_create:
        lacking.append(
            f"CREATE on the schema {home} (to create {name}; or run keys-cleanup init-db)"
        )
    return fatal, lacking


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
    row = conn.execute(
        sql.SQL(
            "SELECT max(finished_at) FROM {} WHERE event_id = %s AND target_table = %s "
            "AND status = 'completed'"
        ).format(history_ident(schema, name)),
        (event_id, target_table),
    ).fetchone()
    return row[0] if row else None


@dataclass(frozen=True)
class HistoryRow:
    event_id: str | None
    target_table: str
    started_at: datetime
    status: str
    keys_before: int | None
    keys_after: int | None
    total_bytes_before: int | None
    total_bytes_after: int | None
    eligible: int
    deleted: int
    duration_ms: int
    report_json: str
    # The orphan rule's candidates (tenants without an auth row, every key untouched for the
    # grace) when this run measured them: the next run's confirmation. Kept in the report
    # column under "orphan_candidate_ids", so the history table needs no new column nor grant.
    orphan_candidates: list[str] | None = None


def insert_history(conn: Conn, schema: str | None, name: str, row: HistoryRow) -> None:
    conn.execute(
        sql.SQL(
            """
            INSERT INTO {} (event_id, target_table, started_at, status, keys_before, keys_after,
                            total_bytes_before, total_bytes_after, eligible, deleted, duration_ms,
                            report)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                    %s::jsonb
                    || jsonb_strip_nulls(jsonb_build_object('orphan_candidate_ids', %s::text[])))
            """
        ).format(history_ident(schema, name)),
        (
            row.event_id,
            row.target_table,
            row.started_at,
            row.status,
            row.keys_before,
            row.keys_after,
            row.total_bytes_before,
            row.total_bytes_after,
            row.eligible,
            row.deleted,
            row.duration_ms,
            row.report_json,
            row.orphan_candidates,
        ),
    )


def orphan_candidates(
    conn: Conn, schema: str | None, name: str, target_table: str, before: datetime
) -> list[list[str]] | None:
    """The orphan candidates' ids recorded by the last run that started at or before `before`, and
    by every run since, oldest first; None when no run up to `before` recorded any."""
    table = history_ident(schema, name)
    rows = conn.execute(
        sql.SQL(
            """
            SELECT report -> 'orphan_candidate_ids' FROM {table}
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
    return [[str(t) for t in r[0] or ()] for r in rows]


@dataclass(frozen=True)
class DayTrend:
    day: datetime
    table: str
    runs: int
    statuses: str
    keys: int | None
    total_bytes: int | None
    deleted: int
    duration_ms: int


def history_trend(
    conn: Conn, schema: str | None, name: str, days: int, target_table: str | None
) -> list[DayTrend]:
    """Per day and table, newest first: runs, the last run's keys and size after, deleted and
    time; of `target_table` only, or of every table when None."""
    table_filter = sql.SQL("AND target_table = %(target)s") if target_table else sql.SQL("")
    rows = conn.execute(
        sql.SQL(
            """
            SELECT date_trunc('day', started_at, 'UTC') AS day,
                   target_table,
                   count(*),
                   string_agg(DISTINCT status, ',' ORDER BY status),
                   (array_agg(coalesce(keys_after, keys_before) ORDER BY started_at DESC))[1],
                   (array_agg(coalesce(total_bytes_after, total_bytes_before)
                              ORDER BY started_at DESC))[1],
                   sum(deleted),
                   sum(duration_ms)
            FROM {table}
            WHERE started_at >= now() - make_interval(days => %(days)s) {table_filter}
            GROUP BY 1, 2
            ORDER BY 1 DESC, 2
            """
        ).format(table=history_ident(schema, name), table_filter=table_filter),
        {"days": days, "target": target_table},
    ).fetchall()
    return [DayTrend(r[0], r[1], r[2], r[3], r[4], r[5], int(r[6]), int(r[7])) for r in rows]


def stalled_runs_before(
    conn: Conn, schema: str | None, name: str, target_table: str, limit: int
) -> int:
    """How many of the table's last recorded runs, newest first and at most `limit`, ended
    `partial` having deleted nothing, before the first one that did not."""
    rows = conn.execute(
        sql.SQL(
            "SELECT status = 'partial' AND deleted = 0 FROM {} WHERE target_table = %s "
            "ORDER BY finished_at DESC, id DESC LIMIT %s"
        ).format(history_ident(schema, name)),
        (target_table, limit),
    ).fetchall()
    count = 0
    for (stalled,) in rows:
        if not stalled:
            break
        count += 1
    return count


@dataclass(frozen=True)
class RunPoint:
    finished_at: datetime
    keys: int
    total_bytes: int


def recent_runs(
    conn: Conn, schema: str | None, name: str, target_table: str | None, limit: int
) -> list[RunPoint]:
    """The last `limit` runs that measured the table (of `target_table`, or of any table),
    oldest first: keys and total size as each left it (after, or before when not measured)."""
    table_filter = sql.SQL("AND target_table = %(target)s") if target_table else sql.SQL("")
    rows = conn.execute(
        sql.SQL(
            """
            SELECT finished_at, keys, total_bytes FROM (
              SELECT id, finished_at,
                     coalesce(keys_after, keys_before) AS keys,
                     coalesce(total_bytes_after, total_bytes_before) AS total_bytes
              FROM {table}
              WHERE coalesce(keys_after, keys_before) IS NOT NULL
                AND coalesce(total_bytes_after, total_bytes_before) IS NOT NULL {table_filter}
              ORDER BY finished_at DESC, id DESC
              LIMIT %(limit)s
            ) AS recent
            ORDER BY finished_at, id
            """
        ).format(table=history_ident(schema, name), table_filter=table_filter),
        {"target": target_table, "limit": limit},
    ).fetchall()
    return [RunPoint(r[0], int(r[1]), int(r[2])) for r in rows]


# ---------------------------------------------------------------------------------------------
# Pacing: WAL position, replica lag, checkpoint settings


@dataclass(frozen=True)
class ReplicationState:
    """The primary's WAL position and how far each standby and logical slot is behind it."""

    lsn: int  # bytes since 0/0
    lags: list[Lag]
    # Streaming standbys whose positions this role may not read (it lacks pg_read_all_stats,
    # which pg_monitor includes): their lag is not watched.
    hidden_standbys: int
    # Logical slots no consumer is connected to: not waited for (an abandoned slot would
    # otherwise stop every run for good), named in a note.
    idle_slots: list[Lag] = field(default_factory=list)


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
    rows = conn.execute(
        """
        WITH pos AS (SELECT pg_current_wal_insert_lsn() AS lsn)
        SELECT 'lsn', NULL::text, NULL::text, lsn - '0/0'::pg_lsn FROM pos
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
    lsn, hidden, lags, idle = 0, 0, [], []
    for kind, name, addr, value in rows:
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
    return int(_one(conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"))[0])


def nudge_standbys(conn: Conn) -> None:
    """Commit a transaction with an xid: one small WAL record that makes standbys report.

    A standby reports its replay position when it receives WAL, else only every
    wal_receiver_status_interval (10 s by default). While the run waits for it, no WAL flows,
    so the primary's view of its lag would stay as it was when the wait began. (The commit is
    asynchronous, as it writes no other WAL: the WAL writer sends it within wal_writer_delay.)
    """
    conn.execute("SELECT pg_current_xact_id()")


@dataclass(frozen=True)
class CheckpointSettings:
    max_wal_size: int  # bytes
    completion_target: float
    timeout_s: float
    since_checkpoint: int | None  # WAL bytes since the last checkpoint's redo point


def checkpoint_settings(conn: Conn) -> CheckpointSettings:
    """The settings that decide when WAL volume forces a checkpoint, and how close it is.

    pg_control_checkpoint() is executable by PUBLIC on stock PostgreSQL; where a provider
    revoked it, the distance to the next checkpoint is unknown (None).
    """
    row = _one(
        conn.execute(
            """
            SELECT pg_size_bytes(current_setting('max_wal_size')),
                   current_setting('checkpoint_completion_target')::float8,
                   extract(epoch FROM current_setting('checkpoint_timeout')::interval)::float8
            """
        )
    )
    try:
        since = _one(
            conn.execute("SELECT pg_current_wal_lsn() - redo_lsn FROM pg_control_checkpoint()")
        )[0]
    except psycopg.errors.InsufficientPrivilege:
        since = None
    return CheckpointSettings(
        int(row[0]), float(row[1]), float(row[2]), None if since is None else int(since)
    )
