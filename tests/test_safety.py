"""Reliability and safety of the engine: faults, concurrent runs, injection, dangerous targets,
least privilege. Notification-side faults are in test_faults.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from handler.cleanup import CleanupError, run_cleanup
from handler.deleteloop import Progress
from handler.settings import ConfigError, Flags, Settings
from tests.conftest import KeyRow, PgSchema

LIVE = Flags(dry_run=False)


def rows(n: int = 400) -> list[KeyRow]:
    """Half of them past a 30-day retention, spread over the heap."""
    return [KeyRow("c", "session", f"k{i}", 40 if i % 2 else 5) for i in range(n)]


@pytest.fixture
def table(pg: PgSchema) -> list[KeyRow]:
    pg.create_reference_table()
    keys = rows()
    pg.insert_keys(keys)
    return keys


def survivors(keys: list[KeyRow]) -> set[tuple[str, str, str]]:
    return {k.ident for k in keys if k.age < 30}


def slow_deletes(pg: PgSchema, seconds: float) -> None:
    """Make every DELETE statement on the table take `seconds` (a statement-level trigger)."""
    with pg.connect() as conn:
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep({}); RETURN NULL; END $$"
            ).format(sql.Literal(seconds))
        )
        conn.execute(
            "CREATE TRIGGER slow_delete BEFORE DELETE ON whatsapp_keys "
            "FOR EACH STATEMENT EXECUTE FUNCTION slow_delete()"
        )


# --- The connection is killed mid-run ----------------------------------------------------------


def test_connection_killed_between_batches_keeps_committed_batches(
    pg: PgSchema, table: list[KeyRow]
) -> None:
    settings = pg.settings(CLEANUP_BATCH_SIZE="20", CLEANUP_GUARD_MIN_KEYS="100000")
    committed: list[int] = []

    def kill_after_second_batch(p: Progress) -> None:
        committed.append(p.deleted)
        if p.batches == 2:
            with pg.connect() as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pg.cleanup_backend(),))

    with pytest.raises(CleanupError, match="database error"):
        run_cleanup(settings, LIVE, progress=kill_after_second_batch)
    assert pg.count() == len(table) - committed[-1]
    assert committed[-1] > 0

    again = run_cleanup(settings, LIVE)
    assert again.status == "completed"
    assert pg.key_set() == survivors(table)


def test_connection_killed_inside_a_batch_rolls_the_batch_back(
    pg: PgSchema, table: list[KeyRow]
) -> None:
    settings = pg.settings(CLEANUP_BATCH_SIZE="50", CLEANUP_GUARD_MIN_KEYS="100000")
    slow_deletes(pg, 0.5)
    committed: list[int] = []
    killed = threading.Event()

    def kill_during_next_batch(p: Progress) -> None:
        committed.append(p.deleted)
        if p.batches == 1:

            def killer() -> None:
                time.sleep(0.25)  # the next DELETE is sleeping in its trigger by now
                with pg.connect() as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", (pg.cleanup_backend(),))
                killed.set()

            threading.Thread(target=killer, daemon=True).start()

    with pytest.raises(CleanupError):
        run_cleanup(settings, LIVE, progress=kill_during_next_batch)
    assert killed.wait(5)
    # Exactly the first batch is gone; the interrupted one was rolled back whole.
    assert committed == [committed[0]]
    assert pg.count() == len(table) - committed[0]

    with pg.connect() as conn:
        conn.execute("DROP TRIGGER slow_delete ON whatsapp_keys")
    run_cleanup(settings, LIVE)
    assert pg.key_set() == survivors(table)


# --- Postgres unavailable at the start ------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:pw-canary-1@127.0.0.1:1/postgres",  # connection refused
        "postgresql://postgres:pw-canary-1@no-such-host.invalid:5432/postgres",  # unknown host
        "postgresql://no_such_role_x:pw-canary-1@127.0.0.1:5432/postgres",  # auth fails
    ],
)
def test_unavailable_database_fails_fast_and_clearly(url: str) -> None:
    settings = Settings.from_env({"DATABASE_URL": url, "CLEANUP_CONNECT_TIMEOUT_S": "3"})
    started = time.monotonic()
    with pytest.raises(CleanupError, match="could not connect") as info:
        run_cleanup(settings, LIVE)
    assert time.monotonic() - started < 15  # bounded by the connect timeout, never a hang
    assert "pw-canary-1" not in str(info.value)
    assert info.value.__cause__ is None  # no driver exception (with its DSN) chained


# --- Two runs at once -----------------------------------------------------------------------


def test_two_processes_at_once_exactly_one_deletes(pg: PgSchema, table: list[KeyRow]) -> None:
    slow_deletes(pg, 0.3)  # each batch >= 0.3 s, so the first run is still going
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEANUP_", "DATABASE_"))}
    env |= pg.env(CLEANUP_BATCH_SIZE="40", CLEANUP_GUARD_MIN_KEYS="100000")
    cmd = [sys.executable, "-m", "handler.cli", "--execute", "--json"]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    statuses = sorted(r["status"] for r in reports)
    assert statuses == ["completed", "skipped"]
    assert sum(r["deleted"] for r in reports) == len(table) - len(survivors(table))
    assert pg.key_set() == survivors(table)


# --- Settings that try to inject SQL, and dangerous targets --------------------------------


def canary_rows(pg: PgSchema) -> object:
    """The canary table's row count, or None once it has been dropped."""
    with pg.connect() as conn:
        if conn.execute("SELECT to_regclass('canary')").fetchone() == (None,):
            return None
        return conn.execute("SELECT count(*) FROM canary").fetchone()


@pytest.fixture
def canary(pg: PgSchema, table: list[KeyRow]) -> Iterator[PgSchema]:
    with pg.connect() as conn:
        conn.execute("CREATE TABLE canary (x int)")
        conn.execute("INSERT INTO canary VALUES (1)")
    yield pg
    assert canary_rows(pg) == (1,)  # the tests assert it themselves too; this is a backstop


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CLEANUP_TABLE", 'whatsapp_keys"; DROP TABLE canary; --'),
        ("CLEANUP_TABLE", "whatsapp_keys; DROP TABLE canary"),
        ("CLEANUP_TABLE", "whatsapp keys"),
        ("CLEANUP_TABLE", "clés"),
        ("CLEANUP_TABLE", "a.b.c"),
        ("CLEANUP_TABLE", "pg_catalog.pg_class"),
        ("CLEANUP_TABLE", "information_schema.tables"),
        ("CLEANUP_TABLE", "PG_TOAST.x"),
        ("CLEANUP_TIMESTAMP_COLUMN", "updated_at < now() OR true --"),
        ("CLEANUP_TIMESTAMP_COLUMN", "updated_at'"),
        ("CLEANUP_KEY_TYPE_COLUMN", "key_type); DROP TABLE canary; --"),
        ("CLEANUP_HISTORY_TABLE", "runs; DROP TABLE canary"),
    ],
)
def test_hostile_names_are_rejected_before_any_sql(canary: PgSchema, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name) as info:
        canary.settings(**{name: value})
    assert value not in str(info.value)  # the value is never echoed


def test_hostile_key_types_are_parameters_not_sql(canary: PgSchema, table: list[KeyRow]) -> None:
    hostile = "x'); DROP TABLE canary; --"
    settings = canary.settings(
        CLEANUP_PROTECTED_KEY_TYPES=hostile,
        CLEANUP_TYPE_RETENTION_DAYS=f"{hostile.replace(',', '')}2=40",
        CLEANUP_GUARD_MIN_KEYS="100000",
    )
    report = run_cleanup(settings, LIVE)
    assert report.status == "completed"
    assert canary_rows(canary) == (1,)
    # The hostile strings were compared as values: they matched no key, so the run deleted
    # exactly the keys past the default retention, as without them.
    assert canary.key_set() == survivors(table)
    assert report.deleted == len(table) - len(survivors(table))


def test_system_catalog_table_is_refused_even_unqualified(canary: PgSchema) -> None:
    # pg_class lives in pg_catalog, which is always on the search path implicitly: it is
    # refused as the system table it is, not reported as missing.
    with pytest.raises(ConfigError, match=r"refusing pg_catalog\.pg_class: it is a system table"):
        run_cleanup(canary.settings(CLEANUP_TABLE="pg_class", CLEANUP_KEY_TYPE_COLUMN="none"), LIVE)


def test_table_without_the_timestamp_column_is_refused(canary: PgSchema) -> None:
    with pytest.raises(ConfigError, match="column updated_at does not exist"):
        run_cleanup(canary.settings(CLEANUP_TABLE="canary", CLEANUP_KEY_TYPE_COLUMN="none"), LIVE)


def test_non_timestamp_column_is_refused(canary: PgSchema) -> None:
    with pytest.raises(ConfigError, match="is integer, not a timestamp"):
        run_cleanup(
            canary.settings(
                CLEANUP_TABLE="canary", CLEANUP_TIMESTAMP_COLUMN="x", CLEANUP_KEY_TYPE_COLUMN="none"
            ),
            LIVE,
        )


# --- Least privilege --------------------------------------------------------------------------

# The README's GRANT statements, verbatim but for the names.
GRANTS = """
CREATE ROLE {role} LOGIN;
GRANT USAGE ON SCHEMA {schema} TO {role};
GRANT SELECT, DELETE ON {schema}.whatsapp_keys TO {role};
GRANT SELECT, INSERT ON {schema}.keys_cleanup_runs TO {role};
GRANT USAGE ON SEQUENCE {schema}.keys_cleanup_runs_id_seq TO {role};
"""


@pytest.fixture
def least_privileged(pg: PgSchema, table: list[KeyRow]) -> Iterator[Settings]:
    role = f"{pg.schema}_job"
    # The history table is created once by the owner (`keys-cleanup init-db`).
    subprocess.run(
        [sys.executable, "-m", "handler.cli", "init-db"],
        env={**os.environ, **pg.env()},
        check=True,
        capture_output=True,
    )
    with pg.connect() as conn:
        for statement in GRANTS.format(role=role, schema=pg.schema).strip().splitlines():
            conn.execute(statement)
        assert conn.execute(
            "SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles WHERE rolname = %s",
            (role,),
        ).fetchone() == (False,)
    try:
        yield pg.settings(DATABASE_URL=pg.dsn + f" user={role}", CLEANUP_GUARD_MIN_KEYS="100000")
    finally:
        with pg.connect() as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_least_privileged_role_runs_the_whole_job(
    pg: PgSchema, table: list[KeyRow], least_privileged: Settings
) -> None:
    held = next(k for k in table if k.age >= 30)
    with pg.connect() as app, app.transaction():
        # A row the application holds: the job must skip it without UPDATE privilege.
        app.execute(
            "SELECT 1 FROM whatsapp_keys WHERE company_id = %s AND key_type = %s "
            "AND key_id = %s FOR UPDATE",
            held.ident,
        )
        report = run_cleanup(least_privileged, LIVE, event_id="evt-lp")
    assert report.status == "completed"
    assert report.skipped_pages == 1
    assert held.ident in pg.key_set()
    assert not any("history not recorded" in note for note in report.notes)
    with pg.connect() as conn:
        assert conn.execute("SELECT event_id, status FROM keys_cleanup_runs").fetchall() == [
            ("evt-lp", "completed")
        ]
    run_cleanup(least_privileged, LIVE)
    assert pg.key_set() == survivors(table)


def test_least_privileged_role_cannot_vacuum_and_says_so(
    least_privileged: Settings,
) -> None:
    report = run_cleanup(least_privileged, Flags(dry_run=False, vacuum=True))
    assert report.status == "completed"
    assert not report.vacuumed
    assert any("skipping" in note for note in report.notes)


def test_cleanup_error_has_no_driver_cause(pg: PgSchema, table: list[KeyRow]) -> None:
    """Exceptions leave without the psycopg exception chained: its text may carry the DSN."""
    settings = pg.settings(CLEANUP_BATCH_SIZE="20", CLEANUP_GUARD_MIN_KEYS="100000")

    def kill(_: Progress) -> None:
        with pg.connect() as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pg.cleanup_backend(),))

    with pytest.raises(CleanupError) as info:
        run_cleanup(settings, LIVE, progress=kill)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert isinstance(info.value.__context__, psycopg.Error)  # kept for --debug only


def test_deadlock_with_the_application_skips_the_page_instead_of_failing(
    pg: PgSchema,
) -> None:
    """Our batch holds key A and waits for key B; the application holds B and asks for A."""
    pg.create_reference_table()
    keys = [KeyRow("c", "session", f"k{i}", 40) for i in range(4)]  # all on page 0
    pg.insert_keys(keys)
    a, b = keys[0], keys[3]
    with pg.role(
        "dl",
        "GRANT ALL ON whatsapp_keys TO {role}",
        # Our session looks for deadlocks after 10 ms, before its 100 ms row wait runs out,
        # so it is the one PostgreSQL picks to abort.
        "ALTER ROLE {role} SET deadlock_timeout = '10ms'",
    ) as role:
        outcome = _deadlock_with_the_application(pg, role, a, b)
    (report,) = outcome
    assert not isinstance(report, BaseException), report
    assert report.status == "completed"
    assert report.skipped_pages == 1
    assert {a.ident, b.ident} <= pg.key_set()  # A was refreshed by the app, B was held


def _deadlock_with_the_application(pg: PgSchema, role: str, a: KeyRow, b: KeyRow) -> list[object]:
    settings = pg.settings(
        DATABASE_URL=pg.dsn + f" user={role}", CLEANUP_HISTORY="false", CLEANUP_GUARD_MIN_KEYS="9"
    )
    where = "company_id = %s AND key_type = %s AND key_id = %s"
    app = pg.connect()
    app.execute("BEGIN")
    app.execute(f"SELECT 1 FROM whatsapp_keys WHERE {where} FOR UPDATE", b.ident)
    outcome: list[object] = []

    def job() -> None:
        try:
            outcome.append(run_cleanup(settings, LIVE))
        except Exception as exc:  # the test asserts on it below
            outcome.append(exc)

    runner = threading.Thread(target=job)
    runner.start()
    try:
        with pg.connect() as watch:  # wait until the job's DELETE is blocked on key B
            for _ in range(200):
                waiting = watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = %s "
                    "AND wait_event_type = 'Lock' AND query ILIKE '%%DELETE%%'",
                    (role,),
                ).fetchone()
                if waiting and waiting[0]:
                    break
                time.sleep(0.005)
        # Now the application wants key A, which the job's DELETE holds: a deadlock.
        app.execute(f"UPDATE whatsapp_keys SET value = value WHERE {where}", a.ident)
    finally:
        app.execute("COMMIT")
        app.close()
        runner.join(30)
    return outcome
