"""Lambda entry point: event -> flags -> settings -> engine -> logs, metrics, notifications.

Two event shapes:

- the EventBridge scheduled event (`"source": "aws.events"`, `"detail-type": "Scheduled
  Event"`): a live run, unless CLEANUP_DRY_RUN=true. Flags may sit in its `detail`.
- anything else is a flags object (console test event, CLI invoke, `sam local invoke -e`):
  a dry run unless it says `"dry_run": false`. `{}` is a dry run.

Flags are strict: an unknown key, a wrong type or a retention out of range fails the
invocation with a ConfigError that names the field, before anything touches the database.

`python -m handler.app --event events/dry-run.json` runs this same handler locally, with a
stand-in context, no Docker needed (handler/local.py; see docs/operations.md; `make invoke`
runs it in the real Lambda runtime emulator, docs/local-invoke.md).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from handler import notify
from handler.cleanup import run_cleanup
from handler.deleteloop import Progress
from handler.errors import ConfigError, error_text
from handler.observability import logger, publish_failure, publish_report, report_fields
from handler.secrets import with_database_url
from handler.settings import Flags, NotifySettings, Settings

# Sentry starts here, at import, so its Lambda integration wraps the first (cold) invocation
# too; see notify.init_from_env.
notify.init_from_env()

SCHEDULED_SOURCE = "aws.events"
SCHEDULED_DETAIL_TYPE = "Scheduled Event"
# The EventBridge envelope: a scheduled event's flags go in its detail, never beside it.
EVENT_ENVELOPE_KEYS = frozenset(
    {"version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail"}
    | {"replay-name"}  # added to an event replayed from an archive
)
# Notifications must end before Lambda's hard timeout; this much is left for the metrics
# flush and the return. The engine's own margin (CLEANUP_DEADLINE_MARGIN_MS) is far larger.
NOTIFY_RESERVE_S = 2.0
# However small CLEANUP_DEADLINE_MARGIN_MS is, the engine stops at least this long before the
# notifications' own deadline, so a run that goes to its deadline is still reported.
NOTIFY_MIN_BUDGET_S = 1.0


@dataclass(frozen=True)
class Request:
    """What an event asks for, once validated against the settings."""

    flags: Flags
    scheduled: bool
    event_id: str | None

    @property
    def mode(self) -> str:
        return "dry_run" if self.flags.dry_run else "live"


def is_scheduled_event(event: object) -> TypeGuard[Mapping[str, Any]]:
    return (
        isinstance(event, Mapping)
        and event.get("source") == SCHEDULED_SOURCE
        and event.get("detail-type") == SCHEDULED_DETAIL_TYPE
    )


_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})


def requested_mode(event: object, env: Mapping[str, str] | None = None) -> str:
    """The mode an event asks for, read before the settings and the flags are validated.

    A run that fails on bad settings or flags is still counted under the mode it was meant to
    run in (the dashboard and the alarms watch the scheduled mode), never under "unknown":
    the schedule is live unless its detail or CLEANUP_DRY_RUN says dry, anything else is dry
    unless it says `"dry_run": false`. parse_event decides the same for a valid event.
    """
    env = os.environ if env is None else env
    if is_scheduled_event(event):
        detail = event.get("detail")
        asked_dry = isinstance(detail, Mapping) and detail.get("dry_run") is True
        setting = env.get("CLEANUP_DRY_RUN", "").strip().lower() in _TRUE
        return "dry_run" if asked_dry or setting else "live"
    live = isinstance(event, Mapping) and event.get("dry_run") is False
    return "live" if live else "dry_run"


def parse_event(event: object, settings: Settings) -> Request:
    """Validate an invocation event into flags. Raises ConfigError naming the bad field."""
    if is_scheduled_event(event):
        unknown = sorted(str(key) for key in event if key not in EVENT_ENVELOPE_KEYS)
        if unknown:
            raise ConfigError(
                "invalid event: the scheduled event has unknown top-level keys "
                + ", ".join(repr(key[:64]) for key in unknown[:5])
                + '; its flags go in "detail", such as "detail": {"dry_run": true}'
            )
        detail = event.get("detail", {})
        try:
            flags = Flags.parse(detail)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (in the scheduled event's detail)") from None
        # The schedule exists to delete: live unless the detail or CLEANUP_DRY_RUN says dry.
        asked_dry = isinstance(detail, Mapping) and detail.get("dry_run") is True
        flags = flags.model_copy(update={"dry_run": asked_dry or settings.dry_run_scheduled})
        event_id = event.get("id")
        request = Request(flags, True, event_id if isinstance(event_id, str) else None)
    elif isinstance(event, Mapping) and {"source", "detail-type"} <= event.keys():
        raise ConfigError(
            "invalid event: an EventBridge event that is not a scheduled event; send a "
            'scheduled event or a flags object such as {"dry_run": true}'
        )
    else:
        request = Request(Flags.parse(event), False, None)
    settings.check_flags(request.flags)
    return request


def _log_progress(progress: Progress) -> None:
    logger.debug(
        "batch progress",
        batches=progress.batches,
        deleted=progress.deleted,
        pages_done=progress.pages_done,
        pages_total=progress.pages_total,
    )


def _requested(event: object, settings: Settings) -> Request:
    """The event's request, validated and logged (with the settings ignored)."""
    for warning in settings.config_warnings:
        logger.warning("setting ignored", detail=warning)
    request = parse_event(event, settings)
    flags = request.flags
    logger.info(
        "run requested",
        trigger="schedule" if request.scheduled else "manual",
        mode=request.mode,
        event_id=request.event_id,
        retention_days=flags.retention_days or settings.retention_days,
        verbose=flags.verbose,
        force=flags.force,
        vacuum=flags.vacuum,
    )
    return request


def _with_database(settings: Settings) -> Settings:
    """The settings with the database URL resolved, and the notifiers started (they then know
    the password to redact)."""
    source = "DATABASE_URL" if settings.database_url is not None else "DATABASE_SECRET_ARN"
    settings = with_database_url(settings)
    logger.info("database resolved", source=source, table=settings.table)
    notify.init(settings)
    return settings


# The scheduled event's `id` correlates every log line of its run; other events have none.
@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Run the cleanup once; return the report as JSON-ready dict, or raise."""
    lambda_end = time.monotonic() + context.get_remaining_time_in_millis() / 1000
    notify_deadline = lambda_end - NOTIFY_RESERVE_S
    if not is_scheduled_event(event) or not isinstance(logger.get_correlation_id(), str):
        logger.set_correlation_id(context.aws_request_id)
    mode = requested_mode(event)
    settings: Settings | None = None
    notice: NotifySettings | None = None  # the notifiers' own settings, read apart
    notify.start_invocation()
    try:
        with contextlib.ExitStack() as monitor:
            # Only the schedule checks in to the Crons monitor: a run by hand (a dry run from
            # the console, a failing experiment) must not mark the scheduled job missed or
            # failed. It checks in first, from the Sentry settings alone, so that a run that
            # fails on its settings, its event or its database secret is an error in Crons,
            # not a missed run.
            if is_scheduled_event(event):
                notice = notify.read_settings()
                monitor.enter_context(notify.cron_monitor(notice))
            settings = Settings.from_env()
            request = _requested(event, settings)
            mode = request.mode
            settings = _with_database(settings)
            deadline = min(
                lambda_end - settings.deadline_margin_ms / 1000,
                notify_deadline - NOTIFY_MIN_BUDGET_S,
            )
            logger.info(
                "cleanup started",
                budget_ms=round((deadline - time.monotonic()) * 1000),
                margin_ms=settings.deadline_margin_ms,
            )
            report = run_cleanup(
                settings,
                request.flags,
                deadline=deadline,
                progress=_log_progress,
                event_id=request.event_id,
            )
    except Exception as exc:
        # Count and report the failure, then let it fail: Lambda records the error and its
        # async retry and on-failure destination take over.
        logger.error("run failed", mode=mode, error_type=type(exc).__name__, error=error_text(exc))
        publish_failure(mode)
        # Settings that did not load are reported with the notifiers' own settings.
        reporting: NotifySettings = settings or notice or notify.read_settings()
        notify.on_failure(exc, reporting, deadline=notify_deadline, mode=mode)
        raise
    logger.info("run finished", **report_fields(report))
    publish_report(report)
    notify.after_run(report, settings, deadline=notify_deadline)
    return report.model_dump(mode="json")


if __name__ == "__main__":
    # `python -m handler.app --event FILE` (README): the local runner, handler/local.py.
    from handler.local import main

    sys.exit(main())
