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

from handler.report import BUCKET_LABELS, Report, bucket_metric, log_fields, metric_values

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


# "<1d" -> "KeysAge0to1d", ..., ">30d" -> "KeysAgeOver30d": metric names without symbols.
AGE_BUCKET_METRICS: dict[str, str] = {label: bucket_metric(label) for label in BUCKET_LABELS}
_UNITS = {
    "Count": MetricUnit.Count,
    "Bytes": MetricUnit.Bytes,
    "Milliseconds": MetricUnit.Milliseconds,
}


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
    # The figures declared with a metric in handler.report.FIGURES. Sizes and totals as the run
    # found the table: the series then tracks growth day by day. After a DELETE without VACUUM
    # the file sizes barely move, which ReleasedBytes shows. StalledRuns: live runs in a row
    # ending partial with nothing deleted (StalledRunsAlarm watches it).
    for metric, value in metric_values(report):
        metrics.add_metric(name=metric.name, unit=_UNITS[metric.unit], value=value)
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
    """The figures of the "run finished" log line: counts and sizes, never a key (which, and
    when: handler.report.FIGURES)."""
    return log_fields(report)
