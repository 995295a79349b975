# SAM `BuildMethod: makefile` entry point (see template.yaml). `sam build` runs
# `make build-KeysCleanupFunction` with ARTIFACTS_DIR set to the function's build folder.
#
# Why a makefile and not the python3.13 builder: the function runs on arm64 and this build
# must work on x86_64 machines without Docker. pip can fetch wheels for another platform when
# told the exact tags, so no emulation or container is needed.
#
# Runtime dependencies come from uv.lock (exact versions and hashes), minus the dev group and
# minus boto3, which the Lambda python3.13 runtime already ships.

ARTIFACTS_DIR ?= .aws-sam/manual-build
# Any Python that has pip; it does not need to be 3.13 or arm64. The first on PATH may lack
# pip (under `uvx ... sam build` it is SAM's own virtualenv), so look for one that has it.
ifndef PYTHON
PYTHON := $(shell IFS=:; for d in $$PATH; do for n in python3.13 python3; do \
	if [ -x "$$d/$$n" ] && "$$d/$$n" -m pip --version >/dev/null 2>&1; then \
	echo "$$d/$$n"; exit 0; fi; done; done)
endif
UV ?= uv

# psycopg-binary 3.3 publishes its arm64 wheels tagged manylinux_2_28 only; with an older tag
# alone pip would quietly pick an older psycopg. Other packages (pydantic-core, charset-normalizer)
# still tag manylinux_2_17 / manylinux2014, and pip does not expand a manylinux_2_28 --platform
# to older glibc tags by itself, so all three are listed. Lambda's Amazon Linux 2023 has glibc
# 2.34, which satisfies each of them.
LAMBDA_ARCH ?= aarch64
LAMBDA_PLATFORMS ?= manylinux_2_28_$(LAMBDA_ARCH) manylinux_2_17_$(LAMBDA_ARCH) \
	manylinux2014_$(LAMBDA_ARCH)
LAMBDA_PYTHON_VERSION := 3.13
# Extra `uv export` flags. ci/sam-check.sh builds the same package for this machine with
# `--extra aws` (boto3), standing in for the boto3 that the Lambda runtime provides.
UV_EXPORT_FLAGS ?=

REQUIREMENTS = $(ARTIFACTS_DIR)/.requirements.txt

# pip fetching wheels for Lambda's Python and architecture, whatever this machine runs.
PIP_INSTALL = PIP_ROOT_USER_ACTION=ignore $(PYTHON) -m pip install --quiet \
	--disable-pip-version-check --no-compile --require-hashes --only-binary=:all: \
	--implementation cp --python-version $(LAMBDA_PYTHON_VERSION) --abi cp313 \
	$(foreach p,$(LAMBDA_PLATFORMS),--platform $(p)) --upgrade

.PHONY: build-KeysCleanupFunction requirements build-lambda-runtime invoke

requirements:
	@test -n "$(PYTHON)" || { echo "no Python with pip on PATH; set PYTHON=..." >&2; exit 1; }
	mkdir -p "$(ARTIFACTS_DIR)"
	$(UV) export --frozen --no-dev --no-emit-project --format requirements-txt \
		$(UV_EXPORT_FLAGS) --output-file "$(REQUIREMENTS)" --quiet

# The runtime code only: the handler package without caches. Tests, bench, events, docs and
# the dev dependencies never reach the artifact. pip's console scripts (bin/) are useless there.
build-KeysCleanupFunction: requirements
	$(PIP_INSTALL) --target "$(ARTIFACTS_DIR)" -r "$(REQUIREMENTS)"
	rm -rf "$(REQUIREMENTS)" "$(ARTIFACTS_DIR)/bin"
	tar -c --exclude='__pycache__' --exclude='*.pyc' handler | tar -x -C "$(ARTIFACTS_DIR)"
	# The commit the artifact is built from, for Sentry's `release` (handler/notify/sentry.py);
	# "-dirty" when the tree has changes. Nothing outside a git checkout.
	git describe --always --abbrev=12 --dirty --exclude='*' >"$(ARTIFACTS_DIR)/handler/BUILD_COMMIT" \
		2>/dev/null || rm -f "$(ARTIFACTS_DIR)/handler/BUILD_COMMIT"

# --- make invoke: the function as Lambda runs it, on this machine, without Docker ------------
# tools/invoke.py builds the function with the recipe above for this machine's architecture,
# adds the runtime's own packages (below) and the Runtime Interface Emulator from the pinned
# SAM CLI, then posts EVENT to the emulator. See docs/local-invoke.md.
#   make invoke EVENT=events/dry-run.json [TIMEOUT=seconds] [MEMORY=MB]
EVENT ?= events/dry-run.json
INVOKE_DIR ?= .aws-sam/invoke
TIMEOUT ?=
MEMORY ?=

invoke:
	@$(UV) run --frozen python -m tools.invoke --event "$(EVENT)" --build-dir "$(INVOKE_DIR)" \
		$(if $(TIMEOUT),--timeout "$(TIMEOUT)") $(if $(MEMORY),--memory "$(MEMORY)")

# What the Lambda python3.13 runtime brings beside the function (its /var/runtime): the runtime
# interface client awslambdaric, and boto3. Pinned by the lockfile's `lambda-runtime` group.
RUNTIME_DIR ?= $(INVOKE_DIR)/runtime
RUNTIME_REQUIREMENTS = $(RUNTIME_DIR)/.requirements.txt

build-lambda-runtime:
	@test -n "$(PYTHON)" || { echo "no Python with pip on PATH; set PYTHON=..." >&2; exit 1; }
	mkdir -p "$(RUNTIME_DIR)"
	$(UV) export --frozen --only-group lambda-runtime --no-emit-project \
		--format requirements-txt --output-file "$(RUNTIME_REQUIREMENTS)" --quiet
	$(PIP_INSTALL) --target "$(RUNTIME_DIR)" -r "$(RUNTIME_REQUIREMENTS)"
	rm -rf "$(RUNTIME_REQUIREMENTS)" "$(RUNTIME_DIR)/bin"
