"""The job against a real WhatsApp client: what a live run leaves must still decrypt.

tests/realclient/harness.mjs drives Baileys' own Signal code (npm `baileys` 7.0.0-rc14 and its
`libsignal` 6.x) over a PostgreSQL key store in the reference schema. `setup` replays months of
one schema's history for four tenants (rows stamped N days ago by the database clock):

- `acct`: 812 pre-keys uploaded 60 days ago; 20 contacts started sessions on ids 1..20, ten of
  them talked until 10 days ago, ten went quiet 60 days ago; ten new contacts hold bundles with
  ids 21..30 and send their first message only after the cleanup; sessions with the account's
  own phone (PN and LID) 60 days old; a LID group G1 it sent to 40 days ago; a group G2 where a
  contact sent it a sender key 10 days ago; app-state keys, LID mappings and tctokens.
- `repaired`: 1,624 pre-keys from a first registration 90 days ago, then a re-pair 20 days ago
  that uploaded ids 1..812 again: 813..1624 are leftovers nobody can use.
- `busy`: uploads at days -100, -80, -60 as Baileys' socket makes them; new contacts hold
  bundles from the server's current pool.
- `retried`: 812 pre-keys uploaded 60 days ago, 10 used; then 250 retry receipts with keys
  (`messages-recv.ts` `sendRetryRequest`), each taking the next id for one contact without an
  upload, so `firstUnuploadedPreKeyId` moved 250 ids past the pool; new contacts hold bundles
  from the pool (ids 11..15).
- `acct` also has a contact that keeps writing to it (its PN session used 10 days ago) but
  whose device list was written 40 days ago, when the account last sent to it; its LID is
  learnt only at delivery (`migrateSession`); and a contact that reinstalls (a new identity)
  after its identity-key row aged.

Then the job runs once, live and forced, through an entry point with default settings, and
`verify` delivers the messages held back. Every first message, every session used within the
retention, the own devices and both groups must decrypt; the protected types must be intact;
and the rules must have done their work (idle sessions, re-pair leftovers and the pre-keys
below the upload window gone).

Measured (docs/key-lifecycle.md). On the rules before the key lifecycle (commit 41778d9), the
same run through the CLI and the Lambda handler alike: first messages 0 of 20 decrypted
(`Invalid PreKey ID` x20: acct 10, repaired 5, busy 5), sessions used 10 days ago 0 of 10 and
own devices 0 of 2 (`No session record`: the 7-day TTL took them), G2 0 of 1. On these rules:
every category that should decrypt does (49 of 49); the run deleted acct's 10 idle sessions,
busy's 616 pre-keys below its window and repaired's 812 leftovers, and kept 1,771 pre-keys the
server may still hand out.

With the retry, device-list and reinstall cases (session 5): on the rules before them (the
window of ids, `device-list` by age) retried's first messages 0 of 5 (`Invalid PreKey ID`: its
pool's ids 11..62 were below the window) and the LID-migrated session 0 of 1 (`No session
record`); now every category that should decrypt does (44 of 44, through the CLI and the
Lambda handler), the 10 idle sessions failing as the retention means them to.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext
from psycopg.conninfo import conninfo_to_dict

from handler import cli
from handler.app import lambda_handler
from handler.local import LocalContext
from handler.schema import reference_auth_schema, reference_schema
from tests.support.baileys_layouts import window_low
from tests.support.db import PgSchema

pytestmark = pytest.mark.slow


REALCLIENT = Path(__file__).resolve().parents[1] / "realclient"


# The engine's defaults this test is written against: CLEANUP_RETENTION_DAYS, and
# CLEANUP_PREKEY_WINDOW (the newest uploaded pre-key ids kept whatever their age).
RETENTION_DAYS = 30


PREKEY_WINDOW = 1000


# Messages on sessions idle past the retention: the job is expected to delete those sessions,
# so these are reported, never counted as failures.
IDLE_CATEGORY = "acct: session idle 60 days"


# Every category the harness reports and how many deliveries it attempts: a harness that
# quietly stopped sending must not pass.
EXPECTED_ATTEMPTS = {
    "acct: first message, pre-key 60 days old": 10,
    "acct: session used 10 days ago": 10,
    IDLE_CATEGORY: 10,
    "acct: own device, session 60 days old": 2,
    "acct: G1 send by the account (sender key 40 days old)": 1,
    "acct: G1 members decrypt the account's send": 3,
    "acct: G2 message from M (sender key 10 days old)": 1,
    "repaired: first message after the re-pair": 5,
    "busy: first message, pre-key from the current pool": 5,
    "retried: first message, pre-key from the current pool": 5,
    "acct: PN session used 10 days ago, LID learnt now": 1,
    "acct: contact reinstalled after its identity-key aged": 1,
}


# Types that must never age out: compared value by value before and after the run.
PROTECTED_TYPES = ("app-state-sync-key", "app-state-sync-version", "lid-mapping")


# Session ids of contacts 11-20 (harness.mjs: contact i is 55119000000ii@s.whatsapp.net).
IDLE_CONTACT_SESSIONS = {f"55119000000{i:02d}.0" for i in range(11, 21)}


def _packages_installed() -> bool:
    modules = REALCLIENT / "node_modules"
    return all((modules / name / "package.json").is_file() for name in ("baileys", "pg"))


def _node_unavailable() -> str | None:
    """Why the harness cannot run here, or None. Installs its packages when npm is present."""
    if shutil.which("node") is None:
        return "node is not installed"
    if _packages_installed():
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "tests/realclient/node_modules is missing and npm is not installed"
    # One `npm ci` for all pytest-xdist workers; the others wait and find it done.
    with (REALCLIENT / ".npm-ci.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _packages_installed():
            proc = subprocess.run(
                [npm, "ci", "--cache", str(REALCLIENT / ".npm-cache"), "--no-audit", "--no-fund"],
                cwd=REALCLIENT,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if proc.returncode != 0:
                return f"npm ci in tests/realclient failed: {proc.stderr.strip()[-800:]}"
    return None


@pytest.fixture(scope="module")
def realclient() -> Path:
    reason = _node_unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; in CI a skip is a failure")
        pytest.skip(reason)
    return REALCLIENT


def _libpq_env(server_dsn: str) -> dict[str, str]:
    """node-postgres reads the libpq variables; a socket directory as PGHOST works too."""
    params = conninfo_to_dict(server_dsn)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for key, var in (
        ("host", "PGHOST"),
        ("port", "PGPORT"),
        ("user", "PGUSER"),
        ("password", "PGPASSWORD"),
        ("dbname", "PGDATABASE"),
        ("sslmode", "PGSSLMODE"),
    ):
        value = params.get(key)
        if value:
            env[var] = str(value)
    return env


def harness(
    realclient: Path, pg: PgSchema, phase: str, state: Path, *options: str
) -> dict[str, Any]:
    """One phase of harness.mjs on `pg`'s schema (`options`: more of its flags); its JSON."""
    proc = subprocess.run(
        ["node", "harness.mjs", phase, "--schema", pg.schema, "--state", str(state), *options],
        cwd=realclient,
        env=_libpq_env(pg.server_dsn),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"harness {phase} failed:\n{proc.stderr[-3000:]}"
    return cast(dict[str, Any], json.loads(proc.stdout))


Key = tuple[str, str, str]


def snapshot(pg: PgSchema) -> dict[Key, tuple[str, float]]:
    """Every key: its value as text and its age in days by the database clock."""
    with pg.connect() as conn:
        rows = conn.execute(
            "SELECT company_id, key_type, key_id, value::text, "
            "extract(epoch FROM now() - updated_at) / 86400 FROM whatsapp_keys"
        ).fetchall()
    return {(r[0], r[1], r[2]): (r[3], float(r[4])) for r in rows}


def creds_counters(pg: PgSchema) -> dict[str, tuple[int, int]]:
    """nextPreKeyId and firstUnuploadedPreKeyId of each tenant, as the job can read them."""
    with pg.connect() as conn:
        rows = conn.execute(
            "SELECT company_id, (creds->>'nextPreKeyId')::int, "
            "(creds->>'firstUnuploadedPreKeyId')::int FROM whatsapp_auth"
        ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def run_cli(monkeypatch: pytest.MonkeyPatch, pg: PgSchema) -> None:
    pg.use_env(monkeypatch)
    assert cli.main(["--execute", "--force", "--no-progress"]) == cli.EXIT_OK


def run_lambda(monkeypatch: pytest.MonkeyPatch, pg: PgSchema) -> None:
    pg.use_env(monkeypatch)
    result = lambda_handler(
        {"dry_run": False, "force": True}, cast(LambdaContext, LocalContext(timeout_s=900.0))
    )
    assert result["status"] == "completed", result["status"]


ENTRY_POINTS: dict[str, Callable[[pytest.MonkeyPatch, PgSchema], None]] = {
    "cli": run_cli,
    "lambda": run_lambda,
}


def counts_table(categories: dict[str, Any]) -> str:
    lines = [f"{'category':<58} {'tried':>5} {'ok':>4} {'failed':>6}  errors"]
    for name, c in categories.items():
        errors = "; ".join(f"{msg} x{n}" for msg, n in c["errors"].items())
        note = "  (idle past retention: expected)" if name == IDLE_CATEGORY and c["failed"] else ""
        lines.append(
            f"{name:<58} {c['attempted']:>5} {c['decrypted']:>4} {c['failed']:>6}  {errors}{note}"
        )
    return "\n".join(lines)


def deleted_table(before: dict[Key, Any], after: dict[Key, Any]) -> str:
    kept = Counter((k[0], k[1]) for k in after)
    total = Counter((k[0], k[1]) for k in before)
    lines = [f"{'tenant':<9} {'key type':<24} {'before':>6} {'deleted':>7}"]
    for tenant, key_type in sorted(total):
        n = total[(tenant, key_type)]
        lines.append(f"{tenant:<9} {key_type:<24} {n:>6} {n - kept[(tenant, key_type)]:>7}")
    return "\n".join(lines)


def delivery_problems(categories: dict[str, Any], tolerated: set[str]) -> list[str]:
    """Categories attempted other than expected, or with failures not `tolerated`."""
    problems = []
    for name, attempts in EXPECTED_ATTEMPTS.items():
        c = categories.get(name, {"attempted": 0})
        if c["attempted"] != attempts:
            problems.append(f"harness: {name!r} attempted {c['attempted']}, not {attempts}")
        elif name not in tolerated and c["failed"]:
            problems.append(f"{name}: {c['failed']} of {c['attempted']} failed {c['errors']}")
    return problems


@pytest.fixture
def history(realclient: Path, pg: PgSchema, tmp_path: Path) -> Path:
    """The reference tables in a fresh schema, filled by the harness's `setup`."""
    with pg.connect() as conn:
        conn.execute(reference_schema())
        conn.execute(reference_auth_schema())
    state = tmp_path / "realclient-state.json"
    summary = harness(realclient, pg, "setup", state)
    sys.stdout.write(f"\nsetup: {json.dumps(summary)}\n")
    return state


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
@pytest.mark.usefixtures("isolated_sentry")
def test_a_live_run_leaves_every_message_that_should_decrypt_decryptable(
    entry_point: str,
    realclient: Path,
    pg: PgSchema,
    history: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = snapshot(pg)
    counters = creds_counters(pg)
    ENTRY_POINTS[entry_point](monkeypatch, pg)
    after = snapshot(pg)
    result = harness(realclient, pg, "verify", history)
    categories: dict[str, Any] = result["categories"]

    report = (
        f"\n== real client after a live run ({entry_point})\n{counts_table(categories)}\n\n"
        f"== rows deleted by the run\n{deleted_table(before, after)}\n"
    )
    sys.stdout.write(report)

    problems = delivery_problems(categories, tolerated={IDLE_CATEGORY})

    for key in sorted(k for k in before if k[1] in PROTECTED_TYPES):
        if key not in after:
            problems.append(f"protected key deleted: {key}")
        elif after[key][0] != before[key][0]:
            problems.append(f"protected key changed: {key}")

    idle_left = sorted(
        k[2]
        for k in after
        if k[0] == "acct" and k[1] == "session" and k[2] in IDLE_CONTACT_SESSIONS
    )
    if idle_left:
        problems.append(f"sessions idle 60 days still there: {idle_left}")

    def old_pre_keys(tenant: str, keys: dict[Key, tuple[str, float]]) -> list[int]:
        return sorted(
            int(k[2])
            for k, (_, age) in keys.items()
            if k[0] == tenant and k[1] == "pre-key" and age > RETENTION_DAYS
        )

    next_id = counters["repaired"][0]
    leftovers = [i for i in old_pre_keys("repaired", after) if i >= next_id]
    if leftovers:
        problems.append(
            f"repaired: {len(leftovers)} pre-keys from the old registration left "
            f"(ids {leftovers[0]}..{leftovers[-1]}, >= nextPreKeyId {next_id})"
        )

    window_start = window_low(
        (int(k[2]) for k in before if k[:2] == ("busy", "pre-key")), counters["busy"][1]
    )
    below = [i for i in old_pre_keys("busy", after) if i < window_start]
    if below:
        problems.append(
            f"busy: {len(below)} pre-keys below the window (id < {window_start}) and older "
            f"than {RETENTION_DAYS} days left"
        )
    window_lost = [
        i
        for i in old_pre_keys("busy", before)
        if i >= window_start and ("busy", "pre-key", str(i)) not in after
    ]
    if window_lost:
        problems.append(f"busy: {len(window_lost)} pre-keys in the upload window deleted")

    if problems:
        pytest.fail(report + "\n".join(problems), pytrace=False)


def test_without_a_run_the_harness_decrypts_every_message(
    realclient: Path, pg: PgSchema, history: Path
) -> None:
    """The control: with no cleanup in between, every held message decrypts, the idle ones
    too. A failure here is the harness's (or Baileys'), never the engine's."""
    categories: dict[str, Any] = harness(realclient, pg, "verify", history)["categories"]
    sys.stdout.write(f"\n== real client without a run\n{counts_table(categories)}\n")
    problems = delivery_problems(categories, tolerated=set())
    if problems:
        pytest.fail(counts_table(categories) + "\n" + "\n".join(problems), pytrace=False)
