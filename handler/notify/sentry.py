"""Sentry: one-time init, the run message, exceptions, and Crons check-ins.

What may reach Sentry is decided here: the report's figures (never the key listing), fixed
tags, and exceptions without local variables. A `before_send`/`before_breadcrumb` hook
redacts every registered secret and token-shaped string as a last line of defence; that
covers exception messages that quote a URL with credentials.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import sentry_sdk
from sentry_sdk.integrations.atexit import AtexitIntegration
from sentry_sdk.integrations.aws_lambda import AwsLambdaIntegration
from sentry_sdk.integrations.dedupe import DedupeIntegration
from sentry_sdk.integrations.excepthook import ExcepthookIntegration
from sentry_sdk.integrations.logging import LoggingIntegration

from handler import __version__
from handler.notify import secrets
from handler.report import Report, sentry_fields
from handler.settings import NotifySettings, Settings

if TYPE_CHECKING:
    from sentry_sdk._types import MonitorConfig

Level = Literal["info", "warning"]

MESSAGE = "WhatsApp session keys cleanup completed"
COMPONENT = "cleanup"
OPERATION = "session_keys_cleanup"
# Written into the artifact by the Makefile (`git rev-parse`); absent in a checkout.
BUILD_COMMIT = Path(__file__).resolve().parent.parent / "BUILD_COMMIT"
# Flushing waits for the background transport; an unreachable Sentry must not hold the run.
MAX_FLUSH_S = 2.0


def _scrub(event: Any, _hint: Any) -> Any:
    return secrets.redact_obj(event)


def release() -> str:
    """`keys-cleanup@<version>+<commit>`: the package version and the commit the artifact was
    built from (handler/BUILD_COMMIT, written by the Makefile's build); the version alone when
    the code does not come from a build (a checkout, the tests)."""
    try:
        commit = BUILD_COMMIT.read_text(encoding="utf-8").strip()
    except OSError:
        commit = ""
    return f"keys-cleanup@{__version__}" + (f"+{commit}" if commit else "")


def init(settings: NotifySettings, dsn: str) -> None:
    """Initialise the SDK for this process. The caller resolves the DSN and checks idempotence."""
    secrets.register_url(dsn, with_user=True)  # a DSN's user part is its key
    sentry_sdk.init(
        dsn=dsn,
        environment=settings.sentry_environment,
        release=release(),
        # An explicit set instead of the defaults: no http.client breadcrumbs (the Bot API URL
        # holds the token), no list of installed packages on every event, no argv; and init
        # takes milliseconds instead of probing every auto-enabling integration.
        default_integrations=False,
        integrations=[
            AwsLambdaIntegration(),
            # Log lines become breadcrumbs only; events are captured explicitly, so an error
            # logged and then captured is not reported twice.
            LoggingIntegration(level=logging.INFO, event_level=None),
            # The Lambda integration captures the exception that on_failure already sent.
            DedupeIntegration(),
            ExcepthookIntegration(),
            AtexitIntegration(),
        ],
        # No PII: send_default_pii is left at its default (off); setting it explicitly is
        # deprecated in favour of data_collection, which older 2.x SDKs do not know.
        # Frame locals could hold a token, a connection string or a key row.
        include_local_variables=False,
        max_request_body_size="never",
        before_send=_scrub,
        before_breadcrumb=_scrub,
    )


def enabled() -> bool:
    return sentry_sdk.is_initialized()


def tags(report: Report | None, status: str) -> dict[str, str]:
    result = {"component": COMPONENT, "operation": OPERATION, "status": status}
    if report is not None:
        result["mode"] = report.mode
    return result


def level_for(report: Report, settings: Settings) -> Level:
    # A run skipped for the lock did not happen: as worth a look as a partial one.
    if (
        report.deleted > settings.warning_threshold
        or report.status != "completed"
        or report.guard_triggered
        or report.live_run_would_fail
    ):
        return "warning"
    return "info"


def figures(report: Report) -> dict[str, Any]:
    """The report's figures for the event context: everything but the key listing and tenant
    ids (identifiers of the operator's customers: their counts are enough here)."""
    return sentry_fields(report)  # which: handler.report.FIGURES


def capture_report(report: Report, settings: Settings) -> str | None:
    return sentry_sdk.capture_message(
        MESSAGE,
        level=level_for(report, settings),
        tags=tags(report, report.status),
        contexts={"cleanup": figures(report)},
    )


def capture_failure(exc: BaseException, mode: str) -> str | None:
    """A failed run, tagged with the mode it ran in (`dry_run` or `live`) as a report is."""
    return sentry_sdk.capture_exception(
        exc, level="error", tags={**tags(None, "failed"), "mode": mode}
    )


def capture_internal_error(exc: BaseException) -> str | None:
    """A bug in the notifiers themselves: reported apart from run failures."""
    return sentry_sdk.capture_exception(exc, level="error", tags=tags(None, "notifier_error"))


def capture_notification_failure(channel: str, kind: str, problem: str) -> str | None:
    return sentry_sdk.capture_message(
        f"{channel} notification failed",
        level="warning",
        tags={**tags(None, "notification_failed"), "channel": channel, "kind": kind},
        contexts={"notification": {"channel": channel, "kind": kind, "problem": problem}},
    )


def monitor_config(settings: NotifySettings) -> MonitorConfig:
    return {
        "schedule": {"type": "crontab", "value": settings.sentry_schedule},
        "timezone": "UTC",
        "checkin_margin": settings.sentry_checkin_margin_min,
        "max_runtime": settings.sentry_max_runtime_min,
        # Alert on the first missed or failed run, recover on the first good one.
        "failure_issue_threshold": 1,
        "recovery_threshold": 1,
    }


def monitor(settings: NotifySettings) -> sentry_sdk.monitor:
    """The SDK's check-in context manager for the scheduled job's monitor."""
    return sentry_sdk.monitor(
        monitor_slug=settings.sentry_monitor_slug, monitor_config=monitor_config(settings)
    )


def flush(deadline: float | None) -> None:
    timeout = MAX_FLUSH_S
    if deadline is not None:
        timeout = max(0.0, min(timeout, deadline - time.monotonic()))
    sentry_sdk.flush(timeout=timeout)
