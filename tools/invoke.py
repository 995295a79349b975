"""`make invoke`: run the function as Lambda runs it, on this machine, without Docker.

What `sam local invoke` runs inside its container, run here directly (docs/local-invoke.md):

1. build: the Makefile's SAM recipe (`build-KeysCleanupFunction`) for this machine's
   architecture into BUILD/task (Lambda's /var/task); the runtime's own packages (awslambdaric,
   boto3; `build-lambda-runtime`) into BUILD/runtime (its /var/runtime); the AWS Lambda Runtime
   Interface Emulator, copied from the pinned aws-sam-cli wheel, into BUILD/bin;
2. the emulator starts `python -m awslambdaric <Handler>` from BUILD/task on free 127.0.0.1
   ports, with the function's environment from template.yaml, the caller's variables on top;
3. the event is posted to the invoke API; the response payload goes to stdout, the function's
   log lines, the response size and the duration to stderr;
4. the emulator is stopped, always.

Exit codes: 0 the function returned, 1 the function failed (error payload, timeout or init
error; errorType and errorMessage on stderr), 2 the tool itself could not run.

The module is also the API the tests use: `build()`, `load_function()`, `Emulator`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TextIO

import yaml

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "template.yaml"
SAMCONFIG = REPO / "samconfig.toml"
SAM_CLI_VERSION_FILE = REPO / "ci" / "sam-cli-version"
DEFAULT_BUILD_DIR = REPO / ".aws-sam" / "invoke"
FUNCTION_ID = "KeysCleanupFunction"
INVOKE_PATH = "/2015-03-31/functions/function/invocations"

# Everything whose change means a new build; the stamp of a finished build records their hash.
BUILD_INPUTS = ("uv.lock", "Makefile", "pyproject.toml", "ci/sam-cli-version")

# The caller's variables that reach the function, over the template's values: the function's
# settings, Powertools', libpq's, and AWS credentials, region and endpoints (a local endpoint
# stands in for Secrets Manager in the tests). Nothing else of the caller's shell leaks in.
PASS_PREFIXES = ("CLEANUP_", "DATABASE_", "SENTRY_", "TELEGRAM_", "POWERTOOLS_", "AWS_", "PG")
# Set by the runtime itself, never by the caller (the timeout and memory have options).
RESERVED = re.compile(r"AWS_LAMBDA_.*|AWS_EXECUTION_ENV|_HANDLER|LAMBDA_.*")

# CloudFormation pseudo parameters, as `sam local` fills them in (its intrinsics symbol table).
# load_function() takes the stack name from samconfig.toml instead of "local", so that
# POWERTOOLS_SERVICE_NAME (the metrics' `service` dimension) is the deployed function's.
PSEUDO_PARAMETERS = {
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "localhost",
    "AWS::Region": "us-east-1",
    "AWS::StackName": "local",
}

# The emulator's architectures, by the names platform.machine() gives them.
RIE_BINARIES = {
    "x86_64": "aws-lambda-rie-x86_64",
    "amd64": "aws-lambda-rie-x86_64",
    "aarch64": "aws-lambda-rie-arm64",
    "arm64": "aws-lambda-rie-arm64",
}
# The invoke API answers this text (HTTP 200) when the function ran out of time; Lambda's own
# errorType for it is Sandbox.Timedout.
TIMED_OUT = re.compile(rb"^Task timed out after [0-9.]+ seconds")
REPORT_LINE = re.compile(r"^REPORT RequestId: (\S+).*?\tDuration: ([0-9.]+) ms")
START_LINE = re.compile(r"^START RequestId: (\S+)")
# Time the emulator gets to bind its port, and the runtime to start on top of the timeout.
START_TIMEOUT_S = 15.0
START_ATTEMPTS = 3
INIT_ALLOWANCE_S = 30.0


class InvokeError(RuntimeError):
    """The tool could not build or run the emulator (not a function error)."""


# --- the function, as template.yaml declares it ----------------------------------------------


@dataclass(frozen=True)
class Function:
    logical_id: str
    handler: str
    runtime: str
    timeout_s: int
    memory_mb: int
    log_format: str | None
    environment: dict[str, str]
    # Variables whose value could not be resolved locally (a parameter without a default, an
    # attribute of another resource): left out, so the function sees them unset.
    unresolved: tuple[str, ...] = ()


class _TemplateLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms: `!Ref X` -> {"Ref": X}, `!Sub s` ->
    {"Fn::Sub": s}, and so on (cfn-lint's own decoder would cost 2 s of import per invoke)."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


_TemplateLoader.add_multi_constructor("!", _intrinsic)


def resolve(value: Any, parameters: Mapping[str, str]) -> str | None:
    """A template value as the string Lambda would see, or None when it cannot be known here.

    Scalars as they are, `!Ref` to a parameter (its default or an override) or to a pseudo
    parameter, and `!Sub` over those. Anything else (`!GetAtt`, `!If`, ...) is None.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, Mapping) and len(value) == 1:
        ((name, arg),) = value.items()
        if name == "Ref" and isinstance(arg, str):
            return parameters.get(arg)
        if name == "Fn::Sub" and isinstance(arg, str):
            missing: list[str] = []

            def sub(match: re.Match[str]) -> str:
                found = parameters.get(match.group(1))
                if found is None:
                    missing.append(match.group(1))
                    return ""
                return found

            text = re.sub(r"\$\{([A-Za-z0-9:]+)\}", sub, arg)
            return None if missing else text
    return None


def stack_name(samconfig: Path = SAMCONFIG) -> str | None:
    try:
        config = tomllib.loads(samconfig.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    name = config.get("default", {}).get("global", {}).get("parameters", {}).get("stack_name")
    return name if isinstance(name, str) else None


def load_function(
    template: Path = TEMPLATE,
    logical_id: str = FUNCTION_ID,
    *,
    region: str | None = None,
    parameter_overrides: Mapping[str, str] | None = None,
) -> Function:
    """The function's handler, runtime, timeout, memory and resolved environment."""
    try:
        doc = yaml.load(template.read_text(), Loader=_TemplateLoader)  # noqa: S506 - safe loader
    except yaml.YAMLError as exc:
        raise InvokeError(f"{template}: cannot parse: {exc}") from None
    resource = doc.get("Resources", {}).get(logical_id)
    if resource is None or resource.get("Type") != "AWS::Serverless::Function":
        raise InvokeError(f"{template}: no AWS::Serverless::Function {logical_id}")
    props = resource.get("Properties", {})
    globals_ = doc.get("Globals", {}).get("Function", {})

    def prop(name: str, default: Any = None) -> Any:
        return props.get(name, globals_.get(name, default))

    parameters = dict(PSEUDO_PARAMETERS)
    parameters["AWS::StackName"] = stack_name() or PSEUDO_PARAMETERS["AWS::StackName"]
    if region:
        parameters["AWS::Region"] = region
    for name, spec in doc.get("Parameters", {}).items():
        if "Default" in spec:
            default = resolve(spec["Default"], {})
            if default is not None:
                parameters[name] = default
    parameters.update(parameter_overrides or {})

    environment: dict[str, str] = {}
    unresolved: list[str] = []
    variables = {
        **globals_.get("Environment", {}).get("Variables", {}),
        **props.get("Environment", {}).get("Variables", {}),
    }
    for name, value in variables.items():
        resolved = resolve(value, parameters)
        if resolved is None:
            unresolved.append(name)
        else:
            environment[name] = resolved
    return Function(
        logical_id=logical_id,
        handler=str(prop("Handler")),
        runtime=str(prop("Runtime")),
        timeout_s=int(prop("Timeout", 3)),
        memory_mb=int(prop("MemorySize", 128)),
        log_format=(prop("LoggingConfig") or {}).get("LogFormat"),
        environment=environment,
        unresolved=tuple(unresolved),
    )


# --- the build ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    root: Path
    task: Path  # the function's package, as the SAM build makes it (Lambda's /var/task)
    runtime: Path  # awslambdaric and boto3 (Lambda's /var/runtime)
    rie: Path  # the emulator binary
    python: Path  # a plain interpreter of the function's Python version

    @classmethod
    def at(cls, root: Path) -> Build:
        return cls(
            root, root / "task", root / "runtime", root / "bin" / "aws-lambda-rie", _python()
        )


def _python() -> Path:
    """The base interpreter under the project's environment: no site-packages of ours."""
    return Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"


def _machine() -> str:
    machine = platform.machine().lower()
    if machine not in RIE_BINARIES:
        raise InvokeError(f"no Runtime Interface Emulator for the architecture {machine}")
    return "aarch64" if RIE_BINARIES[machine].endswith("arm64") else "x86_64"


def _sources_hash(sam_cli_version: str) -> str:
    digest = hashlib.sha256()
    digest.update(f"{sam_cli_version} {_machine()} {sys.version}".encode())
    for name in BUILD_INPUTS:
        digest.update(name.encode() + b"\0" + (REPO / name).read_bytes())
    for path in sorted((REPO / "handler").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def sam_cli_version() -> str:
    return os.environ.get("SAM_CLI_VERSION") or SAM_CLI_VERSION_FILE.read_text().strip()


def _run(command: Sequence[str], what: str) -> str:
    result = subprocess.run(  # noqa: S603 - make and uv with fixed arguments
        command, cwd=REPO, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        # pip warns about each configured index folder that does not exist: noise.
        noise = "is neither a file nor a directory"
        output = "\n".join(
            line for line in (result.stdout + result.stderr).splitlines() if noise not in line
        )
        raise InvokeError(f"{what} failed (exit {result.returncode}):\n{output}")
    return result.stdout


def _find_rie(version: str, uv: str) -> Path:
    """The emulator inside the pinned aws-sam-cli wheel (uv's tool cache keeps it)."""
    where = _run(
        [
            uv,
            "tool",
            "run",
            "--quiet",
            "--from",
            f"aws-sam-cli=={version}",
            "python",
            "-c",
            "import pathlib, samcli; print(pathlib.Path(samcli.__file__).parent / 'local/rapid')",
        ],
        f"aws-sam-cli {version}",
    )
    binary = Path(where.strip()) / RIE_BINARIES[platform.machine().lower()]
    if not binary.is_file():
        raise InvokeError(f"aws-sam-cli {version} has no {binary.name}")
    return binary


def build(build_dir: Path = DEFAULT_BUILD_DIR, *, log: TextIO | None = sys.stderr) -> Build:
    """Build (or reuse) the function, the runtime's packages and the emulator in `build_dir`.

    A stamp holds the hash of every input, so an unchanged tree is not rebuilt; a file lock
    lets concurrent callers (pytest-xdist workers) share one build.
    """
    build_dir = build_dir.resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    result = Build.at(build_dir)
    runtime = load_function().runtime
    # The function's wheels are built for its Python: the emulator must run that one.
    if result.python.name != runtime or not result.python.is_file():
        raise InvokeError(f"run this with the function's Python ({runtime}), not {result.python}")
    version = sam_cli_version()
    make = os.environ.get("MAKE", "make")
    uv = os.environ.get("UV", "uv")
    stamp = build_dir / ".stamp"
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wanted = _sources_hash(version)
        parts = (result.task / "handler", result.runtime / "awslambdaric", result.rie)
        if stamp.is_file() and stamp.read_text() == wanted and all(p.exists() for p in parts):
            return result
        started = time.monotonic()
        stamp.unlink(missing_ok=True)
        for part in (result.task, result.runtime, result.rie.parent):
            shutil.rmtree(part, ignore_errors=True)
        common = [make, "--no-print-directory", "-s", f"LAMBDA_ARCH={_machine()}", f"UV={uv}"]
        _run([*common, "build-KeysCleanupFunction", f"ARTIFACTS_DIR={result.task}"], "build")
        _run([*common, "build-lambda-runtime", f"RUNTIME_DIR={result.runtime}"], "runtime build")
        result.rie.parent.mkdir(parents=True)
        shutil.copy2(_find_rie(version, uv), result.rie)
        result.rie.chmod(0o755)
        stamp.write_text(wanted)
        if log is not None:
            log.write(f"invoke: built {build_dir} in {time.monotonic() - started:.1f} s\n")
    return result


# --- the environment ---------------------------------------------------------------------------


def function_environment(
    function: Function,
    build: Build,
    *,
    caller: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
    timeout_s: int | None = None,
    memory_mb: int | None = None,
) -> dict[str, str]:
    """The environment the function sees: Lambda's own variables, the template's, then the
    caller's (PASS_PREFIXES), then `overrides`. The emulator passes all of it on."""
    region = caller.get("AWS_REGION") or caller.get("AWS_DEFAULT_REGION") or "us-east-1"
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        "HOME": caller.get("HOME", "/tmp"),  # noqa: S108 - botocore may look up ~/.aws
        "PYTHONPATH": str(build.runtime),
        # Lambda's /var/task is read-only: every cold start compiles the code afresh.
        "PYTHONDONTWRITEBYTECODE": "1",
        "LAMBDA_TASK_ROOT": str(build.task),
        "LAMBDA_RUNTIME_DIR": str(build.runtime),
        "_HANDLER": function.handler,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{function.runtime}",
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_LAMBDA_FUNCTION_NAME": function.logical_id,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_TIMEOUT": str(timeout_s or function.timeout_s),
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb or function.memory_mb),
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function.logical_id}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "local/[$LATEST]invoke",
    }
    if function.log_format:
        env["AWS_LAMBDA_LOG_FORMAT"] = function.log_format
    env.update(function.environment)
    env.update(
        (name, value)
        for name, value in caller.items()
        if name.startswith(PASS_PREFIXES) and not RESERVED.fullmatch(name)
    )
    env.update(overrides or {})
    return env


# --- the emulator --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    status: int  # the invoke API's HTTP status
    body: bytes
    elapsed_ms: float  # the HTTP round trip, a cold start's init included
    request_id: str | None
    duration_ms: float | None  # the emulator's REPORT line: the handler's own run
    log: list[str] = field(default_factory=list)  # the emulator's output for this invocation

    @property
    def payload(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def error(self) -> tuple[str, str] | None:
        """(errorType, errorMessage) for a function error, a timeout or an init failure."""
        if TIMED_OUT.match(self.body):
            return "Sandbox.Timedout", self.body.decode(errors="replace")
        payload = self.payload
        if isinstance(payload, dict) and {"errorType", "errorMessage"} <= payload.keys():
            return str(payload["errorType"]), str(payload["errorMessage"])
        if self.status != 200:
            return f"HTTP {self.status}", self.body.decode(errors="replace")
        return None


def _free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (held together, so all distinct)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


class Emulator:
    """The Runtime Interface Emulator running the function; one runtime process, kept warm
    between invocations as Lambda keeps an execution environment."""

    def __init__(
        self,
        build: Build,
        function: Function,
        env: Mapping[str, str],
        *,
        echo: TextIO | None = None,
        log_level: str = "error",
    ) -> None:
        self.build = build
        self.function = function
        self.env = dict(env)
        self.echo = echo
        self.log_level = log_level
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.port = 0

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def timeout_s(self) -> int:
        return int(self.env["AWS_LAMBDA_FUNCTION_TIMEOUT"])

    def start(self) -> None:
        # A free port can be taken by someone else before the emulator binds it: try again.
        for attempt in range(START_ATTEMPTS):
            try:
                self._spawn()
                return
            except InvokeError:
                if attempt == START_ATTEMPTS - 1:
                    raise

    def _spawn(self) -> None:
        self.port, api_port = _free_ports(2)
        self.lines.clear()
        command = [
            str(self.build.rie),
            "--log-level",
            self.log_level,
            "--runtime-interface-emulator-address",
            f"127.0.0.1:{self.port}",
            "--runtime-api-address",
            f"127.0.0.1:{api_port}",
            # -S: only the stdlib, the function's package and the runtime's, as in Lambda.
            str(self.build.python),
            "-S",
            "-m",
            "awslambdaric",
            self.function.handler,
        ]
        self._process = subprocess.Popen(  # noqa: S603 - our own build's binary
            command,
            cwd=self.build.task,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            # Its own process group, so stop() ends the runtime process it spawned as well.
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, args=(self._process,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self.stop()
                raise InvokeError("the emulator exited at start:\n" + "\n".join(self.lines))
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise InvokeError(f"the emulator did not listen on 127.0.0.1:{self.port}")

    def _read(self, process: subprocess.Popen[str]) -> None:
        for raw in process.stdout or ():
            line = raw.rstrip("\n")
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
            if self.echo is not None:
                self.echo.write(line + "\n")
                self.echo.flush()

    def invoke(self, event: Any, *, raw: bytes | None = None) -> Invocation:
        """Post `event` (JSON-encoded; or `raw` bytes as they are) and wait for the answer."""
        body = raw if raw is not None else json.dumps(event).encode()
        first_line = len(self.lines)
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{INVOKE_PATH}", data=body, method="POST"
        )
        started = time.monotonic()
        try:
            with urllib.request.urlopen(  # noqa: S310 - a fixed http://127.0.0.1 URL
                request, timeout=self.timeout_s + INIT_ALLOWANCE_S
            ) as response:
                status, answer = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, answer = exc.code, exc.read()
        except (urllib.error.URLError, TimeoutError) as exc:
            raise InvokeError(f"the emulator did not answer: {exc}") from exc
        elapsed_ms = (time.monotonic() - started) * 1000
        request_id, duration_ms, log = self._report(first_line)
        return Invocation(status, answer, elapsed_ms, request_id, duration_ms, log)

    def _report(self, first_line: int) -> tuple[str | None, float | None, list[str]]:
        """This invocation's lines, up to the emulator's REPORT line (printed just after it
        answers, so wait a moment for it)."""
        deadline = time.monotonic() + 2.0
        with self._changed:
            while True:
                lines = self.lines[first_line:]
                for line in lines:
                    if match := REPORT_LINE.match(line):
                        return match.group(1), float(match.group(2)), lines
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    started = [m.group(1) for line in lines if (m := START_LINE.match(line))]
                    return (started[0] if started else None), None, lines
                self._changed.wait(remaining)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # The runtime may outlive the emulator for a moment; the group is ours alone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(timeout=5)


# --- the command ---------------------------------------------------------------------------------


def _read_event(path: str) -> bytes:
    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    json.loads(data)  # the invoke API would take anything; an operator's typo should not go
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make invoke",
        description="Invoke the function in the Lambda Runtime Interface Emulator, no Docker.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--event", "-e", default="events/dry-run.json", help="event JSON, - for stdin"
    )
    parser.add_argument("--timeout", type=int, help="seconds (default: the template's Timeout)")
    parser.add_argument("--memory", type=int, help="MB (default: the template's MemorySize)")
    parser.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD_DIR)
    parser.add_argument("--function", default=FUNCTION_ID, help="logical id in template.yaml")
    args = parser.parse_args(argv)
    if args.timeout is not None and not 1 <= args.timeout <= 900:
        parser.error("--timeout: Lambda allows 1 to 900 seconds")
    if args.memory is not None and not 128 <= args.memory <= 10240:
        parser.error("--memory: Lambda allows 128 to 10240 MB")
    try:
        event = _read_event(args.event)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"invoke: cannot read the event {args.event}: {exc}\n")
        return 2

    try:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        function = load_function(logical_id=args.function, region=region)
        artifact = build(args.build_dir)
        env = function_environment(
            function, artifact, caller=os.environ, timeout_s=args.timeout, memory_mb=args.memory
        )
        with Emulator(artifact, function, env, echo=sys.stderr) as emulator:
            result = emulator.invoke(None, raw=event)
    except InvokeError as exc:
        sys.stderr.write(f"invoke: {exc}\n")
        return 2
    sys.stdout.buffer.write(result.body + b"\n")
    sys.stdout.flush()
    report = f", REPORT {result.duration_ms:.0f} ms" if result.duration_ms is not None else ""
    sys.stderr.write(
        f"invoke: HTTP {result.status}, response {len(result.body)} bytes, "
        f"{result.elapsed_ms:.0f} ms round trip{report} "
        f"(timeout {env['AWS_LAMBDA_FUNCTION_TIMEOUT']} s, "
        f"memory {env['AWS_LAMBDA_FUNCTION_MEMORY_SIZE']} MB)\n"
    )
    if function.unresolved:
        sys.stderr.write(
            "invoke: not set (no local value in template.yaml): "
            + ", ".join(n for n in function.unresolved if n not in env)
            + "\n"
        )
    if result.error is not None:
        error_type, message = result.error
        sys.stderr.write(f"invoke: function error: {error_type}: {message}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
