"""Telegram Bot API delivery: sendMessage with HTML, bounded retries, a secret-free error.

The bot token is part of every request URL (`/bot<token>/sendMessage`) and requests copies
that URL into its exception messages, so no requests exception leaves this module: each
one becomes a `TelegramError` whose text is redacted and whose chain is cut (`from None`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests

from handler.errors import TelegramError as TelegramError  # noqa: PLC0414 - re-exported
from handler.notify.secrets import redact

# Retries: Telegram asks for a pause with 429 + parameters.retry_after; 5xx responses and
# connection errors are transient too. Four attempts with 0.5/1/2 s backoff ride out a brief
# outage without turning a notification into a minute of waiting.
MAX_ATTEMPTS = 4
BACKOFF_S = (0.5, 1.0, 2.0)
# Without a deadline (CLI, tests), delivery still ends within this budget.
DEFAULT_BUDGET_S = 30.0
# Not worth starting a request with less time than this left.
MIN_REQUEST_S = 0.2
# Longer than this and a 429 is not waited out: the run's result matters more.
MAX_RETRY_AFTER_S = 60.0


class _RedactUrls(logging.Filter):
    """urllib3 logs request paths at DEBUG ("POST /bot<token>/sendMessage"): redact them."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


# A filter on a logger applies only to records that logger creates, hence one per module.
for _name in (
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.poolmanager",
    "urllib3.response",
    "urllib3.util.retry",
):
    logging.getLogger(_name).addFilter(_RedactUrls())


@dataclass(frozen=True)
class Delivery:
    attempts: int
    message_id: int | None


def _retry_after(response: requests.Response) -> float | None:
    try:
        body = response.json()
        value = body.get("parameters", {}).get("retry_after")
        if value is not None:
            return float(value)
    except (ValueError, AttributeError, TypeError):
        pass
    header = response.headers.get("Retry-After")
    try:
        return float(header) if header is not None else None
    except ValueError:
        return None


def _description(response: requests.Response) -> str:
    try:
        body = response.json()
        text = str(body.get("description", ""))
    except (ValueError, AttributeError):
        text = response.text[:200]
    return redact(text) or response.reason or "no description"


def _post_within(
    http: requests.Session, url: str, payload: dict[str, Any], timeout: float
) -> requests.Response:
    """The POST, given `timeout` seconds in all. requests' own timeout bounds the connect and
    each read, not the whole answer: a server sending it a few bytes at a time would hold the
    run past its deadline. The request runs in a thread left behind (daemon) when time is up,
    as requests.Timeout."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["response"] = http.post(url, json=payload, timeout=timeout)
        except BaseException as exc:  # handed back to the caller below
            outcome["error"] = exc

    worker = threading.Thread(target=call, name="telegram-post", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise requests.Timeout("the answer did not arrive in time")
    if "error" in outcome:
        raise outcome["error"]
    response: requests.Response = outcome["response"]
    return response


def send_message(
    *,
    api_url: str,
    token: str,
    chat_id: str,
    text: str,
    timeout_s: float,
    deadline: float | None,
    session: requests.Session | None = None,
) -> Delivery:
    """POST sendMessage (parse_mode HTML), retrying within `deadline` (time.monotonic()).

    Raises TelegramError when the message could not be delivered in time.
    """
    end = deadline if deadline is not None else time.monotonic() + DEFAULT_BUDGET_S
    url = f"{api_url.rstrip('/')}/bot{token}/sendMessage"
    payload: dict[str, Any] = {
        "chat_id": chat_id,
        "text": text,
        "parse_mode": "HTML",
        "link_preview_options": {"is_disabled": True},
    }
    http = session or requests.Session()
    problem = "no time left"
    made = 0
    try:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            remaining = end - time.monotonic()
            if remaining < MIN_REQUEST_S:
                break
            made = attempt
            timeout = min(timeout_s, remaining)
            try:
                response = _post_within(http, url, payload, timeout)
            except requests.Timeout:
                problem, wait = f"timed out after {timeout:.1f} s", _backoff(attempt)
            except requests.ConnectionError as exc:
                # Its message holds the URL, hence the token: keep only the type.
                problem, wait = f"connection error ({type(exc).__name__})", _backoff(attempt)
            except requests.RequestException as exc:
                raise TelegramError(f"request failed ({type(exc).__name__})") from None
            else:
                if response.ok:
                    return Delivery(attempt, _message_id(response))
                problem, wait = _failed_response(response, attempt)
            if attempt == MAX_ATTEMPTS:
                break
            if time.monotonic() + wait + MIN_REQUEST_S > end:
                problem += " (no time left to retry)"
                break
            time.sleep(wait)
        raise TelegramError(f"gave up after {made} attempt(s): {problem}")
    finally:
        if session is None:
            http.close()


def _failed_response(response: requests.Response, attempt: int) -> tuple[str, float]:
    """The problem and how long to wait before retrying; raises when retrying is futile."""
    problem = f"HTTP {response.status_code}: {_description(response)}"
    if response.status_code == 429:
        wait = _retry_after(response) or _backoff(attempt)
        if wait > MAX_RETRY_AFTER_S:
            raise TelegramError(f"{problem} (retry_after {wait:.0f} s is too long)")
        return problem, wait
    if response.status_code >= 500:
        return problem, _backoff(attempt)
    # 400 (bad request), 401 (bad token), 403 (bot blocked): another try would fail alike.
    raise TelegramError(problem)


def _backoff(attempt: int) -> float:
    return BACKOFF_S[min(attempt - 1, len(BACKOFF_S) - 1)]


def _message_id(response: requests.Response) -> int | None:
    try:
        value = response.json()["result"]["message_id"]
        return int(value)
    except (ValueError, KeyError, TypeError):
        return None
