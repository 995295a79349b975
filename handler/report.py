"""The Report: the one typed result of a run, and its plain-text rendering.

Every entry point returns or prints this model; notifiers take it and nothing else.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["completed", "partial", "skipped", "aborted"]
# The orphan rule: not configured, applied, or refused for this run (see the notes for why).
OrphanRule = Literal["off", "applied", "refused"]

# Age buckets, in days: label -> [low, high). Order matters for rendering.
AGE_BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("<1d", 0, 1),
    ("1-7d", 1, 7),
    ("7-14d", 7, 14),
    ("14-30d", 14, 30),
    (">30d", 30, None),
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


# How many recorded runs the trend spans.
TREND_RUNS = 7
# Live runs in a row ending `partial` with nothing deleted that make an alert: one can be a
# locked table or a busy night; two in a row (two days, scheduled) is a job that is stuck.
STALLED_ALERT_RUNS = 2


class Report(_Model):
    status: Status
    dry_run: bool
    table: str
    timestamp_column: str
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
    released_bytes: int = 0  # measured: total_bytes before - after (about 0 without VACUUM)
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


def human_bytes_pair(first: int, last: int) -> str:
    """Two sizes in the unit of the larger: (431_000_000, 417_000_000) -> '411.0 → 397.7 MiB'."""
    unit_of = human_bytes(max(abs(first), abs(last))).split()[-1]
    scale = 1024 ** ("B", "KiB", "MiB", "GiB", "TiB").index(unit_of)
    if unit_of == "B":
        return f"{first} → {last} B"
    return f"{first / scale:.1f} → {last / scale:.1f} {unit_of}"


def trend_lines(points: list[TrendPoint]) -> list[str]:
    """`keys 7 runs: A → B` and `size 7 runs: X → Y MiB`, or one line saying there is none."""
    if not points:
        return ["no run history"]
    first, last = points[0], points[-1]
    if len(points) == 1:
        return [f"keys 1 run: {last.keys:,}", f"size 1 run: {human_bytes(last.total_bytes)}"]
    return [
        f"keys {len(points)} runs: {first.keys:,} → {last.keys:,}",
        f"size {len(points)} runs: {human_bytes_pair(first.total_bytes, last.total_bytes)}",
    ]


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
        parts.append(
            f"orphaned {r.orphaned:,} keys of {r.orphaned_tenants:,} "
            f"tenant{'' if r.orphaned_tenants == 1 else 's'} without a row in "
            f"{r.auth_table} (grace {r.orphan_grace_days}d{deleted})"
            + (
                f", {waiting:,} candidate tenant{'' if waiting == 1 else 's'} for the next run"
                if waiting > 0
                else ""
            )
        )
    elif r.orphan_rule == "refused":
        parts.append("orphan rule refused (see notes)")
    return [f"rules: age · {' · '.join(parts)}"] if parts else []


def render_text(report: Report) -> str:
    """A human summary for terminals: sizes, age bars, the per-type table, the listing."""
    r = report
    lines = [
        f"keys-cleanup · {r.table} · {'DRY RUN' if r.dry_run else 'LIVE'} · {r.status}",
    ]
    if r.reason:
        lines.append(f"reason: {r.reason}")
    lines.extend(f"note: {note}" for note in r.notes)
    if r.cutoff is not None:
        lines.append(
            f"retention: {r.retention_days} days, cutoff {r.cutoff.isoformat(timespec='seconds')}"
        )
    if r.retention_overrides:
        overrides = ", ".join(f"{t}={d}d" for t, d in sorted(r.retention_overrides.items()))
        lines.append(f"retention overrides: {overrides}")
    if r.protected_types:
        lines.append(f"protected types: {', '.join(r.protected_types)}")
    if r.before is None:
        return "\n".join(lines)

    verb = "would delete" if r.dry_run else "deleted"
    amount = r.eligible if r.dry_run else r.deleted
    lines += [
        "",
        f"keys: {r.before.keys:,} · eligible {r.eligible:,} · protected {r.protected:,}"
        f" · {verb} {amount:,}",
    ]
    size = f"size: {human_bytes(r.before.total_bytes)}"
    size += f" (table {human_bytes(r.before.table_bytes)}, "
    size += f"indexes {human_bytes(r.before.index_bytes)})"
    if r.after is not None:
        size += f" → {human_bytes(r.after.total_bytes)}"
        if r.deleted:
            # Not a recount: keys before minus deleted (writes during the run not included).
            size += f", keys → ≈{r.after.keys:,} (before - deleted)"
    lines.append(size)
    lines.extend(_rule_lines(r))
    if r.dry_run:
        lines.append(
            f"space: a live run would make ≈{human_bytes(r.reclaimable_bytes)} reusable (estimated)"
        )
    else:
        if r.released_bytes < 0:
            released = (
                f"released nothing: the table grew {human_bytes(-r.released_bytes)} during the "
                "run (the application's writes)"
            )
        else:
            released = f"released {human_bytes(r.released_bytes)} (measured)"
        lines.append(
            f"space: {released}, reclaimable {human_bytes(r.reclaimable_bytes)} (estimated)"
            + (" · vacuumed" if r.vacuumed else "")
        )
    if r.oldest is not None and r.newest is not None:
        lines.append(
            f"oldest {r.oldest.isoformat(timespec='seconds')}, "
            f"newest {r.newest.isoformat(timespec='seconds')}"
        )

    lines += ["", "age distribution:"]
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

    if r.by_type:
        lines += ["", *_type_table(r)]
    if r.kept:
        lines += ["", "kept past the retention, because Baileys still needs them:"]
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

    if r.keys:
        title = "keys that would be deleted" if r.dry_run else "deleted keys"
        lines += ["", f"{title} (first {len(r.keys)}):"]
        for entry in r.keys:
            age = "?" if entry.age_days is None else f"{entry.age_days:.1f}d"
            lines.append(f"  {listing_line(entry, r.key_type_column)}  age {age}")
        if r.keys_omitted:
            lines.append(f"  … and {r.keys_omitted:,} more")

    lines += ["", "trend: " + " · ".join(trend_lines(r.trend))]
    # A run that deleted nothing has no batches to speak of.
    if r.batches:
        lines += [
            "",
            f"batches: {r.batches} (longest {r.max_batch_ms} ms, largest {r.max_batch_rows:,} "
            f"rows) · duration {r.duration_ms:,} ms",
        ]
    else:
        lines += ["", f"duration {r.duration_ms:,} ms"]
    if r.throttle_waits or r.pacing_wait_ms:
        lines.append(
            f"waited: {r.throttle_waits} time(s) for replicas ({r.throttle_wait_ms:,} ms), "
            f"{r.pacing_wait_ms:,} ms pacing WAL"
        )
    return "\n".join(lines)


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
        retention = "protected" if t.retention_days is None else f"{t.retention_days}d"
        parts = (f"{t.expired:>10,} " if ttl else "") + (f"{t.orphaned:>10,} " if orphans else "")
        if r.dry_run:
            counts = f"{t.eligible:>13,} {parts}{t.protected:>10,}"
        else:
            counts = f"{t.eligible:>10,} {parts}{t.protected:>10,} {_count(t.deleted):>10}"
        lines.append(f"  {name:<{name_width}} {t.keys:>10,} {counts}  {retention}")
    return lines
