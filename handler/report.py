"""The Report: the one typed result of a run, and its plain-text rendering.

Every entry point returns or prints this model; notifiers take it and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import pairwise
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from handler.domain import BUCKET_DAYS as BUCKET_DAYS  # noqa: PLC0414 - the engine's name

Status = Literal["completed", "partial", "skipped", "aborted"]
# The orphan rule: not configured, applied, or refused for this run (see the notes for why).
OrphanRule = Literal["off", "applied", "refused"]

# Age buckets, in days: label -> [low, high), from the one definition of the edges
# (domain.BUCKET_DAYS): <1d, 1-7d, 7-14d, 14-30d, >30d. Order matters for rendering.
AGE_BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    (f"<{BUCKET_DAYS[0]}d", 0, BUCKET_DAYS[0]),
    *((f"{lo}-{hi}d", lo, hi) for lo, hi in pairwise(BUCKET_DAYS)),
    (f">{BUCKET_DAYS[-1]}d", BUCKET_DAYS[-1], None),
)
BUCKET_LABELS: tuple[str, ...] = tuple(label for label, _, _ in AGE_BUCKETS)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TableStats(_Model):
    """Size of the target table at one moment."""

    keys: int
    table_bytes: int
    index_bytes: int
    total_bytes: int
    # False after a live run: keys = keys before - deleted, not a recount (sizes are measured).
    keys_counted: bool = True


class TypeStats(_Model):
    """Counts for one key type."""

    keys: int
    eligible: int = 0
    protected: int = 0
    deleted: int | None = 0  # None: not counted per type in this run (see Report.reason)
    retention_days: int | None = None  # None: protected, never aged out
    expired: int = 0  # eligible by the TTL rule (some are old enough for the age rule too)
    orphaned: int = 0  # eligible by the orphan rule (protected types included)
    kept: int = 0  # old enough, but kept because Baileys still needs them (Report.kept)


class KeptKeys(_Model):
    """Keys old enough for the age (or TTL) rule that the key lifecycle keeps, and why."""

    key_type: str
    keys: int
    reason: str


class TenantStats(_Model):
    """One tenant among those with the most keys. The id is an identifier: never a Sentry tag."""

    tenant: str | None
    keys: int
    eligible: int = 0
    orphaned: int = 0


class KeyEntry(_Model):
    """One affected key in the verbose listing. Never carries the value column."""

    key: dict[str, str | None]  # primary-key columns -> value as text
    key_type: str | None
    age_days: float | None


class TrendPoint(_Model):
    """One earlier run from the run history: the table as that run left it."""

    finished_at: datetime
    keys: int
    total_bytes: int
    remaining: int | None = None  # the backlog that run left (null: not recorded)


class ResumePoint(_Model):
    """Where a partial run's delete loop stopped in one relation (the table, or a leaf
    partition): the next run starts there if the relation still has this storage file
    (handler/resume.py)."""

    oid: int = Field(ge=0)
    relfilenode: int = Field(ge=0)
    block: int = Field(ge=0)


class Drain(_Model):
    """A backlog drained over several runs: the live runs in a row that ran the delete loop,
    the first being the one after the last `completed` run, this one included."""

    runs: int = 1
    deleted: int = 0  # keys deleted by those runs, this one included
    since: datetime | None = None  # when the first of them started
    # Where this run stopped, for the next one; empty when it completed.
    resume: list[ResumePoint] = Field(default_factory=list)


# How many recorded runs the trend spans.
TREND_RUNS = 7
# Live runs in a row ending `partial` with nothing deleted that make an alert: one can be a
# locked table or a busy night; two in a row (two days, scheduled) is a job that is stuck.
STALLED_ALERT_RUNS = 2


class Report(_Model):
    status: Status
    dry_run: bool
    table: str
    timestamp_column: str | None
    key_type_column: str | None
    retention_days: int
    retention_overrides: dict[str, int] = Field(default_factory=dict)
    protected_types: list[str] = Field(default_factory=list)
    cutoff: datetime | None = None  # from the database clock
    started_at: datetime | None = None
    eligible: int = 0
    protected: int = 0
    deleted: int = 0
    before: TableStats | None = None  # None when skipped before measuring
    after: TableStats | None = None  # None when not measured (skipped, aborted, lock timeout)
    age_distribution: dict[str, int] = Field(
        default_factory=lambda: dict.fromkeys(BUCKET_LABELS, 0)
    )
    no_timestamp: int = 0  # rows whose timestamp is NULL: never eligible
    # Rows whose timestamp is infinity, -infinity, a BC date or past year 9999: never eligible,
    # left out of the age distribution, oldest and newest.
    out_of_range_timestamps: int = 0
    oldest: datetime | None = None
    newest: datetime | None = None
    by_type: dict[str, TypeStats] = Field(default_factory=dict)
    # Keys past the retention that Baileys still needs, per type and reason (not eligible):
    # docs/key-lifecycle.md.
    kept: list[KeptKeys] = Field(default_factory=list)
    # The TTL rule: the column used (None: none), and the unprotected keys whose expiry passed,
    # in all and per age bucket. They are part of `eligible`, each key counted once there.
    expires_column: str | None = None
    expired: int = 0
    expired_by_age: dict[str, int] = Field(default_factory=dict)
    # The orphan rule (docs/rules.md): keys of tenants without a row in `auth_table`, none of
    # whose keys was touched for `orphan_grace_days`, found so by a run at least an hour
    # earlier too. `orphaned_tenants`: that measured set (ids: verbose runs); `orphaned`: its
    # keys, 0 unless the rule was applied; `orphaned_deleted`: of `deleted`, the keys of those
    # tenants. `orphan_candidates`: the tenants this run found so (recorded for the next run).
    auth_table: str | None = None
    orphan_rule: OrphanRule = "off"
    orphan_grace_days: int | None = None
    orphaned: int = 0
    orphaned_tenants: int = 0
    orphaned_tenant_ids: list[str] = Field(default_factory=list)
    orphaned_deleted: int = 0
    orphan_candidates: int = 0
    top_tenants: list[TenantStats] = Field(default_factory=list)
    # Measured: total_bytes before - after (about 0 without VACUUM); None when the sizes after
    # the live run could not be measured (a lock timeout).
    released_bytes: int | None = 0
    reclaimable_bytes: int = 0  # estimated: bytes of the deleted rows, now reusable
    vacuumed: bool = False
    batches: int = 0
    batch_retries: int = 0
    skipped_pages: int = 0  # pages left alone because the application held rows there
    max_batch_ms: int = 0
    max_batch_rows: int = 0  # most rows one batch deleted (aimed at CLEANUP_BATCH_SIZE)
    throttle_waits: int = 0  # waits for a lagging standby or logical slot
    throttle_wait_ms: int = 0
    pacing_wait_ms: int = 0  # pauses that kept the run's WAL within its budget
    # WAL written while the batches ran: from each batch's start to its end, server-wide (the
    # application's WAL in those moments too, its WAL during the pauses not)
    wal_bytes: int = 0
    duration_ms: int = 0
    keys: list[KeyEntry] = Field(default_factory=list)
    keys_omitted: int = 0
    reason: str | None = None  # why the run ended as it did (skipped, aborted, partial)
    # What an operator should know that did not change the outcome: a setting that matched no
    # key, an unknown variable, VACUUM or history trouble, keys left for the next run.
    notes: list[str] = Field(default_factory=list)
    # The safety guard stopped this live run (status aborted), or would stop a live run with
    # these numbers (dry run, status completed).
    guard_triggered: bool = False
    # A dry run found that this role lacks a privilege a live run needs (DELETE on the key
    # table); a note names it. The CLI exits 4.
    live_run_would_fail: bool = False
    event_id: str | None = None
    duplicate: bool = False  # this event already completed: acknowledged, not run, not notified
    # Live runs in a row, this one included, that ended `partial` having deleted nothing (the
    # run history's earlier runs of this table); 0 when this run deleted or did not stop.
    # From STALLED_ALERT_RUNS on, an alarm and Telegram say the job is stuck.
    stalled_runs: int = 0
    # The backlog: eligible keys left for a later run, 0 when the loop completed without
    # skipping a page, else those it measured and did not delete (null: no live run of the
    # delete loop); `drain`: the runs so far since the last completed one (failed ones that ran
    # the loop included), with their total.
    remaining: int | None = None
    drain: Drain | None = None
    trend: list[TrendPoint] = Field(default_factory=list)  # last runs, oldest first

    @property
    def mode(self) -> str:
        return "dry_run" if self.dry_run else "live"

    @property
    def stalled(self) -> bool:
        """Stuck: STALLED_ALERT_RUNS or more live runs in a row ended partial, deleting nothing."""
        return self.stalled_runs >= STALLED_ALERT_RUNS

    @property
    def stopped_by_guard(self) -> bool:
        """The guard stopped it, or would stop the live run (exit code 3 for both)."""
        return self.status == "aborted" or self.guard_triggered


# --- Where each figure is shown --------------------------------------------------------------

# When a figure goes into the "run finished" log line: always, when truthy, when known (not
# None), never, or when a test of the report says so.
LogWhen = Literal["always", "if_set", "if_known", "never"] | Callable[["Report"], bool]
MetricUnitName = Literal["Count", "Bytes", "Milliseconds"]
Rendering = Literal["text", "telegram"]


@dataclass(frozen=True)
class Metric:
    """An EMF metric: its name in the namespace, and its unit (a CloudWatch unit name)."""

    name: str
    unit: MetricUnitName = "Count"


@dataclass(frozen=True)
class Figure:
    """One figure of the report and where it is shown.

    `name` is a Report field, or a figure derived from them (`get`); it is also the key in the
    "run finished" log line. `log`: when it is in that line. `metric`: the EMF metric it feeds
    (not emitted when the value is None). `sentry`: in the Sentry event's `cleanup` context (a
    Report field as the JSON dump has it; a derived figure by its value). `shown`: the
    renderings that show it (render_text, the Telegram summary in notify/html.py); with
    `label`, as a generic `label: value` line there, else in a place of its own.
    """

    name: str
    get: Callable[[Report], Any] | None = None
    log: LogWhen = "always"
    metric: Metric | None = None
    sentry: bool = True
    shown: tuple[Rendering, ...] = ()
    label: str | None = None

    def value(self, report: Report) -> Any:
        return getattr(report, self.name) if self.get is None else self.get(report)

    def logged(self, report: Report, value: Any) -> bool:
        if callable(self.log):
            return self.log(report)
        return {
            "always": True,
            "if_set": bool(value),
            "if_known": value is not None,
            "never": False,
        }[self.log]


def _before(attr: str) -> Callable[[Report], Any]:
    return lambda r: None if r.before is None else getattr(r.before, attr)


def _after(attr: str) -> Callable[[Report], Any]:
    return lambda r: None if r.after is None else getattr(r.after, attr)


def _age(label: str) -> Callable[[Report], Any]:
    # Sizes and counts as the run found the table: nothing when it was not measured.
    return lambda r: None if r.before is None else r.age_distribution.get(label, 0)


def _measured(name: str) -> Callable[[Report], Any]:
    # A count of the measuring pass: nothing (not 0) when the table was not measured (a run
    # skipped for the lock or as a duplicate event).
    return lambda r: None if r.before is None else getattr(r, name)


def _if_measured(r: Report) -> bool:
    return r.before is not None


def _ttl(r: Report) -> bool:
    return r.expires_column is not None and r.before is not None


def _orphan_rule(r: Report) -> bool:
    return r.orphan_rule != "off"


def _orphans_measured(r: Report) -> bool:
    return _orphan_rule(r) and r.before is not None


def bucket_metric(label: str) -> str:
    """ "<1d" -> "KeysAge0to1d", ..., ">30d" -> "KeysAgeOver30d": metric names without symbols."""
    low, high = next((lo, hi) for name, lo, hi in AGE_BUCKETS if name == label)
    return f"KeysAgeOver{low}d" if high is None else f"KeysAge{low}to{high}d"


BOTH: tuple[Rendering, ...] = ("text", "telegram")
TEXT: tuple[Rendering, ...] = ("text",)
TELEGRAM: tuple[Rendering, ...] = ("telegram",)
_NEVER: LogWhen = "never"

# Every Report field, and the figures derived from them, in the order of the log line. A new
# figure is one line here (and its field in the Report); docs/report.md describes each field.
FIGURES: tuple[Figure, ...] = (
    Figure("status", shown=BOTH),
    Figure("mode", get=lambda r: r.mode, shown=BOTH),
    Figure("dry_run", log=_NEVER, shown=BOTH),
    Figure("table", shown=BOTH),
    Figure("timestamp_column", log=_NEVER),
    Figure("key_type_column", log=_NEVER, shown=BOTH),
    Figure("retention_days", shown=BOTH),
    Figure("retention_overrides", log=_NEVER, shown=TEXT),
    Figure("protected_types", log=_NEVER, shown=TEXT),
    Figure("cutoff", get=lambda r: r.cutoff.isoformat() if r.cutoff else None, shown=BOTH),
    Figure("started_at", log=_NEVER, shown=TELEGRAM),
    Figure(
        "eligible",
        get=_measured("eligible"),
        log=_if_measured,
        metric=Metric("KeysEligible"),
        shown=BOTH,
    ),
    Figure(
        "protected",
        get=_measured("protected"),
        log=_if_measured,
        metric=Metric("KeysProtected"),
        shown=BOTH,
    ),
    Figure("deleted", metric=Metric("KeysDeleted"), shown=BOTH),
    Figure("released_bytes", log="if_known", metric=Metric("ReleasedBytes", "Bytes"), shown=BOTH),
    Figure("reclaimable_bytes", metric=Metric("ReclaimableBytes", "Bytes"), shown=BOTH),
    Figure("batches", metric=Metric("Batches"), shown=BOTH),
    Figure("max_batch_ms", metric=Metric("MaxBatchMs", "Milliseconds"), shown=BOTH),
    Figure("max_batch_rows", metric=Metric("MaxBatchRows"), shown=TEXT),
    Figure("throttle_waits", metric=Metric("ThrottleWaits"), shown=TEXT),
    Figure("throttle_wait_ms", metric=Metric("ThrottleWaitMs", "Milliseconds"), shown=TEXT),
    Figure("pacing_wait_ms", metric=Metric("PacingWaitMs", "Milliseconds"), shown=TEXT),
    Figure("wal_bytes", metric=Metric("WalBytes", "Bytes"), shown=TEXT),
    Figure(
        "wal_bytes_per_deleted_row",
        get=lambda r: round(r.wal_bytes / r.deleted) if r.deleted and r.wal_bytes else None,
        log="if_known",
        metric=Metric("WalBytesPerDeletedRow", "Bytes"),
        shown=TEXT,
    ),
    Figure("duration_ms", metric=Metric("DurationMs", "Milliseconds"), shown=BOTH),
    Figure("before", log=_NEVER, shown=BOTH),
    Figure("after", log=_NEVER, shown=BOTH),
    Figure(
        "keys_before", get=_before("keys"), log="if_known", metric=Metric("KeysTotal"), sentry=False
    ),
    Figure(
        "table_bytes_before",
        get=_before("table_bytes"),
        log=_NEVER,
        metric=Metric("TableBytes", "Bytes"),
        sentry=False,
    ),
    Figure(
        "index_bytes_before",
        get=_before("index_bytes"),
        log=_NEVER,
        metric=Metric("IndexBytes", "Bytes"),
        sentry=False,
    ),
    Figure(
        "total_bytes_before",
        get=_before("total_bytes"),
        log="if_known",
        metric=Metric("TotalBytes", "Bytes"),
        sentry=False,
    ),
    Figure("keys_after", get=_after("keys"), log="if_known", sentry=False),
    Figure("total_bytes_after", get=_after("total_bytes"), log="if_known", sentry=False),
    Figure("age_distribution", log=_NEVER, shown=BOTH),
    *(
        Figure(
            f"age {label}",
            get=_age(label),
            log=_NEVER,
            metric=Metric(bucket_metric(label)),
            sentry=False,
        )
        for label in BUCKET_LABELS
    ),
    Figure("reason", log="if_set", shown=BOTH),
    Figure("notes", log="if_set", shown=BOTH),
    Figure("no_timestamp", log=_NEVER, shown=BOTH),
    Figure("out_of_range_timestamps", log="if_set", shown=TEXT),
    Figure("oldest", log=_NEVER, shown=TEXT),
    Figure("newest", log=_NEVER, shown=TEXT),
    Figure("by_type", log=_NEVER, shown=BOTH),
    Figure("guard_triggered", log="if_set", shown=TELEGRAM),
    Figure("kept", get=lambda r: [k.model_dump() for k in r.kept], log="if_set", shown=BOTH),
    Figure(
        "kept_keys",
        get=lambda r: None if r.before is None else sum(k.keys for k in r.kept),
        log=_NEVER,
        metric=Metric("KeysKept"),
        sentry=False,
    ),
    Figure("expires_column", log=_NEVER, shown=BOTH),
    Figure("expired", get=_measured("expired"), log=_ttl, metric=Metric("KeysExpired"), shown=BOTH),
    Figure("expired_by_age", log=_NEVER, shown=TEXT),
    Figure("auth_table", log=_NEVER, shown=BOTH),
    Figure("orphan_rule", log=_orphan_rule, shown=BOTH),
    Figure("orphan_grace_days", log=_NEVER, shown=TEXT),
    Figure(
        "orphaned",
        get=_measured("orphaned"),
        log=_orphans_measured,
        metric=Metric("KeysOrphaned"),
        shown=BOTH,
    ),
    Figure(
        "orphaned_tenants",
        get=_measured("orphaned_tenants"),
        log=_orphans_measured,
        metric=Metric("OrphanedTenants"),
        shown=BOTH,
    ),
    # Tenant ids are identifiers of the operator's customers: never sent to Sentry.
    Figure("orphaned_tenant_ids", log=_NEVER, sentry=False, shown=TEXT),
    Figure("orphaned_deleted", log=_NEVER, shown=BOTH),
    Figure("orphan_candidates", log=_NEVER, shown=BOTH),
    Figure("top_tenants", log=_NEVER, sentry=False, shown=BOTH),
    Figure("vacuumed", log=_NEVER, shown=BOTH),
    Figure("batch_retries", log=_NEVER),
    Figure("skipped_pages", log=_NEVER),
    # The verbose listing: never sent to Sentry (only its length is), never logged.
    Figure("keys", log=_NEVER, sentry=False, shown=BOTH),
    Figure("keys_omitted", log=_NEVER, shown=BOTH),
    Figure("listed_keys", get=lambda r: len(r.keys) + r.keys_omitted, log=_NEVER),
    Figure("live_run_would_fail", log=_NEVER),
    Figure("event_id", log=_NEVER, shown=TELEGRAM),
    Figure("duplicate", log=_NEVER),
    Figure("stalled_runs", log=_NEVER, metric=Metric("StalledRuns"), shown=TELEGRAM),
    Figure("remaining", log="if_known", metric=Metric("KeysRemaining")),
    Figure("drain", log=_NEVER),
    Figure(
        "backlog",
        get=lambda r: backlog_line(r),  # noqa: PLW0108 - defined below
        log=_NEVER,
        sentry=False,
        shown=BOTH,
        label="backlog",
    ),
    Figure("trend", log=_NEVER, shown=BOTH),
)


def log_fields(report: Report) -> dict[str, Any]:
    """The figures of the "run finished" log line: counts and sizes, never a key."""
    fields = {}
    for figure in FIGURES:
        value = figure.value(report)
        if figure.logged(report, value):
            fields[figure.name] = value
    return fields


def metric_values(report: Report) -> list[tuple[Metric, Any]]:
    """Each metric the report feeds, with its value (none for a figure not measured)."""
    return [
        (f.metric, value)
        for f in FIGURES
        if f.metric is not None and (value := f.value(report)) is not None
    ]


def sentry_fields(report: Report) -> dict[str, Any]:
    """The Sentry event's `cleanup` context: the Report's fields as JSON, but those kept out,
    then the derived figures that go along."""
    hidden = {f.name for f in FIGURES if not f.sentry and f.name in Report.model_fields}
    data = report.model_dump(mode="json", exclude=hidden)
    for f in FIGURES:
        if f.sentry and f.name not in Report.model_fields:
            data[f.name] = f.value(report)
    return data


def labelled_lines(report: Report, rendering: Rendering) -> list[str]:
    """`label: value` for the figures a rendering shows by label (not HTML-escaped)."""
    lines = []
    for f in FIGURES:
        if f.label is not None and rendering in f.shown:
            value = f.value(report)
            if value is None:
                continue
            lines.append(
                f"{f.label}: {value:,}" if isinstance(value, int) else f"{f.label}: {value}"
            )
    return lines


# Exit codes of the CLI and the local runner for a run that returned its Report (1: a failure,
# 2: bad input are raised, not reported).
EXIT_OK = 0
EXIT_ABORTED = 3
EXIT_LIVE_WOULD_FAIL = 4


def exit_code(report: Report) -> int:
    """4 when a dry run found that a live run would fail for a missing privilege; 3 when the
    safety guard stopped the run, or would stop it live (a dry run); else 0."""
    if report.live_run_would_fail:
        return EXIT_LIVE_WOULD_FAIL
    return EXIT_ABORTED if report.stopped_by_guard else EXIT_OK


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'. Negative values keep their sign."""
    sign = "-" if n < 0 else ""
    value = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{sign}{value:.0f} {unit}" if unit == "B" else f"{sign}{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def limit_percent(fraction: float) -> str:
    """A configured fraction as a percentage, exactly as set: 0.5 -> '50%', 0.125 -> '12.5%'."""
    return f"{(Decimal(repr(fraction)) * 100).normalize():f}%"


def share_percent(fraction: float, limit: float) -> str:
    """`fraction` as a percentage beside `limit`, to as many decimals (one at least) as it takes
    never to read as on the limit's other side, or on it: 0.504 beside 0.5 -> '50.4%', 0.50001
    -> '50.001%' (never '50.0%')."""
    value, bound = Decimal(repr(fraction)) * 100, Decimal(repr(limit)) * 100
    side = (value > bound) - (value < bound)
    for digits in range(1, 16):
        shown = round(value, digits)
        if (shown > bound) - (shown < bound) == side:
            return f"{shown:f}%"
    return f"{value:f}%"


def human_bytes_pair(first: int, last: int) -> str:
    """Two sizes in the unit of the larger: (431_000_000, 417_000_000) -> '411.0 → 397.7 MiB'."""
    unit_of = human_bytes(max(abs(first), abs(last))).split()[-1]
    scale = 1024 ** ("B", "KiB", "MiB", "GiB", "TiB").index(unit_of)
    if unit_of == "B":
        return f"{first} → {last} B"
    return f"{first / scale:.1f} → {last / scale:.1f} {unit_of}"


def backlog_line(r: Report) -> str | None:
    """`12,345 keys left · run 2 of this drain, 40,000 deleted since …`, for a run that left a
    backlog or finished one; None otherwise."""
    if r.remaining is None or r.drain is None or (r.status != "partial" and r.drain.runs < 2):
        return None
    line = f"{r.remaining:,} eligible keys left"
    since = f" since {r.drain.since.isoformat(timespec='seconds')}" if r.drain.since else ""
    return line + f" · run {r.drain.runs} of this drain, {r.drain.deleted:,} deleted{since}"


def trend_lines(points: list[TrendPoint]) -> list[str]:
    """`keys 7 runs: A → B` and `size 7 runs: X → Y MiB`, or one line saying there is none."""
    if not points:
        return ["no run history"]
    first, last = points[0], points[-1]
    if len(points) == 1:
        return [f"keys 1 run: {last.keys:,}", f"size 1 run: {human_bytes(last.total_bytes)}"]
    lines = [
        f"keys {len(points)} runs: {first.keys:,} → {last.keys:,}",
        f"size {len(points)} runs: {human_bytes_pair(first.total_bytes, last.total_bytes)}",
    ]
    # The backlog over the runs that recorded it, when it was not 0 throughout.
    left = [p.remaining for p in points if p.remaining is not None]
    if any(left):
        lines.append("backlog " + " → ".join(f"{n:,}" for n in left))
    return lines


def kept_lines(report: Report) -> list[str]:
    """`pre-key: kept 782: the server may still hand them out (…)`, one line per reason."""
    return [f"{k.key_type}: kept {k.keys:,}: {k.reason}" for k in report.kept]


def listing_line(entry: KeyEntry, key_type_column: str | None) -> str:
    """`company_id=c1, key_type=session, key_id=s:9  [session]`, without the bracket when the
    key type is already part of the key (Baileys' primary key holds it)."""
    ident = ", ".join(f"{k}={v}" for k, v in entry.key.items())
    if key_type_column is not None and key_type_column in entry.key:
        return ident
    return f"{ident}  [{entry.key_type or '-'}]"


def reclaimable_estimate(table_bytes: int, keys: int, gone: int) -> int:
    """`gone` keys at the table's average stored size per key (heap and TOAST)."""
    return table_bytes * gone // keys if keys else 0


def retention_label(name: str, stats: TypeStats, *, age_rule: bool = True) -> str:
    """A type's retention as the tables show it: `30d`, `protected`, `never` for the
    encoded layout's keys of no known type (the `(null)` row without a retention), or `off`
    where the table has no timestamp and so no age rule."""
    if stats.retention_days is not None:
        return f"{stats.retention_days}d" if age_rule else "off"
    return "never" if name == "(null)" else "protected"


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _bar(count: int, largest: int, width: int = 30) -> str:
    if largest <= 0 or count <= 0:
        return ""
    return "█" * max(1, round(width * count / largest))


def _rule_lines(r: Report) -> list[str]:
    """What the TTL and orphan rules found (eligible counts each key once)."""
    parts = []
    if r.expires_column is not None:
        parts.append(f"TTL expired {r.expired:,} (column {r.expires_column})")
    if r.orphan_rule == "applied":
        deleted = "" if r.dry_run else f", {r.orphaned_deleted:,} deleted"
        waiting = r.orphan_candidates - r.orphaned_tenants
        grace = (
            f"grace {r.orphan_grace_days}d"
            if r.timestamp_column is not None
            else "no grace: no timestamp"
        )
        parts.append(
            f"orphaned {r.orphaned:,} keys of {r.orphaned_tenants:,} "
            f"tenant{'' if r.orphaned_tenants == 1 else 's'} without a row in "
            f"{r.auth_table} ({grace}{deleted})"
            + (
                f", {waiting:,} candidate tenant{'' if waiting == 1 else 's'} for the next run"
                if waiting > 0
                else ""
            )
        )
    elif r.orphan_rule == "refused":
        parts.append("orphan rule refused (see notes)")
    first = "age" if r.timestamp_column is not None else "pre-key window (no timestamp)"
    return [f"rules: {first} · {' · '.join(parts)}"] if parts else []


def render_text(report: Report) -> str:
    """A human summary for terminals: sizes, age bars, the per-type table, the listing."""
    lines = _text_head(report)
    if report.before is None:
        return "\n".join(lines)
    return "\n".join(
        [
            *lines,
            *_text_figures(report, report.before),
            *_text_ages(report),
            *_text_tables(report),
            *_text_listing(report),
            *_text_run(report),
        ]
    )


def _text_head(r: Report) -> list[str]:
    """The title, reason, notes and what was asked."""
    lines = [f"keys-cleanup · {r.table} · {'DRY RUN' if r.dry_run else 'LIVE'} · {r.status}"]
    if r.reason:
        lines.append(f"reason: {r.reason}")
    lines.extend(f"note: {note}" for note in r.notes)
    if r.timestamp_column is None:
        lines.append("retention: none, the age rule is off (CLEANUP_TIMESTAMP_COLUMN=none)")
    elif r.cutoff is not None:
        lines.append(
            f"retention: {r.retention_days} days, cutoff {r.cutoff.isoformat(timespec='seconds')}"
        )
    if r.retention_overrides:
        overrides = ", ".join(f"{t}={d}d" for t, d in sorted(r.retention_overrides.items()))
        lines.append(f"retention overrides: {overrides}")
    if r.protected_types:
        lines.append(f"protected types: {', '.join(r.protected_types)}")
    return lines


def _text_figures(r: Report, before: TableStats) -> list[str]:
    """Keys, sizes, the rules, the space, the oldest and newest key."""
    verb = "would delete" if r.dry_run else "deleted"
    amount = r.eligible if r.dry_run else r.deleted
    lines = [
        "",
        f"keys: {before.keys:,} · eligible {r.eligible:,} · protected {r.protected:,}"
        f" · {verb} {amount:,}",
    ]
    size = f"size: {human_bytes(before.total_bytes)}"
    size += f" (table {human_bytes(before.table_bytes)}, "
    size += f"indexes {human_bytes(before.index_bytes)})"
    if r.after is not None:
        size += f" → {human_bytes(r.after.total_bytes)}"
        if r.deleted:
            # Not a recount: keys before minus deleted (writes during the run not included).
            size += f", keys → ≈{r.after.keys:,} (before - deleted)"
    lines.append(size)
    lines.extend(_rule_lines(r))
    lines.append(_space_line(r))
    if r.oldest is not None and r.newest is not None:
        lines.append(
            f"oldest {r.oldest.isoformat(timespec='seconds')}, "
            f"newest {r.newest.isoformat(timespec='seconds')}"
        )
    return lines


def released_text(r: Report) -> str:
    """What a live run released, as render_text and the Telegram summary say it: a table that
    grew during the run released nothing (never "released -8.0 KiB"), and sizes not measured
    after it are said so (never "released 0 B")."""
    if r.released_bytes is None:
        return "released: not measured"
    if r.released_bytes < 0:
        return (
            f"released nothing: the table grew {human_bytes(-r.released_bytes)} during the "
            "run (the application's writes)"
        )
    return f"released {human_bytes(r.released_bytes)} (measured)"


def _space_line(r: Report) -> str:
    if r.dry_run:
        return (
            f"space: a live run would make ≈{human_bytes(r.reclaimable_bytes)} reusable (estimated)"
        )
    reclaimable = f"reclaimable {human_bytes(r.reclaimable_bytes)} (estimated)"
    return f"space: {released_text(r)}, {reclaimable}" + (" · vacuumed" if r.vacuumed else "")


def _text_ages(r: Report) -> list[str]:
    if r.timestamp_column is None:
        return []  # no key has an age
    lines = ["", "age distribution:"]
    largest = max(r.age_distribution.values(), default=0)
    for label in BUCKET_LABELS:
        count = r.age_distribution.get(label, 0)
        # The expired keys of each bucket: the TTL rule takes them whatever their age.
        expired = f" expired {r.expired_by_age.get(label, 0):>8,}" if r.expired else ""
        lines.append(f"  {label:>6} {count:>10,}{expired} {_bar(count, largest)}".rstrip())
    if r.no_timestamp:
        lines.append(f"  no timestamp: {r.no_timestamp:,} (never deleted)")
    if r.out_of_range_timestamps:
        lines.append(
            f"  infinite or out-of-range timestamp: {r.out_of_range_timestamps:,} (never deleted)"
        )
    return lines


def _text_tables(r: Report) -> list[str]:
    """The per-type table, the kept keys, the top tenants, the orphaned tenants."""
    lines = []
    if r.by_type:
        lines += ["", *_type_table(r)]
    if r.kept:
        past = " past the retention" if r.timestamp_column is not None else ""
        lines += ["", f"kept{past}, because Baileys still needs them:"]
        lines.extend(f"  {line}" for line in kept_lines(r))
    if r.top_tenants:
        width = max(8, *(len(t.tenant or "(null)") for t in r.top_tenants))
        lines += [
            "",
            f"top tenants by keys:\n  {'tenant':<{width}} {'keys':>10} {'eligible':>10} "
            f"{'orphaned':>10}",
        ]
        lines.extend(
            f"  {t.tenant or '(null)':<{width}} {t.keys:>10,} {t.eligible:>10,} {t.orphaned:>10,}"
            for t in r.top_tenants
        )
    if r.orphaned_tenant_ids:
        more = r.orphaned_tenants - len(r.orphaned_tenant_ids)
        lines += [
            "",
            "orphaned tenants: "
            + ", ".join(r.orphaned_tenant_ids)
            + (f" … and {more:,} more" if more > 0 else ""),
        ]
    return lines


def _text_listing(r: Report) -> list[str]:
    if not r.keys:
        return []
    title = "keys that would be deleted" if r.dry_run else "deleted keys"
    lines = ["", f"{title} (first {len(r.keys)}):"]
    for entry in r.keys:
        age = "?" if entry.age_days is None else f"{entry.age_days:.1f}d"
        lines.append(f"  {listing_line(entry, r.key_type_column)}  age {age}")
    if r.keys_omitted:
        lines.append(f"  … and {r.keys_omitted:,} more")
    return lines


def _text_run(r: Report) -> list[str]:
    """The trend, then how the run went: batches, duration, waits, labelled figures."""
    lines = ["", "trend: " + " · ".join(trend_lines(r.trend))]
    # A run that deleted nothing has no batches to speak of.
    if r.batches:
        lines += [
            "",
            f"batches: {r.batches} (longest {r.max_batch_ms} ms, largest {r.max_batch_rows:,} "
            f"rows) · duration {r.duration_ms:,} ms" + _wal_text(r),
        ]
    else:
        lines += ["", f"duration {r.duration_ms:,} ms"]
    if r.throttle_waits or r.pacing_wait_ms:
        lines.append(
            f"waited: {r.throttle_waits} time(s) for replicas ({r.throttle_wait_ms:,} ms), "
            f"{r.pacing_wait_ms:,} ms pacing WAL"
        )
    return lines + labelled_lines(r, "text")


def _wal_text(r: Report) -> str:
    """The batches' WAL, and per deleted row (what a replica or WAL archive pays per key)."""
    if not r.wal_bytes or not r.deleted:
        return ""
    per_row = r.wal_bytes / r.deleted
    return f" · WAL {r.wal_bytes / 2**20:,.1f} MiB ({per_row:,.0f} B per deleted row)"


def _type_table(r: Report) -> list[str]:
    """The per-type table. A dry run shows what a live run would delete instead of a column of
    zeros: its eligible keys are exactly that."""
    name_width = max(9, *(len(t) for t in r.by_type))
    # The TTL and orphan rules' shares of each type's eligible keys, when they take any.
    ttl, orphans = r.expired > 0, r.orphaned > 0
    rules = (f"{'expired':>10} " if ttl else "") + (f"{'orphaned':>10} " if orphans else "")
    if r.dry_run:
        header = f"{'would delete':>13} {rules}{'protected':>10}"
    else:
        header = f"{'eligible':>10} {rules}{'protected':>10} {'deleted':>10}"
    lines = [f"  {'key type':<{name_width}} {'keys':>10} {header}  retention"]
    for name, t in sorted(r.by_type.items(), key=lambda kv: -kv[1].keys):
        retention = retention_label(name, t, age_rule=r.timestamp_column is not None)
        parts = (f"{t.expired:>10,} " if ttl else "") + (f"{t.orphaned:>10,} " if orphans else "")
        if r.dry_run:
            counts = f"{t.eligible:>13,} {parts}{t.protected:>10,}"
        else:
            counts = f"{t.eligible:>10,} {parts}{t.protected:>10,} {_count(t.deleted):>10}"
        lines.append(f"  {name:<{name_width}} {t.keys:>10,} {counts}  {retention}")
    return lines
