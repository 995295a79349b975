"""Powertools Logger and Metrics, created once per process, and a Report's metrics.

Powertools reads its own variables: POWERTOOLS_SERVICE_NAME, POWERTOOLS_LOG_LEVEL and
POWERTOOLS_METRICS_NAMESPACE. Without them (local runs) the defaults below apply.

Every metric carries the dimensions `service` and `mode` (`dry_run` or `live`), so a dry run's
"eligible" never blends into a live run's series. `Runs` adds `status` (completed, partial,
skipped, aborted, or failed for an exception): the "no successful run in a day" alarm in
template.yaml watches `Runs` with status completed or partial.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric

from handler.report import AGE_BUCKETS, Report

DEFAULT_SERVICE = "whatsapp-keys-cleanup"
DEFAULT_NAMESPACE = "WhatsAppKeysCleanup"
# Powertools' own placeholder when POWERTOOLS_SERVICE_NAME is unset.
_UNDEFINED_SERVICE = "service_undefined"

logger = Logger()
if logger.service == _UNDEFINED_SERVICE:
    # Recreated rather than patched: inject_lambda_context(clear_state=True) resets any
    # appended `service` key to the one the Logger was built with.
    logger = Logger(service=DEFAULT_SERVICE)

metrics = Metrics()
if metrics.namespace is None:
    metrics.namespace = DEFAULT_NAMESPACE
if not metrics.service or metrics.service == _UNDEFINED_SERVICE:
    metrics.service = DEFAULT_SERVICE


def _bucket_metric(label: str) -> str:
    low, high = next((lo, hi) for name, lo, hi in AGE_BUCKETS if name == label)
    return f"KeysAgeOver{low}d" if high is None else f"KeysAge{low}to{high}d"


# "<1d" -> "KeysAge0to1d", ..., ">30d" -> "KeysAgeOver30d": metric names without symbols.
AGE_BUCKET_METRICS: dict[str, str] = {label: _bucket_metric(label) for label, _, _ in AGE_BUCKETS}


def _count_run(mode: str, status: str) -> None:
    # A blob of its own: `status` must not become a dimension of every other metric.
    with single_metric(
        name="Runs",
        unit=MetricUnit.Count,
        value=1,
        namespace=metrics.namespace,
        default_dimensions={"service": str(metrics.service), "mode": mode},
    ) as run:
        run.add_dimension(name="status", value=status)


def publish_report(report: Report) -> None:
    """Emit the report's figures as EMF metrics (one log line each for the two blobs)."""
    metrics.add_dimension(name="mode", value=report.mode)
    count, size = MetricUnit.Count, MetricUnit.Bytes
    # Sizes and totals as the run found the table: the series then tracks growth day by day.
    # After a DELETE without VACUUM the file sizes barely move, which ReleasedBytes shows.
    if report.before is not None:
        metrics.add_metric(name="KeysTotal", unit=count, value=report.before.keys)
        metrics.add_metric(name="TableBytes", unit=size, value=report.before.table_bytes)
        metrics.add_metric(name="IndexBytes", unit=size, value=report.before.index_bytes)
        metrics.add_metric(name="TotalBytes", unit=size, value=report.before.total_bytes)
        for label, metric_name in AGE_BUCKET_METRICS.items():
            value = report.age_distribution.get(label, 0)
            metrics.add_metric(name=metric_name, unit=count, value=value)
    metrics.add_metric(name="KeysEligible", unit=count, value=report.eligible)
    metrics.add_metric(name="KeysDeleted", unit=count, value=report.deleted)
    metrics.add_metric(name="KeysProtected", unit=count, value=report.protected)
    # Parts of KeysEligible (a key eligible by two rules counts in both, once in KeysEligible).
    metrics.add_metric(name="KeysExpired", unit=count, value=report.expired)
    metrics.add_metric(name="KeysKept", unit=count, value=sum(k.keys for k in report.kept))
    metrics.add_metric(name="KeysOrphaned", unit=count, value=report.orphaned)
    metrics.add_metric(name="OrphanedTenants", unit=count, value=report.orphaned_tenants)
    metrics.add_metric(name="ReclaimableBytes", unit=size, value=report.reclaimable_bytes)
    metrics.add_metric(name="ReleasedBytes", unit=size, value=report.released_bytes)
    metrics.add_metric(name="Batches", unit=count, value=report.batches)
    metrics.add_metric(name="MaxBatchRows", unit=count, value=report.max_batch_rows)
    metrics.add_metric(name="MaxBatchMs", unit=MetricUnit.Milliseconds, value=report.max_batch_ms)
    metrics.add_metric(name="ThrottleWaits", unit=count, value=report.throttle_waits)
    metrics.add_metric(
        name="ThrottleWaitMs", unit=MetricUnit.Milliseconds, value=report.throttle_wait_ms
    )
    metrics.add_metric(
        name="PacingWaitMs", unit=MetricUnit.Milliseconds, value=report.pacing_wait_ms
    )
    metrics.add_metric(name="DurationMs", unit=MetricUnit.Milliseconds, value=report.duration_ms)
    # Live runs in a row ending partial with nothing deleted: StalledRunsAlarm watches it.
    metrics.add_metric(name="StalledRuns", unit=count, value=report.stalled_runs)
    # Properties: searchable in Logs Insights beside the metrics, never dimensions.
    metrics.add_metadata(key="status", value=report.status)
    metrics.add_metadata(key="table", value=report.table)
    metrics.add_metadata(key="retention_days", value=report.retention_days)
    if report.event_id:
        metrics.add_metadata(key="event_id", value=report.event_id)
    metrics.flush_metrics()
    _count_run(report.mode, report.status)


def publish_failure(mode: str) -> None:
    """Count a run that raised, under the mode it asked for (handler.app.requested_mode)."""
    metrics.clear_metrics()
    _count_run(mode, "failed")


def report_fields(report: Report) -> dict[str, Any]:
    """The figures of the "run finished" log line: counts and sizes, never a key."""
    fields: dict[str, Any] = {
        "status": report.status,
        "mode": report.mode,
        "table": report.table,
        "retention_days": report.retention_days,
        "cutoff": report.cutoff.isoformat() if report.cutoff else None,
        "eligible": report.eligible,
        "protected": report.protected,
        "deleted": report.deleted,
        "released_bytes": report.released_bytes,
        "reclaimable_bytes": report.reclaimable_bytes,
        "batches": report.batches,
        "max_batch_ms": report.max_batch_ms,
        "max_batch_rows": report.max_batch_rows,
        "throttle_waits": report.throttle_waits,
        "throttle_wait_ms": report.throttle_wait_ms,
        "pacing_wait_ms": report.pacing_wait_ms,
        "duration_ms": report.duration_ms,
    }
    if report.before is not None:
        fields["keys_before"] = report.before.keys
        fields["total_bytes_before"] = report.before.total_bytes
    if report.after is not None:
        fields["keys_after"] = report.after.keys
        fields["total_bytes_after"] = report.after.total_bytes
    if report.reason:
        fields["reason"] = report.reason
    if report.notes:
        fields["notes"] = report.notes
    if report.out_of_range_timestamps:
        fields["out_of_range_timestamps"] = report.out_of_range_timestamps
    if report.guard_triggered:
        fields["guard_triggered"] = True
    if report.kept:
        fields["kept"] = [k.model_dump() for k in report.kept]
    if report.expires_column is not None:
        fields["expired"] = report.expired
    if report.orphan_rule != "off":
        fields["orphan_rule"] = report.orphan_rule
        fields["orphaned"] = report.orphaned
        fields["orphaned_tenants"] = report.orphaned_tenants
    return fields
