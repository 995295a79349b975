"""The job's domain types: what the SQL layer (handler/db/) returns and the policies
(rules.py, pacing.py, lifecycle.py) and the engine work with.

Plain frozen dataclasses. This module imports nothing from handler, so the policies and the
SQL both import their types from here and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, NamedTuple

from psycopg import sql

# The age buckets' inner edges, in days: <1d, 1-7d, 7-14d, 14-30d, >30d. The one definition:
# the measuring pass takes these edges, and the report names its buckets after them
# (handler.report.AGE_BUCKETS).
BUCKET_DAYS: tuple[int, ...] = (1, 7, 14, 30)

# Keys the job keeps for the key lifecycle, and why (the report shows one line per reason).
KeepReason = Literal[
    "prekey_window",
    "prekey_no_creds",
    "prekey_creds_changed",
    "own_session",
    "own_unknown",
    "own_sender_key",
    "index",
]

# Ids compared as numbers are at most this many digits: larger ones (or any other text) are
# not Baileys pre-key ids, and are kept. Baileys' ids fit 3 bytes on the wire (xmppPreKey).
MAX_ID_DIGITS = 15


@dataclass(frozen=True)
class CredsCheck:
    """Without a timestamp, each DELETE finds every session's creds row again and takes its
    pre-keys only while the row is the one read (`hashes`: session -> md5 of the value as read):
    a session that pairs again during the run mints pre-keys below the window read, with no
    timestamp to show that they are new. `auth` is the auth table (columns layout, with its
    tenant and creds columns); None: the creds rows are in the key table (encoded layout)."""

    hashes: dict[str, str]
    auth: tuple[str, str, str, str] | None = None  # schema, table, tenant column, creds column


@dataclass(frozen=True)
class Lifecycle:
    """The per-tenant facts each batch's DELETE checks (see db.lifecycle_keep).

    `windows`: tenant -> [lowest kept id, highest kept id] of its pre-keys; a tenant absent
    from it keeps every pre-key. `own_users`: tenant -> the user parts of its own JIDs; a
    tenant absent from it has unknown own devices: its sender keys are all treated as our own,
    and its sessions are kept when its own devices should be known (`unknown_own`).
    """

    windows: dict[str, tuple[int, int]] = field(default_factory=dict)
    own_users: dict[str, tuple[str, ...]] = field(default_factory=dict)
    prekey_age_only: bool = False
    recheck: CredsCheck | None = None
    # Own devices that should be known and are not, so sessions are kept: `unknown_own`, the
    # tenants whose creds row names no account (unreadable, or without `me`); `own_unread`,
    # every tenant (the auth table could not be read). A tenant without a creds row has no
    # account (logged out): its sessions go by the retention.
    unknown_own: tuple[str, ...] = ()
    own_unread: bool = False


@dataclass(frozen=True)
class Lag:
    """How far one standby or logical replication slot is behind the primary's WAL."""

    name: str  # "standby <application_name> (<client_addr>)" or "slot <slot_name>"
    bytes: int


def table_ident(schema: str | None, name: str) -> sql.Composable:
    """`schema.name`, or `name` alone (resolved on the search path) when schema is None."""
    return sql.Identifier(schema, name) if schema else sql.Identifier(name)


class Relation(NamedTuple):
    """A relation as the catalog names it."""

    oid: int
    schema: str
    name: str
    relkind: str


@dataclass(frozen=True)
class Encoded:
    """The encoded layout's parts: the key column ("<type>-<id>", after "<session><separator>"
    when `separator` is set), the value column (the creds' JSON) and the creds row's key."""

    key_column: str
    value_column: str
    creds_key: str
    separator: str | None = None
    value_type: str = "text"


class _SchemaQualified:
    """A table named by `schema` and `name`: its qualified text name and its SQL identifier."""

    schema: str
    name: str

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)


@dataclass(frozen=True)
class TableName(_SchemaQualified):
    """A table by its name alone."""

    schema: str
    name: str


@dataclass(frozen=True)
class Target(_SchemaQualified):
    """A resolved, validated target table."""

    oid: int
    schema: str
    name: str
    timestamp_column: str | None  # None: the table has no timestamp (the age rule is off)
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
    # The encoded layout (docs/layouts.md): set when the keys are "<type>-<id>" in one column.
    encoded: Encoded | None = None
    # Declaratively partitioned (relkind p): measured over the parent, deleted leaf by leaf.
    partitioned: bool = False
    # The name the table's rows go by in the statement, when not its own: the measuring pass
    # over a partitioned table reads them through a subquery (handler/db/measure.py _source).
    row_alias: str | None = None
    # On the delete loop's copy for one leaf of a partitioned table: the partitioned table. The
    # lookups of other rows (a group's memory row, a creds row) read it, not the leaf: those
    # rows may sit in another leaf when the table is not partitioned by tenant.
    whole: TableName | None = None

    @property
    def whole_ident(self) -> sql.Composable:
        """The table whose rows the lookups read: the partitioned table for a leaf's copy."""
        return (self.whole or self).ident

    @property
    def has_key_types(self) -> bool:
        return self.encoded is not None or self.key_type_column is not None

    @property
    def has_tenant(self) -> bool:
        return self.tenant_column is not None or (
            self.encoded is not None and self.encoded.separator is not None
        )


@dataclass(frozen=True)
class AuthTable(_SchemaQualified):
    """The table of the tenants' Baileys creds: one row per connected tenant."""

    schema: str
    name: str
    columns: dict[str, str]  # name -> type
    oid: int = 0


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
    # The auth table's tenant column (CLEANUP_AUTH_TENANT_COLUMN); None: the key table's.
    tenant_column: str | None = None

    @property
    def ident(self) -> sql.Composable:
        return table_ident(self.schema, self.table)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table


@dataclass(frozen=True)
class Policy:
    """Which rows are eligible, by three rules (see docs/rules.md).

    Age: older than their type's cutoff, and not of a protected type. TTL (with `expires_now`):
    expiry before that instant, and not of a protected type. Orphans (with `orphans`): the
    tenant has no row in the auth table and the key is untouched since the grace cutoff,
    protected types included. Its SQL parameters: db.predicates.policy_params.
    """

    cutoff: datetime
    protected: tuple[str, ...] = ()
    type_cutoffs: dict[str, datetime] = field(default_factory=dict)
    expires_now: datetime | None = None
    orphans: Orphans | None = None
    # The key-lifecycle rules (docs/key-lifecycle.md): keys Baileys still needs, kept whatever
    # their age. None: not applied (no key-type or key-id column).
    lifecycle: Lifecycle | None = None


@dataclass(frozen=True)
class Sizes:
    table_bytes: int
    index_bytes: int
    total_bytes: int
    pages: int


@dataclass(frozen=True)
class Leaf:
    """A leaf partition of a partitioned target (or the plain target itself): the relation a
    batch's DELETE names, and its heap's pages when the run measured."""

    oid: int
    schema: str
    name: str
    pages: int
    # Its storage file: a VACUUM FULL, CLUSTER or TRUNCATE gives it a new one, and a run's
    # resume point (handler/resume.py) is then void.
    relfilenode: int = 0


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
    # Of `eligible` and `orphan_extra`, the keys before the resume point (handler/resume.py):
    # in the pages an earlier run already walked. 0 when the run does not resume.
    head_eligible: int = 0
    head_orphan_extra: int = 0

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


class ListedKey(NamedTuple):
    """A key as listings show it: its primary key as text, its type and its age in days."""

    key: list[str | None]
    key_type: str | None
    age_days: float | None


Listing = list[ListedKey]


@dataclass(frozen=True)
class BatchResult:
    deleted: int
    by_type: dict[str | None, int] | None  # None: not counted per type (the plain DELETE)
    listed: Listing
    orphaned: int = 0  # of `deleted`, keys of the orphan rule's measured tenants


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
    remaining: int | None = None  # the backlog the day's last run left (null: not recorded)


@dataclass(frozen=True)
class RunPoint:
    finished_at: datetime
    keys: int
    total_bytes: int
    remaining: int | None = None  # the backlog the run left, as its report recorded it


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


@dataclass(frozen=True)
class CheckpointSettings:
    max_wal_size: int  # bytes
    completion_target: float
    timeout_s: float
    since_checkpoint: int | None  # WAL bytes since the last checkpoint's redo point
