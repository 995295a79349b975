"""template.yaml, read as CloudFormation would: the operator's alarms reach a topic, both queues
are watched, the dashboard names metrics the handler really emits, the EventBridge rule and the
Sentry monitor follow one schedule, and every taggable resource is tagged.

The template is parsed with cfn-lint's loader, and the few intrinsics it uses (Ref, Sub, If,
Select, Split, Join, GetAtt and the condition functions) are resolved here for a given set of
parameter values, so each check sees what a deployed stack would get.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from handler.observability import DEFAULT_NAMESPACE
from handler.settings import Settings
from tests.support.template import RESOURCES, STACK, TEMPLATE, Stack, _emitted

TOPIC_ARN = "arn:aws:sns:eu-west-1:123456789012:on-call"


TAG = {"Key": "app", "Value": "keys-cleanup"}


def of_type(kind: str) -> list[str]:
    return sorted(name for name, r in RESOURCES.items() if r["Type"] == kind)


ALARMS = of_type("AWS::CloudWatch::Alarm")


# --- alarms reach a person ----------------------------------------------------------------------


def test_without_a_topic_the_stack_creates_one_and_every_alarm_notifies_it() -> None:
    stack = Stack()
    assert stack.exists("AlarmTopic")
    assert RESOURCES["AlarmTopic"]["Type"] == "AWS::SNS::Topic"
    assert len(ALARMS) == 5
    for alarm in ALARMS:
        assert stack.prop(alarm, "AlarmActions") == ["<AlarmTopic>"], alarm
        assert stack.prop(alarm, "OKActions") == ["<AlarmTopic>"], alarm


def test_a_given_topic_is_used_and_none_is_created() -> None:
    stack = Stack(AlarmTopicArn=TOPIC_ARN)
    assert not stack.exists("AlarmTopic")
    assert not stack.exists("AlarmEmailSubscription")
    for alarm in ALARMS:
        assert stack.prop(alarm, "AlarmActions") == [TOPIC_ARN], alarm


def test_an_alarm_email_subscribes_to_the_created_topic_only_when_given() -> None:
    assert not Stack().exists("AlarmEmailSubscription")
    stack = Stack(AlarmEmail="oncall@example.com")
    assert stack.exists("AlarmEmailSubscription")
    assert stack.prop("AlarmEmailSubscription", "Protocol") == "email"
    assert stack.prop("AlarmEmailSubscription", "Endpoint") == "oncall@example.com"
    assert stack.prop("AlarmEmailSubscription", "TopicArn") == "<AlarmTopic>"
    # A topic of the operator's own is theirs to subscribe to.
    with_topic = Stack(AlarmEmail="oncall@example.com", AlarmTopicArn=TOPIC_ARN)
    assert not with_topic.exists("AlarmEmailSubscription")
    with pytest.raises(ValueError, match="AlarmEmail"):
        Stack(AlarmEmail="not an address")


def test_both_queues_have_a_depth_alarm() -> None:
    stack = Stack()
    watched = {}
    for alarm in ALARMS:
        if stack.prop(alarm).get("Namespace") != "AWS/SQS":
            continue
        (dimension,) = stack.prop(alarm, "Dimensions")
        assert dimension["Name"] == "QueueName"
        queue = dimension["Value"].strip("<>").removesuffix(".QueueName")
        watched[queue] = stack.prop(alarm)
    assert set(watched) == set(of_type("AWS::SQS::Queue"))
    assert set(watched) == {"FailedInvocationQueue", "ScheduleDeadLetterQueue"}
    for props in watched.values():
        assert props["MetricName"] == "ApproximateNumberOfMessagesVisible"
        assert props["Threshold"] == 1
        assert props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        assert props["EvaluationPeriods"] == 1


def _rule_expression(stack: Stack) -> str:
    events = RESOURCES["KeysCleanupFunction"]["Properties"]["Events"]
    return str(stack.resolve(events["DailySchedule"]["Properties"]["Schedule"]))


def _monitor_crontab(stack: Stack) -> str:
    env = stack.prop("KeysCleanupFunction", "Environment", "Variables")
    settings = Settings.from_env({k: str(v) for k, v in env.items()})
    return settings.sentry_schedule


def _as_crontab(expression: str) -> str:
    """EventBridge `cron(m h dom mon dow year)` back to a 5-field crontab."""
    match = re.fullmatch(r"cron\((\S+) (\S+) (\S+) (\S+) (\S+) (\S+)\)", expression)
    assert match, expression
    minute, hour, dom, month, dow, year = match.groups()
    assert year == "*", "the rule must run every year"
    assert [dom, dow].count("?") == 1, "EventBridge needs `?` in exactly one day field"
    return " ".join(field.replace("?", "*") for field in (minute, hour, dom, month, dow))


def test_default_schedule_is_daily_at_three_for_both_the_rule_and_the_monitor() -> None:
    stack = Stack()
    assert _rule_expression(stack) == "cron(0 3 * * ? *)"
    assert _monitor_crontab(stack) == "0 3 * * *"


@pytest.mark.parametrize(
    ("crontab", "expression"),
    [
        ("30 2 * * *", "cron(30 2 * * ? *)"),
        ("0 4 * * MON-FRI", "cron(0 4 ? * MON-FRI *)"),
        ("15 1 * * SAT,SUN", "cron(15 1 ? * SAT,SUN *)"),
        ("0 5 * * MON,WED,FRI", "cron(0 5 ? * MON,WED,FRI *)"),
        ("0 */6 * * *", "cron(0 */6 * * ? *)"),
    ],
)
def test_a_changed_schedule_moves_the_rule_and_the_monitor_together(
    crontab: str, expression: str
) -> None:
    stack = Stack(Schedule=crontab)
    assert _rule_expression(stack) == expression
    assert _monitor_crontab(stack) == crontab
    assert _as_crontab(_rule_expression(stack)) == _monitor_crontab(stack)


@pytest.mark.parametrize(
    "crontab",
    [
        "0 3 * * 1-5",  # weekday numbers differ: cron 0 = Sunday, EventBridge 1 = Sunday
        "0 3 1 * MON",  # both day fields: EventBridge cannot express it
        "cron(0 3 * * ? *)",  # the old parameter's form
        "0 3 * * ? *",
        "0  3 * * *",  # two spaces would shift every field
        "0 3 * *",
    ],
)
def test_schedules_the_two_dialects_would_read_differently_are_refused(crontab: str) -> None:
    with pytest.raises(ValueError, match="Schedule"):
        Stack(Schedule=crontab)


# --- reserved concurrency -----------------------------------------------------------------------


def test_no_concurrency_is_reserved_by_default_and_a_value_reserves_it() -> None:
    assert "ReservedConcurrentExecutions" not in Stack().prop("KeysCleanupFunction")
    props = Stack(ReservedConcurrency="1").prop("KeysCleanupFunction")
    assert str(props["ReservedConcurrentExecutions"]) == "1"


def _dashboard(stack: Stack) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(stack.prop("Dashboard", "DashboardBody"))
    return body


def _metric_lines(body: dict[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    lines = []
    for widget in body["widgets"]:
        if widget["type"] != "metric":
            continue
        for line in widget["properties"]["metrics"]:
            fields = [f for f in line if not isinstance(f, dict)]
            namespace, name, *dims = fields
            lines.append((namespace, name, dict(zip(dims[::2], dims[1::2], strict=True))))
    return lines


@pytest.mark.parametrize("dry_run", ["false", "true"])
def test_dashboard_shows_the_metrics_the_handler_emits_for_the_scheduled_mode(
    dry_run: str, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = Stack(ScheduledDryRun=dry_run)
    env = stack.prop("KeysCleanupFunction", "Environment", "Variables")
    body = _dashboard(stack)
    assert body["start"] == "-P30D"
    emitted = _emitted(capsys)
    mode = "dry_run" if dry_run == "true" else "live"
    lines = _metric_lines(body)
    for namespace, name, dims in lines:
        assert namespace == env["POWERTOOLS_METRICS_NAMESPACE"] == DEFAULT_NAMESPACE
        assert name in emitted, f"the dashboard shows {name}, which the handler never emits"
        assert frozenset(dims) in emitted[name], f"{name} is emitted with other dimensions"
        assert dims["service"] == env["POWERTOOLS_SERVICE_NAME"] == STACK
        assert dims["mode"] == mode
    shown = {name for _, name, _ in lines}
    wanted = {"KeysTotal", "KeysEligible", "KeysDeleted", "TableBytes", "IndexBytes"}
    assert wanted | {"TotalBytes", "DurationMs", "Runs"} <= shown
    statuses = {dims["status"] for _, name, dims in lines if name == "Runs"}
    assert statuses == {"completed", "partial", "skipped", "aborted", "failed"}


def test_dashboard_shows_every_alarms_state_and_its_url_is_an_output() -> None:
    stack = Stack()
    (widget,) = [w for w in _dashboard(stack)["widgets"] if w["type"] == "alarm"]
    assert sorted(widget["properties"]["alarms"]) == sorted(f"<{a}.Arn>" for a in ALARMS)
    url = stack.resolve(TEMPLATE["Outputs"]["DashboardUrl"]["Value"])
    assert url.startswith("https://eu-west-1.console.aws.amazon.com/cloudwatch/")
    assert url.endswith("#dashboards:name=<Dashboard>")


# Every resource type in the template is in one of these two sets, so a new resource needs a
# decision about its tags.
TAGGED_AS_LIST = {
    "AWS::IAM::Role",
    "AWS::SQS::Queue",
    "AWS::Logs::LogGroup",
    "AWS::CloudWatch::Alarm",
    "AWS::SNS::Topic",
}


UNTAGGABLE = {"AWS::SQS::QueuePolicy", "AWS::SNS::Subscription", "AWS::CloudWatch::Dashboard"}


def test_every_taggable_resource_carries_the_app_tag() -> None:
    stack = Stack(AlarmEmail="oncall@example.com")
    for name, resource in RESOURCES.items():
        kind = resource["Type"]
        if kind == "AWS::Serverless::Function":
            assert stack.prop(name, "Tags") == {"app": "keys-cleanup"}
            assert stack.prop(name, "PropagateTags") is True
            continue
        assert kind in TAGGED_AS_LIST | UNTAGGABLE, f"{name}: decide whether {kind} takes tags"
        if kind in TAGGED_AS_LIST:
            assert TAG in stack.prop(name, "Tags"), name
