"""Sentry on a cold start: a fresh interpreter, as Lambda's runtime has it, imports the handler
and runs its first invocation. What reaches Sentry must be complete on that first invocation:
the run's message or the failure, the Crons check-ins, and the Lambda integration's context.

A daily job is nearly always a cold start. AwsLambdaIntegration wraps the runtime's event
handling when the SDK initialises, so an init inside the handler would cover only the next,
warm, invocation. The runtime's `bootstrap` module is played by a stand-in with the two things
the integration patches (`handle_event_request`, `LambdaRuntimeClient`), loaded before the
handler is imported, as the real runtime does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.db import KeyRow, PgSchema
from tests.support.notify import DB_PASSWORD, DSN_KEY, SentryEndpoint

ROOT = Path(__file__).resolve().parents[2]


COLD_START = """
import json, sys, types

bootstrap = types.ModuleType("bootstrap")

class LambdaRuntimeClient:
    def post_init_error(self, *args, **kwargs): pass
    def post_invocation_result(self, *args, **kwargs): pass
    def post_invocation_error(self, *args, **kwargs): pass

def handle_event_request(client, request_handler, event, context):
    try:
        result = request_handler(event, context)
    except Exception as exc:
        client.post_invocation_error(exc)
        return {"error": type(exc).__name__}
    client.post_invocation_result(result)
    return {"status": result["status"]}

bootstrap.LambdaRuntimeClient = LambdaRuntimeClient
bootstrap.handle_event_request = handle_event_request
sys.modules["bootstrap"] = bootstrap

import sentry_sdk
import handler.app  # the runtime's init phase
from handler.local import LocalContext

outcome = {"initialised_at_import": sentry_sdk.is_initialized()}
event = json.loads(sys.argv[1])
outcome |= bootstrap.handle_event_request(
    LambdaRuntimeClient(), handler.app.lambda_handler, event, LocalContext(timeout_s=60)
)
sentry_sdk.flush(timeout=5)
print(json.dumps(outcome))
"""


def cold_invocation(event: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Run one invocation in a fresh interpreter; return what the stand-in runtime saw."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SENTRY_", "TELEGRAM_"))}
    base |= {"POWERTOOLS_METRICS_NAMESPACE": "ColdStartTest", **env}
    done = subprocess.run(
        [sys.executable, "-c", COLD_START, json.dumps(event)],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    outcome: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return outcome


def scheduled_dry_run() -> dict[str, Any]:
    """The scheduled event, as a dry run: only the schedule checks in to the Crons monitor."""
    event: dict[str, Any] = json.loads((ROOT / "events" / "scheduled.json").read_text())
    return {**event, "detail": {"dry_run": True}}


def lambda_extra(event: dict[str, Any]) -> dict[str, Any]:
    """What only AwsLambdaIntegration adds to an event: the invocation's Lambda context."""
    extra: dict[str, Any] = event.get("extra", {}).get("lambda", {})
    return extra


def test_first_invocation_failure_reaches_sentry_with_the_lambda_context(
    sentry: SentryEndpoint,
) -> None:
    unreachable = f"postgresql://cleanup:{DB_PASSWORD}@127.0.0.1:1/app"
    outcome = cold_invocation(
        scheduled_dry_run(),
        {"SENTRY_DSN": sentry.dsn, "DATABASE_URL": unreachable, "CLEANUP_CONNECT_TIMEOUT_S": "2"},
    )

    assert outcome == {"initialised_at_import": True, "error": "CleanupError"}
    (event,) = sentry.events()
    assert event["level"] == "error"
    assert [v["type"] for v in event["exception"]["values"]] == ["CleanupError"]
    assert event["tags"]["status"] == "failed"
    # The integration wrapped this first invocation: its context and tags are on the event.
    assert lambda_extra(event)["function_name"] == "keys-cleanup-local"
    assert event["tags"]["aws_region"] == "local"
    assert [c["status"] for c in sentry.checkins()] == ["in_progress", "error"]
    payloads = sentry.payloads()
    assert DB_PASSWORD not in payloads
    assert DSN_KEY not in payloads


def test_first_invocation_run_message_and_checkins_reach_sentry(
    pg: PgSchema, sentry: SentryEndpoint
) -> None:
    pg.create_reference_table()
    pg.insert_keys([KeyRow("c1", "session", "old", 40), KeyRow("c1", "session", "new", 1)])

    outcome = cold_invocation(scheduled_dry_run(), pg.env(SENTRY_DSN=sentry.dsn))

    assert outcome == {"initialised_at_import": True, "status": "completed"}
    (event,) = sentry.events()
    assert event["message"] == "WhatsApp session keys cleanup completed"
    assert event["contexts"]["cleanup"]["eligible"] == 1
    assert lambda_extra(event)["function_name"] == "keys-cleanup-local"
    assert [c["status"] for c in sentry.checkins()] == ["in_progress", "ok"]
    assert pg.count() == 2


@pytest.mark.parametrize("dsn", ["", "not a dsn"])
def test_import_without_a_usable_dsn_leaves_sentry_off_and_the_run_unharmed(
    pg: PgSchema, dsn: str
) -> None:
    pg.create_reference_table()
    outcome = cold_invocation({"dry_run": True}, pg.env(SENTRY_DSN=dsn))
    assert outcome == {"initialised_at_import": False, "status": "completed"}


def test_bad_settings_at_import_start_sentry_all_the_same_and_the_invocation_reports_them(
    sentry: SentryEndpoint,
) -> None:
    outcome = cold_invocation(
        {"dry_run": True},
        {
            "SENTRY_DSN": sentry.dsn,
            "DATABASE_URL": f"postgresql://x:{DB_PASSWORD}@127.0.0.1:1/app",
            "CLEANUP_RETENTION_DAYS": "zero",
        },
    )
    # Sentry starts from its own settings (SENTRY_*), the import survives, and the invocation
    # fails with the settings error, as without Sentry.
    assert outcome == {"initialised_at_import": True, "error": "ConfigError"}
    (event,) = sentry.events()
    assert event["level"] == "error"
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "ConfigError"
    assert "CLEANUP_RETENTION_DAYS" in exception["value"]
    assert event["tags"]["mode"] == "dry_run"
    assert lambda_extra(event)["function_name"] == "keys-cleanup-local"
    assert sentry.checkins() == []  # a run by hand never checks in
    payloads = sentry.payloads()
    assert DB_PASSWORD not in payloads
    assert DSN_KEY not in payloads
