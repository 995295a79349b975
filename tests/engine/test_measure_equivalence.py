"""The measuring pass's figures equal a row-by-row reference on random tables.

The pass counts per group (key type, tenant) with one aggregate per edge and per lifecycle
reason (handler/db/measure.py); the reference reads every row with the statements' own per-row
expressions (the DELETE's eligibility predicate, the lifecycle's CASE with its correlated
EXISTS) and counts in Python. Several key types and tenants (one without creds, one whose
creds name no account), ages on both sides of the cutoffs, NULL and infinite timestamps,
pre-key ids around the windows, sender keys with and without their group's memory row, the TTL
rule on and off, and a table without a primary key whose memory rows are all doubled. Any
restructuring of the pass must keep it green.
"""

from __future__ import annotations

import importlib
import random
from datetime import datetime
from typing import Any
from unittest import mock

import psycopg
import pytest
from psycopg import sql

from handler import db
from handler.cleanup import run_cleanup
from handler.db.predicates import (
    LAST_TIMESTAMP,
    aged,
    eligible_predicate,
    expired,
    in_range,
    key_type_text,
    lifecycle_branches,
    lifecycle_case,
    policy_params,
    timestamp_expr,
)
from handler.errors import CleanupError
from handler.settings import Flags
from tests.support.db import ME, ME_LID, KeyRow, PgSchema, baileys_creds

DRY = Flags(dry_run=True, force=True)
TYPES = ["pre-key", "session", "sender-key", "sender-key-memory", "tctoken", "identity-key"]
# Ages in days: recent, around the bucket edges and the 30-day cutoff, old.
AGES = [0.1, 0.99, 1.01, 6.9, 7.1, 13.9, 14.1, 29.9, 30.1, 45, 400]


def _key_id(rng: random.Random, key_type: str, n: int) -> str:
    if key_type == "pre-key":
        # Around the windows of creds (next 300, first 250; next 80) and a non-numeric id.
        return rng.choice([str(rng.randint(1, 320)), f"{rng.randint(1, 320)}", "x12", "007"])
    if key_type == "session":
        return f"{rng.choice([ME, ME_LID + '_1', '5599' + str(n)])}.{rng.randint(0, 3)}"
    if key_type == "sender-key":
        return f"group{rng.randint(1, 6)}::{rng.choice([ME, '5588' + str(n)])}::0"
    if key_type == "sender-key-memory":
        return f"group{rng.randint(1, 4)}"
    if key_type == "tctoken":
        return rng.choice(["__index", f"t{n}"])
    return f"k{n}"


def _seed(pg: PgSchema, seed: int, *, unique: bool = True) -> None:
    rng = random.Random(seed)
    pg.create_reference_table()
    # "c": no creds; "d": creds that name no account (no `me`), so its sessions are kept.
    pg.add_auth(
        {
            "a": baileys_creds(300, 250),
            "b": baileys_creds(80),
            "d": {"nextPreKeyId": 80, "firstUnuploadedPreKeyId": 80},
        }
    )
    rows: dict[tuple[str, str, str], KeyRow] = {}
    for n in range(600):
        kt = rng.choice(TYPES)
        row = KeyRow(rng.choice("abcd"), kt, _key_id(rng, kt, n), rng.choice(AGES))
        rows[row.ident] = row
    pg.insert_keys(rows.values())
    with pg.connect() as conn:
        # Odd timestamps and expiries on a random share of the rows (the reference table's
        # trigger would set updated_at to now()).
        conn.execute("ALTER TABLE whatsapp_keys DISABLE TRIGGER USER")
        conn.execute("SELECT setseed(%s)", (seed / 100,))
        for value, share in (("NULL", 0.03), ("'infinity'", 0.02), ("'-infinity'", 0.02)):
            conn.execute(
                sql.SQL("UPDATE whatsapp_keys SET updated_at = {} WHERE random() < %s").format(
                    sql.SQL(value)
                ),
                (share,),
            )
        conn.execute(
            "UPDATE whatsapp_keys SET expires_at = now() + make_interval(days => "
            "(random() * 20 - 10)::int) WHERE random() < 0.3"
        )
        if not unique:
            # No primary key, and each memory row twice: still one kept sender key each.
            conn.execute("ALTER TABLE whatsapp_keys DROP CONSTRAINT whatsapp_keys_pkey")
            conn.execute(
                "INSERT INTO whatsapp_keys SELECT * FROM whatsapp_keys "
                "WHERE key_type = 'sender-key-memory'"
            )


def _pass_args(pg: PgSchema, **env: str) -> tuple[Any, list[datetime], Any, bool, Any]:
    """The engine's own measuring pass in a dry run: its arguments and its result."""
    calls: list[tuple[tuple[Any, ...], dict[str, Any], Any]] = []
    real = db.measure

    def spy(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    with mock.patch.object(db, "measure", spy):
        run_cleanup(pg.settings(**env), DRY)
    assert calls, "the dry run made no measuring pass"
    (_conn, target, edges, policy), kwargs, result = calls[-1]
    return target, list(edges), policy, bool(kwargs.get("by_tenant")), result


def _reference(pg: PgSchema, target: Any, policy: Any, distinct: list[datetime]) -> dict[str, Any]:
    """Per key type, the figures counted row by row."""
    branches = lifecycle_branches(target, policy)  # the DELETE's: a correlated EXISTS per key
    codes = iter(range(1, 100))
    reasons = [r for conds in branches.values() for r, _ in conds]
    by_type = lifecycle_case(
        target,
        branches,
        lambda conds: sql.SQL("CASE {} ELSE 0 END").format(
            sql.SQL(" ").join(
                sql.SQL("WHEN {} THEN {}").format(c, sql.Literal(next(codes))) for _, c in conds
            )
        ),
        sql.SQL("0"),
    )
    ts = timestamp_expr(target)
    query = sql.SQL(
        "SELECT {kt} AS kt, {ok} AS ok, CASE WHEN {ok} THEN {ts} END AS ts, "
        "{ts} IS NOT NULL AS has_ts, ARRAY[{newer}] AS newer, "
        "CASE WHEN ({aged} OR {expired}) THEN {by_type} ELSE 0 END AS code, "
        "{eligible} AS eligible FROM {table}"
    ).format(
        kt=key_type_text(target),
        ok=in_range(ts),
        ts=ts,
        newer=sql.SQL(", ").join(
            sql.SQL("coalesce({ts} >= {e} AND {ts} < {last}, false)").format(
                ts=ts, e=sql.Literal(e), last=LAST_TIMESTAMP
            )
            for e in distinct
        ),
        aged=aged(target, policy),
        expired=expired(target, policy),
        by_type=by_type,
        eligible=eligible_predicate(target, policy),
        table=target.ident,
    )
    out: dict[str, Any] = {}
    with pg.connect() as conn:
        conn.execute("SET TimeZone = 'UTC'")
        for kt, ok, t, has_ts, newer, code, eligible in conn.execute(query, policy_params(policy)):
            f = out.setdefault(
                kt,
                {
                    "keys": 0,
                    "with_timestamp": 0,
                    "out_of_range": 0,
                    "oldest": None,
                    "newest": None,
                    "newer_than": dict.fromkeys(distinct, 0),
                    "eligible": 0,
                    "kept": dict.fromkeys(reasons, 0),
                },
            )
            f["keys"] += 1
            f["with_timestamp"] += int(bool(ok))
            f["out_of_range"] += int(bool(has_ts) and not ok)
            if ok:
                f["oldest"] = t if f["oldest"] is None else min(f["oldest"], t)
                f["newest"] = t if f["newest"] is None else max(f["newest"], t)
            for e, is_newer in zip(distinct, newer, strict=True):
                f["newer_than"][e] += int(is_newer)
            f["eligible"] += int(bool(eligible))
            if code and kt not in policy.protected:
                f["kept"][reasons[code - 1]] += 1
    return out


@pytest.mark.parametrize(
    ("seed", "unique"), [(1, True), (2, True), (3, False)], ids=["1", "2", "3-no-pkey"]
)
@pytest.mark.parametrize("ttl", [False, True], ids=["default", "ttl"])
@pytest.mark.parametrize("tenants", [True, False], ids=["by-tenant", "by-type"])
def test_measuring_pass_equals_a_row_by_row_count(
    pg: PgSchema, seed: int, unique: bool, ttl: bool, tenants: bool
) -> None:
    """by-type: without the top-tenant figures the pass groups by key type alone, so one group
    holds pre-keys kept for different reasons (tenant c has no creds): the packed kept counts
    (KEPT_BITS in handler/db/measure.py) must come apart exactly."""
    _seed(pg, seed, unique=unique)
    env = {"CLEANUP_EXPIRES_COLUMN": "expires_at"} if ttl else {}
    if not tenants:
        env["CLEANUP_TOP_TENANTS"] = "0"
    target, _edges, policy, by_tenant, measured = _pass_args(pg, **env)
    assert by_tenant is tenants
    assert policy.lifecycle is not None
    assert lifecycle_branches(target, policy)
    types = {c.key_type: c for c in measured.types}
    distinct = sorted(next(iter(types.values())).newer_than)
    reference = _reference(pg, target, policy, distinct)
    assert set(types) == set(reference)
    for key_type, ref in reference.items():
        got = types[key_type]
        figures = {
            "keys": got.keys,
            "with_timestamp": got.with_timestamp,
            "out_of_range": got.out_of_range,
            "oldest": got.oldest,
            "newest": got.newest,
            "newer_than": got.newer_than,
            "eligible": got.eligible,
            "kept": got.kept,
        }
        assert figures == ref, key_type
    # The random tables reach the interesting cases.
    assert sum(c.kept.get("own_sender_key", 0) for c in measured.types) > 0
    assert sum(c.kept.get("prekey_window", 0) for c in measured.types) > 0
    assert sum(c.kept.get("prekey_no_creds", 0) for c in measured.types) > 0
    assert sum(c.kept.get("own_unknown", 0) for c in measured.types) > 0
    assert sum(c.out_of_range for c in measured.types) > 0
    assert sum(c.eligible for c in measured.types) > 0


def test_a_group_too_large_for_the_packed_kept_counts_is_refused(
    pg: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kept keys of a group are packed into one sum, KEPT_BITS per reason. With 2 bits a
    field holds 3 keys: 3 kept pre-keys of one tenant come out exact, 4 would spill into the
    next reason's field, so the run refuses and deletes nothing. Key types with one reason
    (sessions here) have one field, exact at any size."""
    measure_module = importlib.import_module("handler.db.measure")
    monkeypatch.setattr(measure_module, "KEPT_BITS", 2)
    monkeypatch.setattr(measure_module, "MAX_GROUP_KEYS", 3)
    pg.create_reference_table()
    # Tenant "c" has no creds: its old pre-keys are kept (prekey_no_creds), its old sessions go.
    rows = [KeyRow("c", "pre-key", str(n), 45) for n in range(1, 4)]
    rows += [KeyRow("c", "session", f"5599{n}.0", 45) for n in range(5)]
    pg.insert_keys(rows)
    report = run_cleanup(pg.settings(), DRY)
    assert report.status == "completed", report.reason
    assert [(k.key_type, k.keys) for k in report.kept] == [("pre-key", 3)]
    assert report.eligible == 5
    pg.insert_keys([KeyRow("c", "pre-key", "4", 45)])
    with pytest.raises(CleanupError, match="more than 3 keys of one type for one tenant"):
        run_cleanup(pg.settings(), Flags(dry_run=False, force=True))
    with pg.connect() as conn:
        left = conn.execute("SELECT count(*) FROM whatsapp_keys").fetchone()
    assert left == (9,)


def test_the_planner_setting_of_the_pass_ends_with_it(pg: PgSchema) -> None:
    """The pass lets the planner read its few index ranges of memory rows in parallel
    (min_parallel_index_scan_size 0) for its own statement only: the engine's connection is
    back to the server's setting, outside any transaction, once the pass has counted."""
    _seed(pg, 1)
    target, edges, policy, by_tenant, expected = _pass_args(pg)
    with db.connect(pg.dsn, connect_timeout_s=10) as conn:

        def setting() -> object:
            row = conn.execute("SHOW min_parallel_index_scan_size").fetchone()
            return row[0] if row else None

        before = setting()
        assert before != "0"
        measured = db.measure(conn, target, edges, policy, by_tenant=by_tenant)
        assert setting() == before
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert measured == expected
