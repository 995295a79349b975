"""template.yaml read as CloudFormation would: the resolver (Stack) and what the handler emits."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml

from handler.observability import DEFAULT_NAMESPACE, publish_failure, publish_report
from tests.support.notify import make_report

TEMPLATE = cfn_yaml.load(str(Path(__file__).resolve().parents[2] / "template.yaml"))


RESOURCES: dict[str, Any] = TEMPLATE["Resources"]


STACK = "keys-cleanup-test"


REQUIRED = {"DatabaseSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf"}


class _NoValue:
    """AWS::NoValue: the property is left out."""


NO_VALUE = _NoValue()


def check_parameter(name: str, value: str) -> None:
    """What CloudFormation checks of one parameter value: pattern, allowed values, bounds."""
    spec = TEMPLATE["Parameters"][name]
    pattern = spec.get("AllowedPattern")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise ValueError(f"parameter {name}={value!r} does not match its AllowedPattern")
    allowed = spec.get("AllowedValues")
    if allowed is not None and value not in [str(v) for v in allowed]:
        raise ValueError(f"parameter {name}={value!r} is not one of its AllowedValues")
    if spec["Type"] == "Number":
        number = float(value)
        if "MinValue" in spec and number < float(spec["MinValue"]):
            raise ValueError(f"parameter {name}={value!r} is below its MinValue")
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            raise ValueError(f"parameter {name}={value!r} is above its MaxValue")


class Stack:
    """The template resolved for one set of parameter values."""

    def __init__(self, **parameters: str) -> None:
        values = {
            name: str(spec.get("Default", "")) for name, spec in TEMPLATE["Parameters"].items()
        }
        values |= REQUIRED | parameters
        for name, value in values.items():
            check_parameter(name, value)
        self.params: dict[str, Any] = values | {
            "AWS::StackName": STACK,
            "AWS::Region": "eu-west-1",
            "AWS::AccountId": "123456789012",
            "AWS::Partition": "aws",
            "AWS::NoValue": NO_VALUE,
        }

    def condition(self, name: str) -> bool:
        return bool(self.resolve(TEMPLATE["Conditions"][name]))

    def exists(self, resource: str) -> bool:
        name = RESOURCES[resource].get("Condition")
        return name is None or self.condition(name)

    def prop(self, resource: str, *path: str) -> Any:
        node: Any = RESOURCES[resource]["Properties"]
        for key in path:
            node = node[key]
        return self.resolve(node)

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            items = [self.resolve(item) for item in node]
            return [item for item in items if item is not NO_VALUE]
        if not isinstance(node, Mapping):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return self.params.get(arg, f"<{arg}>")
            if key == "Condition":
                return self.condition(arg)
            if key in _FUNCTIONS:
                return _FUNCTIONS[key](self, arg)
        return {
            k: v for k, v in ((k, self.resolve(v)) for k, v in node.items()) if v is not NO_VALUE
        }

    def sub(self, arg: Any) -> str:
        text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in extra:
                return str(extra[name])
            if name in self.params:
                return str(self.params[name])
            return f"<{name}>"  # a resource's Ref or GetAtt: its logical id stands in

        return re.sub(r"\$\{([^}!]+)\}", value, text)


_FUNCTIONS: dict[str, Any] = {
    "Fn::Sub": Stack.sub,
    "Fn::If": lambda s, a: s.resolve(a[1] if s.condition(a[0]) else a[2]),
    "Fn::Equals": lambda s, a: str(s.resolve(a[0])) == str(s.resolve(a[1])),
    "Fn::Not": lambda s, a: not s.resolve(a[0]),
    "Fn::And": lambda s, a: all(s.resolve(c) for c in a),
    "Fn::Or": lambda s, a: any(s.resolve(c) for c in a),
    "Fn::Select": lambda s, a: s.resolve(a[1])[int(s.resolve(a[0]))],
    "Fn::Split": lambda s, a: str(s.resolve(a[1])).split(a[0]),
    "Fn::Join": lambda s, a: a[0].join(str(v) for v in s.resolve(a[1])),
    "Fn::GetAtt": lambda s, a: f"<{'.'.join(a) if isinstance(a, list) else a}>",
}


def _emitted(capsys: pytest.CaptureFixture[str]) -> dict[str, set[frozenset[str]]]:
    """Metric name -> the dimension sets the handler's EMF blobs give it."""
    capsys.readouterr()
    publish_report(make_report())
    publish_report(make_report(dry_run=True, deleted=0))
    publish_failure("live")
    emitted: dict[str, set[frozenset[str]]] = {}
    for line in capsys.readouterr().out.splitlines():
        if '"_aws"' not in line:
            continue
        for directive in json.loads(line)["_aws"]["CloudWatchMetrics"]:
            assert directive["Namespace"] == DEFAULT_NAMESPACE
            for metric in directive["Metrics"]:
                for dims in directive["Dimensions"]:
                    emitted.setdefault(metric["Name"], set()).add(frozenset(dims))
    return emitted
