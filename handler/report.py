"""The Report: the one typed result of a run, and its plain-text rendering.

Every entry point returns or prints this model; notifiers take it and nothing else.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["completed", "partial", "skipped", "aborted"]

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


class KeyEntry(_Model):
    """One affected key in the verbose listing. Never carries the value column."""

    key: dict[str, str | None]  # primary-key columns -> value as text
    key_type: str | None
    age_days: float | None


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
    oldest: datetime | None = None
    newest: datetime | None = None
    by_type: dict[str, TypeStats] = Field(default_factory=dict)
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
    reason: str | None = None
    event_id: str | None = None
    duplicate: bool = False  # this event already completed: acknowledged, not run, not notified

    @property
    def mode(self) -> str:
        return "dry_run" if self.dry_run else "live"


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'. Negative values keep their sign."""
    sign = "-" if n < 0 else ""
    value = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{sign}{value:.0f} {unit}" if unit == "B" else f"{sign}{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _bar(count: int, largest: int, width: int = 30) -> str:
    if largest <= 0 or count <= 0:
        return ""
    return "█" * max(1, round(width * count / largest))


def render_text(report: Report) -> str:
    """A human summary for terminals: sizes, age bars, the per-type table, the listing."""
    r = report
    lines = [
        f"keys-cleanup · {r.table} · {'DRY RUN' if r.dry_run else 'LIVE'} · {r.status}",
    ]
    if r.reason:
        lines.append(f"reason: {r.reason}")
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
        approx = "" if r.after.keys_counted else "≈"
        size += f" → {human_bytes(r.after.total_bytes)}, keys → {approx}{r.after.keys:,}"
    lines.append(size)
    lines.append(
        f"space: released {human_bytes(r.released_bytes)} (measured), "
        f"reclaimable {human_bytes(r.reclaimable_bytes)} (estimated)"
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
        lines.append(f"  {label:>6} {count:>10,} {_bar(count, largest)}")
    if r.no_timestamp:
        lines.append(f"  no timestamp: {r.no_timestamp:,} (never deleted)")

    if r.by_type:
        name_width = max(9, *(len(t) for t in r.by_type))
        lines += [
            "",
            f"  {'key type':<{name_width}} {'keys':>10} {'eligible':>10} "
            f"{'protected':>10} {'deleted':>10}  retention",
        ]
        for name, t in sorted(r.by_type.items(), key=lambda kv: -kv[1].keys):
            retention = "protected" if t.retention_days is None else f"{t.retention_days}d"
            lines.append(
                f"  {name:<{name_width}} {t.keys:>10,} {t.eligible:>10,} "
                f"{t.protected:>10,} {_count(t.deleted):>10}  {retention}"
            )

    if r.keys:
        title = "keys that would be deleted" if r.dry_run else "deleted keys"
        lines += ["", f"{title} (first {len(r.keys)}):"]
        for entry in r.keys:
            ident = ", ".join(f"{k}={v}" for k, v in entry.key.items())
            age = "?" if entry.age_days is None else f"{entry.age_days:.1f}d"
            lines.append(f"  {ident}  [{entry.key_type or '-'}]  age {age}")
        if r.keys_omitted:
            lines.append(f"  … and {r.keys_omitted:,} more")

    lines += [
        "",
        f"batches: {r.batches} (longest {r.max_batch_ms} ms, largest {r.max_batch_rows:,} rows)"
        f" · duration {r.duration_ms:,} ms",
    ]
    if r.throttle_waits or r.pacing_wait_ms:
        lines.append(
            f"waited: {r.throttle_waits} time(s) for replicas ({r.throttle_wait_ms:,} ms), "
            f"{r.pacing_wait_ms:,} ms pacing WAL"
        )
    return "\n".join(lines)
