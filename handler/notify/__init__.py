"""Notifications: Sentry (messages, exceptions, Crons check-ins) and Telegram.

Contract used by handler.app: every function here is safe to call when nothing is
configured. `read_settings`, `after_run` and `on_failure` never raise, and `cron_monitor`
raises only what the wrapped block raised: a failed notification is logged (and reported to
Sentry when Sentry itself works) and never changes the outcome of a run.

    notify.init_from_env()          # at import: Lambda's init phase, before the first event
    notice = notify.read_settings() # SENTRY_* and TELEGRAM_* alone
    settings = None
    try:
        with notify.cron_monitor(notice):   # a scheduled run only, before anything can fail
            settings = Settings.from_env()
            notify.init(settings)
            report = run_cleanup(settings, flags, deadline=deadline)
    except Exception as exc:
        notify.on_failure(exc, settings or notice, deadline=deadline, mode=mode)
        raise
    notify.after_run(report, settings, deadline=deadline)

Only `after_run` needs the full Settings; the rest takes NotifySettings, which Settings is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

from handler.errors import ConfigError
from handler.notify import html, secrets, sentry, telegram
from handler.observability import logger
from handler.report import Report
from handler.settings import NotifySettings, Settings, notification_settings

__all__ = [
    "after_run",
    "cron_monitor",
    "init",
    "init_from_env",
    "logger",
    "on_failure",
    "read_settings",
    "start_invocation",
]

# A Sentry DSN parameter that could not be read is not read again in the same invocation:
# init() is called at each step (init, check-in, summary), and each read of an unreachable
# endpoint costs its timeouts again.
_dsn_unreadable = False


def start_invocation() -> None:
    """Forget what the last invocation learnt about the DSN (a parameter may be fixed since)."""
    global _dsn_unreadable  # noqa: PLW0603 - per-process state, like the SDK's own client
    _dsn_unreadable = False


def read_settings() -> NotifySettings:
    """The notifiers' own settings (the SENTRY_* and TELEGRAM_* variables), read without the
    cleanup's. Never raises.

    For what must not wait for, or depend on, the full settings: a scheduled run's check-in,
    and the report of a run whose settings fail to load. A channel whose variables are invalid
    stays off, logged as `notification settings invalid` naming the variables (never their
    values); the full settings then fail on the same variables, as the run's own error.
    """
    try:
        notice, problems = notification_settings()
    except Exception as exc:  # a side channel: its failure must not change the run's
        logger.error("notification settings invalid", channel="all", error_type=type(exc).__name__)
        return NotifySettings()
    for channel, problem in problems.items():
        logger.error("notification settings invalid", channel=channel, error=problem)
    return notice


def init(settings: NotifySettings) -> None:
    """Initialise Sentry once per process when a DSN is configured. Never raises.

    A DSN that cannot be read (parameter missing, no permission) or parsed leaves Sentry off
    and logs an error: the cleanup itself must still run, and the Crons monitor reports the
    missing check-in.
    """
    # Known secrets are redacted from every alert and error text, with or without Sentry.
    if settings.telegram_bot_token is not None:
        secrets.register(settings.telegram_bot_token.get_secret_value())
    if isinstance(settings, Settings) and settings.database_url is not None:
        secrets.register_conninfo(settings.database_url.get_secret_value())
    global _dsn_unreadable  # noqa: PLW0603 - see start_invocation
    if sentry.enabled() or not (settings.sentry_dsn or settings.sentry_dsn_parameter):
        return
    if _dsn_unreadable:
        return
    try:
        dsn = secrets.resolve(settings.sentry_dsn, settings.sentry_dsn_parameter)
    except Exception as exc:  # a side channel: its failure must not stop the run
        _dsn_unreadable = True
        logger.error("sentry disabled", reason="dsn unreadable", error_type=type(exc).__name__)
        return
    if not dsn:
        return
    try:
        sentry.init(settings, dsn)
    except Exception as exc:  # BadDsn and the like; the message could quote the DSN
        logger.error("sentry disabled", reason="init failed", error_type=type(exc).__name__)
        return
    logger.info("sentry initialised", environment=settings.sentry_environment)


def init_from_env() -> None:
    """Initialise Sentry from the environment, for a call at import time. Never raises.

    The Lambda handler module calls this when it is imported, in Lambda's init phase.
    AwsLambdaIntegration wraps the runtime's event handling when the SDK initialises, so only
    an init before the first event covers the first invocation, and a daily job nearly always
    runs on a cold start. With SENTRY_DSN_PARAMETER this reads the parameter (cached for the
    invocations). When the full settings are bad, Sentry starts from its own settings (SENTRY_*)
    all the same, and the invocation reports the bad settings; a DSN that cannot be read is
    logged, and `init` tries again during the invocation.
    """
    settings: NotifySettings
    try:
        settings = Settings.from_env()
    except ConfigError:
        settings, _ = notification_settings()  # the invocation logs what is wrong with them
    init(settings)


@contextmanager
def cron_monitor(settings: NotifySettings) -> Iterator[None]:
    """Sentry Crons check-ins around a scheduled run: in_progress, then ok, or error (re-raised).

    Without Sentry this is a no-op. The SDK's own `monitor` sends the check-ins (and times the
    run); it is entered and left by hand here only so that a failed check-in is logged and never
    fails, or masks the error of, the run it watches.
    """
    init(settings)
    if not sentry.enabled():
        yield
        return
    monitor = sentry.monitor(settings)
    if not _guarded("in_progress", monitor.__enter__):
        yield
        return
    try:
        yield
    except BaseException as exc:
        _guarded("error", partial(monitor.__exit__, type(exc), exc, exc.__traceback__))
        raise
    # No flush here: the check-in is queued, and after_run / on_failure flush once, after
    # Telegram, within the notifications' deadline. Flushing now would let a hung Sentry
    # spend the time the Telegram message needs.
    _guarded("ok", partial(monitor.__exit__, None, None, None))


def _guarded(status: str, send: Callable[[], object]) -> bool:
    try:
        send()
    except Exception as exc:  # a check-in must never fail the run it watches
        logger.warning("sentry check-in failed", status=status, error_type=type(exc).__name__)
        return False
    return True


def after_run(report: Report, settings: Settings, *, deadline: float | None) -> None:
    """Report a finished run to Sentry and Telegram within `deadline`. Never raises."""
    try:
        _after_run(report, settings, deadline)
    except Exception as exc:  # a side channel must never change the run's outcome
        _internal_error("after_run", exc)


def on_failure(
    exc: BaseException, settings: NotifySettings, *, deadline: float | None, mode: str
) -> None:
    """Capture a failed run in Sentry and alert Telegram, each saying the run's `mode`
    (`dry_run` or `live`). `settings` are the full Settings, or only the notifiers' own
    (`read_settings`) when the full ones failed to load. Never raises; the caller re-raises."""
    try:
        init(settings)
        if sentry.enabled():
            try:
                event_id = sentry.capture_failure(exc, mode)
                logger.info("sentry exception captured", sentry_event_id=event_id)
            except Exception as err:  # protect the Telegram alert below
                _notification_failed("sentry", "failure", err)
        text = html.render_failure(exc, settings, mode=mode)
        _send_telegram(settings, "failure", text, deadline)
        _flush(deadline)
    except Exception as err:  # a side channel must never mask the run's own error
        _internal_error("on_failure", err)


def _after_run(report: Report, settings: Settings, deadline: float | None) -> None:
    if report.duplicate:
        # This event already completed and was notified then; at-least-once delivery
        # must not double the messages.
        logger.info("notifications skipped", reason="duplicate event")
        return
    init(settings)
    if sentry.enabled():
        try:
            event_id = sentry.capture_report(report, settings)
            logger.info(
                "sentry message sent",
                level=sentry.level_for(report, settings),
                sentry_event_id=event_id,
            )
        except Exception as err:  # protect the Telegram summary below
            _notification_failed("sentry", "summary", err)

    if report.dry_run and not settings.telegram_notify_dry_run:
        logger.info("telegram skipped", reason="dry run (TELEGRAM_NOTIFY_DRY_RUN=false)")
    elif report.status == "aborted":
        text = html.render_guard_abort(report, settings)
        _send_telegram(settings, "guard_abort", text, deadline)
    else:
        text = html.render_summary(report, warning_threshold=settings.warning_threshold)
        _send_telegram(settings, "summary", text, deadline)
    _flush(deadline)


def _send_telegram(settings: NotifySettings, kind: str, text: str, deadline: float | None) -> None:
    has_token = settings.telegram_bot_token is not None or settings.telegram_bot_token_parameter
    if not settings.telegram_chat_id or not has_token:
        logger.debug("telegram skipped", reason="not configured")
        return
    try:
        token = secrets.resolve(settings.telegram_bot_token, settings.telegram_bot_token_parameter)
        if not token:
            logger.warning("telegram skipped", reason="empty bot token")
            return
        secrets.register(token)
        delivery = telegram.send_message(
            api_url=settings.telegram_api_url,
            token=token,
            chat_id=settings.telegram_chat_id,
            text=text,
            timeout_s=settings.telegram_timeout_s,
            deadline=deadline,
        )
    except Exception as err:  # TelegramError, or the token parameter unreadable
        _notification_failed("telegram", kind, err)
        return
    logger.info(
        "telegram message sent",
        kind=kind,
        attempts=delivery.attempts,
        chars=html.telegram_len(text),
        message_id=delivery.message_id,
    )


def _describe(err: BaseException) -> str:
    if isinstance(err, telegram.TelegramError):
        return str(err)  # already secret-free
    return f"{type(err).__name__}: {secrets.redact(str(err))}"


def _notification_failed(channel: str, kind: str, err: BaseException) -> None:
    problem = _describe(err)
    logger.warning("notification failed", channel=channel, kind=kind, error=problem)
    if channel != "sentry" and sentry.enabled():
        try:
            sentry.capture_notification_failure(channel, kind, problem)
        except Exception as exc:  # nothing left to tell; the log line above stands
            logger.warning("sentry capture failed", error_type=type(exc).__name__)


def _internal_error(where: str, err: BaseException) -> None:
    logger.error("notification error", where=where, error=_describe(err))
    try:
        if sentry.enabled():
            sentry.capture_internal_error(err)
            _flush(None)
    except Exception as exc:  # nothing left to tell; the log line above stands
        logger.warning("sentry capture failed", error_type=type(exc).__name__)


def _flush(deadline: float | None) -> None:
    try:
        if sentry.enabled():
            sentry.flush(deadline)
    except Exception as exc:  # flushing is best effort
        logger.warning("sentry flush failed", error_type=type(exc).__name__)
