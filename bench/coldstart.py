"""Lambda cold start: the import cost of handler.app against its third-party imports alone.

Each sample is a fresh interpreter that times only the import statement (interpreter start-up
is the same for both and is not ours to optimise). The third-party set is read from a fresh
interpreter's sys.modules after `import handler.app`, so it is exactly what the handler pulls
in at import time, no more.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP_MODULE = "handler.app"

_LIST_THIRD_PARTY = """
import json, sys
before = set(sys.modules)
import {module}
names = set()
for name in set(sys.modules) - before:
    top = name.split('.')[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        continue
    if top == 'handler' or top.startswith('_'):
        continue
    names.add(top)
print(json.dumps(sorted(names)))
"""

_TIME_IMPORT = """
import time
t = time.perf_counter()
{imports}
print(time.perf_counter() - t)
"""


def _python(code: str) -> str:
    env = dict(os.environ)
    # Powertools and Sentry read these at import; a Lambda has them set.
    env.setdefault("POWERTOOLS_SERVICE_NAME", "keys-cleanup")
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env["PYTHONDONTWRITEBYTECODE"] = "0"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"python -c failed: {tail[0]}")
    return out.stdout.strip().splitlines()[-1]


def third_party_of(module: str = APP_MODULE) -> list[str]:
    names: list[str] = json.loads(_python(_LIST_THIRD_PARTY.format(module=module)))
    return names


def measure(samples: int = 10) -> dict[str, object]:
    """Median import times of handler.app and of its third-party modules, in fresh interpreters."""
    try:
        deps = third_party_of()
    except RuntimeError as exc:
        return {"available": False, "reason": str(exc)}
    app_code = _TIME_IMPORT.format(imports=f"import {APP_MODULE}")
    deps_code = _TIME_IMPORT.format(imports="\n".join(f"import {d}" for d in deps) or "pass")
    # One warm-up of each, so both read compiled bytecode from a warm file cache.
    _python(app_code)
    _python(deps_code)
    app_s: list[float] = []
    deps_s: list[float] = []
    for _ in range(samples):  # alternate, so drift hits both alike
        app_s.append(float(_python(app_code)))
        deps_s.append(float(_python(deps_code)))
    app_med = statistics.median(app_s)
    deps_med = statistics.median(deps_s)
    return {
        "available": True,
        "samples": samples,
        "third_party": deps,
        "app_import_ms": round(app_med * 1000, 1),
        "deps_import_ms": round(deps_med * 1000, 1),
        "ratio": round(app_med / deps_med, 3) if deps_med > 0 else None,
        "app_samples_ms": [round(s * 1000, 1) for s in app_s],
        "deps_samples_ms": [round(s * 1000, 1) for s in deps_s],
    }


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _zip_bytes(path: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "artifact.zip"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in sorted(path.rglob("*")):
                if p.is_file():
                    zf.write(p, p.relative_to(path))
        return target.stat().st_size


def _architecture() -> str:
    template = ROOT / "template.yaml"
    if template.exists() and "arm64" in template.read_text():
        return "arm64"
    return "x86_64"


def artifact_size(build: bool = True) -> dict[str, object]:
    """Size of the deployable artifact: `.aws-sam/build/<Function>` if built, else built here.

    Built here the way a SAM python build does it without Docker: the locked runtime
    dependencies (no dev group, no extras: the Lambda runtime ships boto3) installed for the
    Lambda platform, plus the handler package.
    """
    sam = ROOT / ".aws-sam" / "build"
    if sam.is_dir():
        functions = [p for p in sam.iterdir() if p.is_dir()]
        if functions:
            fn = max(functions, key=_tree_bytes)
            return {
                "source": f".aws-sam/build/{fn.name}",
                "unzipped_bytes": _tree_bytes(fn),
                "zipped_bytes": _zip_bytes(fn),
            }
    if not build:
        return {"source": None, "reason": "no .aws-sam/build and building was not asked for"}
    uv = shutil.which("uv")
    if uv is None:
        return {"source": None, "reason": "uv not found"}
    arch = _architecture()
    platform = "aarch64-manylinux_2_28" if arch == "arm64" else "x86_64-manylinux_2_28"
    with tempfile.TemporaryDirectory() as tmp:
        target = _install(uv, Path(tmp), platform)
        return {
            "source": f"built: uv export --no-dev + uv pip install --target ({platform})",
            "architecture": arch,
            "unzipped_bytes": _tree_bytes(target),
            "zipped_bytes": _zip_bytes(target),
        }


def _install(uv: str, tmp: Path, platform: str) -> Path:
    """The locked runtime dependencies for `platform` plus handler/, in tmp/pkg."""
    req = tmp / "requirements.txt"
    target = tmp / "pkg"
    export = ["export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes", "-o", str(req)]
    subprocess.run([uv, *export], cwd=ROOT, check=True, capture_output=True)
    install = [
        *("pip", "install", "--quiet", "--target", str(target), "-r", str(req)),
        *("--python-version", "3.13", "--python-platform", platform, "--only-binary", ":all:"),
    ]
    subprocess.run([uv, *install], cwd=ROOT, check=True, capture_output=True)
    shutil.copytree(
        ROOT / "handler", target / "handler", ignore=shutil.ignore_patterns("__pycache__")
    )
    return target
