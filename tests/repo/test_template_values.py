"""Deploy-time checks: a value that would fail every run fails the deploy instead.

Each parameter's AllowedPattern / AllowedValues / MinValue and the template's Rules are applied
as CloudFormation would (tests/support/template.py's resolver), and what the template accepts is
compared with what the function's own settings accept. Also: the role's VPC permissions are the
network-interface actions only, and the log group and the queues survive `sam delete`.
"""

from __future__ import annotations

from typing import Any

import pytest

from handler.settings import ConfigError, Settings
from tests.support.template import REQUIRED, RESOURCES, TEMPLATE, Stack, check_parameter

SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:telegram-AbCdEf"


SUBNETS = {"SubnetIds": "subnet-1,subnet-2", "SecurityGroupIds": "sg-1"}


def _function_settings(**parameters: str) -> Settings:
    """The settings the deployed function would build from its environment."""
    env = Stack(**parameters).prop("KeysCleanupFunction", "Environment", "Variables")
    return Settings.from_env({k: str(v) for k, v in env.items()})


def broken_rules(**parameters: str) -> list[str]:
    """The names of the template Rules whose assertions fail for these parameters."""
    stack = Stack(**parameters)
    broken = []
    for name, rule in TEMPLATE.get("Rules", {}).items():
        if "RuleCondition" in rule and not stack.resolve(rule["RuleCondition"]):
            continue
        if not all(stack.resolve(a["Assert"]) for a in rule["Assertions"]):
            broken.append(name)
    return broken


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MaxDeleteFraction", "0"),
        ("MaxDeleteFraction", "0.000"),
        ("MaxDeleteFraction", "1.5"),
        ("RetentionDays", "3"),
        ("MinRetentionDays", "3"),
        ("TableName", "public.whatsapp-keys"),
        ("TableName", "a.b.c"),
        ("TableName", "pg_catalog.pg_class"),
        ("TableName", "Information_Schema.tables"),
        ("AuthTableName", "whatsapp auth"),
        ("TimestampTimezone", "Europe/Berln"),
        ("TimestampTimezone", "CET"),
        ("TimestampTimezone", "EST"),
        ("TimestampTimezone", "+02:00"),
        ("TypeRetentionDays", "pre-key:60"),
        ("TypeRetentionDays", "pre-key=3"),
        ("TypeRetentionDays", "pre-key=4000"),
        ("TypeRetentionDays", "pre-key=60,"),
        ("SentryDsnSecretArn", "/keys-cleanup/sentry-dsn"),
        ("TelegramBotTokenSecretArn", "arn:aws:ssm:eu-west-1:123456789012:parameter/token"),
        ("TelegramChatId", "my chat"),
    ],
)
def test_values_that_fail_every_run_are_refused_at_deploy(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        check_parameter(name, value)


@pytest.mark.parametrize(
    ("name", "value", "variable"),
    [
        ("MaxDeleteFraction", "0", "CLEANUP_MAX_DELETE_FRACTION"),
        ("RetentionDays", "3", "CLEANUP_RETENTION_DAYS"),
        ("TableName", "public.whatsapp-keys", "CLEANUP_TABLE"),
        ("TableName", "pg_catalog.pg_class", "CLEANUP_TABLE"),
        ("TimestampTimezone", "Europe/Berln", "CLEANUP_TIMESTAMP_TIMEZONE"),
        ("TypeRetentionDays", "pre-key:60", "CLEANUP_TYPE_RETENTION_DAYS"),
        ("TypeRetentionDays", "pre-key=3", "CLEANUP_TYPE_RETENTION_DAYS"),
    ],
)
def test_what_the_template_refuses_the_function_refuses_too(
    name: str, value: str, variable: str
) -> None:
    # The deploy-time check is not stricter by accident: the run would fail on the same value.
    env = {"DATABASE_URL": "postgresql://u@h/d", variable: value}
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env(env)


@pytest.mark.parametrize(
    "parameters",
    [
        {},
        {"MaxDeleteFraction": "0.05"},
        {"MaxDeleteFraction": "1"},
        {"RetentionDays": "7"},
        {"RetentionDays": "3650", "MinRetentionDays": "30"},
        {"TableName": "public.whatsapp_keys", "AuthTableName": "app.whatsapp_auth"},
        {"TableName": "WhatsApp$Keys"},
        {"TimestampTimezone": "Europe/Berlin"},
        {"TimestampTimezone": "UTC"},
        {"TimestampTimezone": "America/Argentina/Buenos_Aires"},
        {"TypeRetentionDays": "pre-key=60,session=45,sender-key=3650"},
        {"TelegramBotTokenSecretArn": SECRET, "TelegramChatId": "-1001234567890"},
        {"TelegramBotTokenSecretArn": SECRET, "TelegramChatId": "@keys_cleanup"},
    ],
)
def test_what_the_template_accepts_the_function_accepts(parameters: dict[str, str]) -> None:
    assert broken_rules(**parameters) == []
    _function_settings(**parameters)


def test_every_time_zone_the_template_offers_is_one_the_function_accepts() -> None:
    zones = [str(z) for z in TEMPLATE["Parameters"]["TimestampTimezone"]["AllowedValues"]]
    assert len(zones) > 400
    assert zones[:3] == ["", "UTC", "Africa/Abidjan"]
    for zone in zones[1:]:
        settings = Settings.from_env({"CLEANUP_TIMESTAMP_TIMEZONE": zone})
        assert settings.timestamp_timezone == zone


@pytest.mark.parametrize(
    ("parameters", "rule"),
    [
        ({"TelegramBotTokenSecretArn": SECRET}, "TelegramTokenNeedsAChat"),
        ({"TelegramChatId": "-1001234567890"}, "TelegramChatNeedsAToken"),
    ],
)
def test_a_half_configured_telegram_fails_the_deploy(parameters: dict[str, str], rule: str) -> None:
    assert broken_rules(**parameters) == [rule]


def test_the_secret_parameters_take_secrets_manager_arns_only() -> None:
    # The role grants secretsmanager:GetSecretValue on the given ARNs and nothing on SSM: an SSM
    # parameter name would be refused at every run with AccessDenied.
    for name in ("DatabaseSecretArn", "SentryDsnSecretArn", "TelegramBotTokenSecretArn"):
        check_parameter(name, REQUIRED["DatabaseSecretArn"])
        with pytest.raises(ValueError, match=name):
            check_parameter(name, "/keys-cleanup/secret")
    statements = [
        s
        for p in Stack(SentryDsnSecretArn=SECRET).prop("KeysCleanupFunctionRole", "Policies")
        for s in p["PolicyDocument"]["Statement"]
    ]
    assert not any(str(s["Action"]).startswith("ssm:") for s in statements)


def _role(**parameters: str) -> dict[str, Any]:
    role: dict[str, Any] = Stack(**parameters).prop("KeysCleanupFunctionRole")
    return role


def _actions(role: dict[str, Any]) -> list[tuple[str, Any]]:
    found = []
    for policy in role["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            actions = statement["Action"]
            for action in [actions] if isinstance(actions, str) else actions:
                found.append((action, statement["Resource"]))
    return found


def test_inside_a_vpc_the_role_gets_the_network_interface_actions_and_no_more() -> None:
    outside, inside = _role(), _role(**SUBNETS)
    assert "ManagedPolicyArns" not in inside, "a managed policy brings logs:* on every group"
    added = set(_actions(inside)) - set(_actions(outside))
    assert {action for action, _ in added} == {
        "ec2:CreateNetworkInterface",
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeSubnets",
        "ec2:DeleteNetworkInterface",
        "ec2:AssignPrivateIpAddresses",
        "ec2:UnassignPrivateIpAddresses",
    }
    logs = [(a, r) for a, r in _actions(inside) if a.startswith("logs:")]
    assert logs
    assert all(r == "<FunctionLogGroup.Arn>" for _, r in logs)
    assert not any(a.startswith("ec2:") for a, _ in _actions(outside))


# --- teardown keeps the record --------------------------------------------------------------------


@pytest.mark.parametrize(
    "resource", ["FunctionLogGroup", "FailedInvocationQueue", "ScheduleDeadLetterQueue"]
)
def test_logs_and_queues_outlive_the_stack(resource: str) -> None:
    assert RESOURCES[resource]["DeletionPolicy"] == "Retain"
    assert RESOURCES[resource]["UpdateReplacePolicy"] == "Retain"


def test_every_parameter_is_in_one_console_group() -> None:
    groups = TEMPLATE["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    grouped = [name for group in groups for name in group["Parameters"]]
    assert sorted(grouped) == sorted(TEMPLATE["Parameters"])
    database = next(g for g in groups if g["Label"]["default"] == "Database")["Parameters"]
    assert {"AuthTableName", "TimestampTimezone"} <= set(database)
