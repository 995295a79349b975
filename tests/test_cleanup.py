"""The engine against a real PostgreSQL: which rows go, which stay, and what is reported."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from handler import db
from handler.cleanup import CleanupError, run_cleanup
from handler.deleteloop import Progress
from handler.report import BUCKET_LABELS, render_text
from handler.settings import DEFAULT_PROTECTED_KEY_TYPES, ConfigError, Flags
from tests.conftest import KeyRow, PgSchema, baileys_creds

LIVE = Flags(dry_run=False)
TYPES = ("pre-key", "session", "sender-key", "app-state-sync-key", "lid-mapping", "tctoken")


def mixed_rows(n: int = 300) -> list[KeyRow]:
    """Ages 0..59 days across types; with 30-day retention about half are past the cutoff.

    Pre-key ids are numbers far below the creds' window (AGE_CREDS), so the age rule decides.
    """
    return [
        KeyRow(
            f"c{i % 3}",
            TYPES[i % len(TYPES)],
            str(i) if TYPES[i % len(TYPES)] == "pre-key" else f"k{i}",
            age=(i * 7) % 60 + 0.5,
        )
        for i in range(n)
    ]


# Every tenant's creds: uploaded pre-keys up to 99,999, so the window is 99,000..99,999.
AGE_CREDS = {f"c{i}": baileys_creds(100_000) for i in range(3)}


def expected_survivors(
    rows: list[KeyRow],
    retention: float,
    protected: tuple[str, ...] = DEFAULT_PROTECTED_KEY_TYPES,
    overrides: dict[str, int] | None = None,
) -> set[tuple[str, str, str]]:
    overrides = overrides or {}
    return {
        r.ident
        for r in rows
        if r.key_type in protected or r.age < overrides.get(r.key_type, retention)
    }


@pytest.fixture
def table(pg: PgSchema) -> list[KeyRow]:
    pg.create_reference_table()
    pg.add_auth(AGE_CREDS)
    rows = mixed_rows()
    pg.insert_keys(rows)
    return rows


def test_live_run_deletes_exactly_old_unprotected_keys(pg: PgSchema, table: list[KeyRow]) -> None:
    report = run_cleanup(pg.settings(CLEANUP_GUARD_MIN_KEYS="100000"), LIVE)

    assert pg.key_set() == expected_survivors(table, 30)
    assert report.status == "completed"
    assert report.deleted == len(table) - len(expected_survivors(table, 30))
    assert report.deleted == report.eligible
    assert report.after is not None
    assert report.after.keys == len(expected_survivors(table, 30))
    assert sum(t.deleted for t in report.by_type.values()) == report.deleted
    for name in DEFAULT_PROTECTED_KEY_TYPES:
        if name in report.by_type:
            assert report.by_type[name].deleted == 0
            assert report.by_type[name].retention_days is None


def test_protected_counts_old_keys_of_protected_types(pg: PgSchema, table: list[KeyRow]) -> None:
    report = run_cleanup(pg.settings(), Flags())
    old_protected = [r for r in table if r.key_type in DEFAULT_PROTECTED_KEY_TYPES and r.age >= 30]
    assert report.protected == len(old_protected)


def test_unprotecting_every_builtin_type_deletes_everything_older(
    pg: PgSchema, table: list[KeyRow]
) -> None:
    settings = pg.settings(
        CLEANUP_UNPROTECT_KEY_TYPES=",".join(DEFAULT_PROTECTED_KEY_TYPES),
        CLEANUP_GUARD_MIN_KEYS="100000",
    )
    run_cleanup(settings, LIVE)
    assert pg.key_set() == expected_survivors(table, 30, protected=())


def test_per_type_retention_override(pg: PgSchema, table: list[KeyRow]) -> None:
    settings = pg.settings(
        CLEANUP_TYPE_RETENTION_DAYS="pre-key=45,session=10", CLEANUP_GUARD_MIN_KEYS="100000"
    )
    report = run_cleanup(settings, LIVE)
    overrides = {"pre-key": 45, "session": 10}
    assert pg.key_set() == expected_survivors(table, 30, overrides=overrides)
    assert report.by_type["pre-key"].retention_days == 45
    assert report.retention_overrides == overrides


def test_dry_run_deletes_nothing_and_counts_what_live_deletes(
    pg: PgSchema, table: list[KeyRow]
) -> None:
    settings = pg.settings(CLEANUP_GUARD_MIN_KEYS="100000")
    dry = run_cleanup(settings, Flags())
    assert pg.count() == len(table)
    assert dry.deleted == 0
    assert dry.dry_run

    live = run_cleanup(settings, LIVE)
    assert live.deleted == dry.eligible
    assert {k: v.deleted for k, v in live.by_type.items()} == {
        k: v.eligible for k, v in dry.by_type.items()
    }


def test_measurement_buckets_extremes_and_sizes(pg: PgSchema) -> None:
    pg.create_reference_table()
    ages = {"<1d": [0.2, 0.9], "1-7d": [1.5], "7-14d": [8, 13.5], "14-30d": [20], ">30d": [31, 90]}
    rows = [
        KeyRow("c", "session", f"{label}-{i}", age)
        for label, values in ages.items()
        for i, age in enumerate(values)
    ]
    pg.insert_keys(rows)
    report = run_cleanup(pg.settings(), Flags())
    assert list(report.age_distribution) == list(BUCKET_LABELS)
    assert report.age_distribution == {label: len(v) for label, v in ages.items()}
    assert report.before is not None
    assert report.before.keys == len(rows)
    assert report.before.table_bytes > 0
    assert report.before.index_bytes > 0
    assert report.before.total_bytes >= report.before.table_bytes + report.before.index_bytes
    assert report.oldest is not None
    assert report.newest is not None
    assert report.started_at is not None
    assert round((report.started_at - report.oldest).total_seconds() / 86400) == 90
    assert (report.started_at - report.newest).total_seconds() / 86400 == pytest.approx(0.2, 0.01)
    assert report.cutoff is not None
    assert round((report.started_at - report.cutoff).total_seconds() / 86400) == 30


def test_null_timestamps_are_never_deleted(pg: PgSchema) -> None:
    pg.create_reference_table()
    pg.insert_keys([KeyRow("c", "session", "old", 99)])
    with pg.connect() as conn:
        conn.execute(
            "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at) "
            "VALUES ('c', 'session', 'no-ts', '{}', NULL)"
        )
    report = run_cleanup(pg.settings(), LIVE)
    assert pg.key_set() == {("c", "session", "no-ts")}
    assert report.no_timestamp == 1


def test_verbose_lists_keys_but_never_values(pg: PgSchema) -> None:
    canary = "CANARY-VALUE-7f3a"
    pg.create_reference_table()
    pg.insert_keys(
        [KeyRow("c", "session", f"k{i}", 40 + i, value={"secret": canary}) for i in range(5)]
        + [KeyRow("c", "session", "fresh", 1, value={"secret": canary})]
    )
    settings = pg.settings(CLEANUP_VERBOSE_LIMIT="3")
    for flags in (Flags(verbose=True), Flags(verbose=True, dry_run=False)):
        report = run_cleanup(settings, flags)
        assert len(report.keys) == 3
        assert report.keys_omitted == 2
        assert {e.key_type for e in report.keys} == {"session"}
        assert all(e.age_days is not None and e.age_days >= 40 for e in report.keys)
        assert list(report.keys[0].key) == ["company_id", "key_type", "key_id"]
        assert canary not in report.model_dump_json()
        assert canary not in render_text(report)
    assert pg.key_set() == {("c", "session", "fresh")}


def test_dry_run_listing_is_oldest_first(pg: PgSchema) -> None:
    pg.create_reference_table()
    pg.insert_keys([KeyRow("c", "session", f"k{age}", age) for age in (35, 90, 50)])
    report = run_cleanup(pg.settings(), Flags(verbose=True))
    assert [e.key["key_id"] for e in report.keys] == ["k90", "k50", "k35"]


def test_second_run_is_skipped_while_another_holds_the_lock(
    pg: PgSchema, table: list[KeyRow]
) -> None:
    with pg.connect() as holder:
        oid = holder.execute("SELECT 'whatsapp_keys'::regclass::oid").fetchone()
        assert oid is not None
        holder.execute("SELECT pg_advisory_lock(%s)", (db.LOCK_CLASS + oid[0],))
        report = run_cleanup(pg.settings(), LIVE)
        assert report.status == "skipped"
        assert report.reason is not None
        assert "lock" in report.reason
        assert pg.count() == len(table)
    # Lock released: the next run works.
    assert run_cleanup(pg.settings(CLEANUP_GUARD_MIN_KEYS="100000"), LIVE).status == "completed"


def test_safety_guard_aborts_then_force_deletes(pg: PgSchema) -> None:
    pg.create_reference_table()
    rows = [KeyRow("c", "session", f"k{i}", 40 if i % 10 else 1) for i in range(200)]
    pg.insert_keys(rows)
    settings = pg.settings(CLEANUP_GUARD_MIN_KEYS="100")

    aborted = run_cleanup(settings, LIVE)
    assert aborted.status == "aborted"
    assert aborted.deleted == 0
    assert aborted.reason is not None
    assert "--force" in aborted.reason
    assert "90%" in aborted.reason
    assert pg.count() == 200

    forced = run_cleanup(settings, Flags(dry_run=False, force=True))
    assert forced.status == "completed"
    assert forced.deleted == 180
    assert pg.count() == 20


def test_safety_guard_ignores_small_tables(pg: PgSchema) -> None:
    pg.create_reference_table()
    pg.insert_keys([KeyRow("c", "session", f"k{i}", 40) for i in range(50)])
    report = run_cleanup(pg.settings(CLEANUP_GUARD_MIN_KEYS="51"), LIVE)
    assert report.status == "completed"
    assert pg.count() == 0


def test_deadline_gives_partial_and_next_run_finishes(pg: PgSchema, table: list[KeyRow]) -> None:
    settings = pg.settings(CLEANUP_BATCH_SIZE="5", CLEANUP_GUARD_MIN_KEYS="100000")
    deadline = time.monotonic() + 0.3

    def slow(_: Progress) -> None:
        time.sleep(0.35)  # the first batch ends after the deadline

    partial = run_cleanup(settings, LIVE, deadline=deadline, progress=slow)
    assert partial.status == "partial"
    assert partial.batches == 1
    assert 0 < partial.deleted < partial.eligible
    assert pg.count() == len(table) - partial.deleted

    rest = run_cleanup(settings, LIVE)
    assert rest.status == "completed"
    assert partial.deleted + rest.deleted == partial.eligible
    assert pg.key_set() == expected_survivors(table, 30)


def test_key_refreshed_during_the_run_survives(pg: PgSchema, table: list[KeyRow]) -> None:
    with pg.connect() as conn:
        last = conn.execute(
            "SELECT company_id, key_type, key_id FROM whatsapp_keys "
            "WHERE updated_at < now() - interval '30 days' "
            "AND key_type NOT IN ('app-state-sync-key', 'lid-mapping') "
            "ORDER BY ctid DESC LIMIT 1"
        ).fetchone()
    assert last is not None
    settings = pg.settings(CLEANUP_BATCH_SIZE="5", CLEANUP_GUARD_MIN_KEYS="100000")
    refreshed = []

    def refresh(p: Progress) -> None:
        if not refreshed:  # after the first batch, the app touches a key in a later page
            with pg.connect() as app:
                app.execute(
                    "UPDATE whatsapp_keys SET value = value "
                    "WHERE company_id = %s AND key_type = %s AND key_id = %s",
                    last,
                )
            refreshed.append(p)

    report = run_cleanup(settings, LIVE, progress=refresh)
    assert refreshed
    assert report.deleted == report.eligible - 1
    assert pg.key_set() == expected_survivors(table, 30) | {tuple(last)}
    # Without counting per type, the split is unknown once a key left the eligible set; the
    # report says so rather than guess.
    assert {t.deleted for t in report.by_type.values()} == {None}
    assert any("per-type split of the deleted keys not counted" in note for note in report.notes)


def test_verbose_run_counts_each_type_exactly_even_when_a_key_is_refreshed(
    pg: PgSchema, table: list[KeyRow]
) -> None:
    settings = pg.settings(CLEANUP_BATCH_SIZE="5", CLEANUP_GUARD_MIN_KEYS="100000")
    victim = next(r for r in reversed(table) if r.age >= 30 and r.key_type == "pre-key")
    refreshed = []

    def refresh(_: Progress) -> None:
        if not refreshed:
            with pg.connect() as app:
                app.execute(
                    "UPDATE whatsapp_keys SET value = value "
                    "WHERE company_id = %s AND key_type = %s AND key_id = %s",
                    victim.ident,
                )
            refreshed.append(True)

    report = run_cleanup(settings, Flags(dry_run=False, verbose=True), progress=refresh)
    assert report.deleted == report.eligible - 1
    assert report.by_type["pre-key"].deleted == report.by_type["pre-key"].eligible - 1
    assert report.by_type["session"].deleted == report.by_type["session"].eligible
    assert sum(t.deleted or 0 for t in report.by_type.values()) == report.deleted


def test_row_locked_by_another_transaction_is_skipped(pg: PgSchema, table: list[KeyRow]) -> None:
    old = next(r for r in table if r.age >= 30 and r.key_type == "session")
    settings = pg.settings(CLEANUP_GUARD_MIN_KEYS="100000")
    with pg.connect() as app, app.transaction():
        page = app.execute(
            "SELECT (ctid::text::point)[0]::int FROM whatsapp_keys WHERE company_id = %s "
            "AND key_type = %s AND key_id = %s FOR UPDATE",
            old.ident,
        ).fetchone()
        assert page is not None
        page_mates = {
            (r[0], r[1], r[2])
            for r in app.execute(
                "SELECT company_id, key_type, key_id FROM whatsapp_keys "
                "WHERE (ctid::text::point)[0]::int = %s",
                page,
            )
        }
        report = run_cleanup(settings, LIVE)
        assert report.status == "completed"
        assert report.skipped_pages == 1
        assert report.batch_retries >= 1
        assert any("left for the next run" in note for note in report.notes)
        # The held row and the eligible keys on its page wait; everything else went.
        assert old.ident in pg.key_set()
        assert pg.key_set() == expected_survivors(table, 30) | (
            page_mates & {r.ident for r in table}
        )
        assert report.deleted == report.eligible - len(page_mates - expected_survivors(table, 30))
    # Once the application lets go, the next run finishes the job.
    run_cleanup(settings, LIVE)
    assert pg.key_set() == expected_survivors(table, 30)


def test_table_locked_exclusively_ends_partial_without_hanging(
    pg: PgSchema, table: list[KeyRow]
) -> None:
    settings = pg.settings(
        CLEANUP_BATCH_SIZE="5",
        CLEANUP_GUARD_MIN_KEYS="100000",
        CLEANUP_LOCK_TIMEOUT_MS="200",
        CLEANUP_BATCH_ATTEMPTS="2",
    )
    locker = pg.connect()
    release = threading.Event()

    def lock_table(_: Progress) -> None:
        if not release.is_set():
            locker.execute("BEGIN")
            locker.execute("LOCK TABLE whatsapp_keys IN ACCESS EXCLUSIVE MODE")
            release.set()

    try:
        started = time.monotonic()
        report = run_cleanup(settings, LIVE, progress=lock_table)
        elapsed = time.monotonic() - started
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert report.status == "partial"
    assert report.reason is not None
    assert "lock timeout" in report.reason
    assert report.after is None  # the after-measurement could not take its lock either
    assert report.batches == 1
    assert elapsed < 30  # bounded: a handful of 200 ms lock waits, never a hang
    assert pg.count() == len(table) - report.deleted


def test_unindexed_table_without_primary_key(pg: PgSchema) -> None:
    with pg.connect() as conn:
        conn.execute(
            "CREATE TABLE bare (key_type text, key_id text, value jsonb, updated_at timestamptz)"
        )
        conn.execute(
            "INSERT INTO bare SELECT 'session', 'k' || g, '{}', now() - g * interval '1 day' "
            "FROM generate_series(1, 60) g"
        )
    report = run_cleanup(pg.settings(CLEANUP_TABLE="bare"), Flags(dry_run=False, verbose=True))
    assert report.deleted == 31  # ages 30..60 days (30 days + a few ms is past the cutoff)
    assert pg.count("bare") == 29
    assert list(report.keys[0].key) == ["ctid"]


def test_custom_table_and_columns(pg: PgSchema) -> None:
    with pg.connect() as conn:
        conn.execute(
            "CREATE TABLE auth_keys (tenant uuid, type varchar(40), id text, data bytea, "
            "last_used timestamp without time zone, PRIMARY KEY (tenant, type, id))"
        )
        conn.execute(
            "INSERT INTO auth_keys SELECT gen_random_uuid(), t, 'k' || g, 'x', "
            "(now() AT TIME ZONE 'UTC') - g * interval '1 day' "
            "FROM generate_series(1, 40) g, unnest(array['session', 'lid-mapping']) t"
        )
    settings = pg.settings(
        CLEANUP_TABLE="auth_keys",
        CLEANUP_TIMESTAMP_COLUMN="last_used",
        CLEANUP_KEY_TYPE_COLUMN="type",
        CLEANUP_KEY_ID_COLUMN="id",
        CLEANUP_RETENTION_DAYS="20",
        CLEANUP_TIMESTAMP_TIMEZONE="UTC",
    )
    report = run_cleanup(settings, LIVE)
    assert report.by_type["session"].deleted == 21
    assert report.by_type["lid-mapping"].deleted == 0
    assert report.by_type["lid-mapping"].keys == 40
    assert pg.count("auth_keys") == 59


def test_key_type_column_without_a_key_id_column_is_refused(pg: PgSchema) -> None:
    """The key lifecycle cannot tell which pre-keys the server holds without the key id."""
    with pg.connect() as conn:
        conn.execute("CREATE TABLE k (tenant text, key_type text, updated_at timestamptz)")
    with pytest.raises(ConfigError, match=r"column key_id does not exist.*CLEANUP_KEY_ID_COLUMN"):
        run_cleanup(pg.settings(CLEANUP_TABLE="k"), LIVE)


def test_table_without_key_type_column_deletes_by_age_only(pg: PgSchema) -> None:
    with pg.connect() as conn:
        conn.execute("CREATE TABLE k (id int PRIMARY KEY, updated_at timestamptz)")
        conn.execute(
            "INSERT INTO k SELECT g, now() - g * interval '1 day' FROM generate_series(1, 50) g"
        )
    report = run_cleanup(
        pg.settings(CLEANUP_TABLE="k", CLEANUP_KEY_TYPE_COLUMN="none"),
        Flags(dry_run=False, force=True),
    )
    assert report.by_type == {}
    assert report.protected_types == []
    assert report.deleted == 21
    assert pg.count("k") == 29


def test_schema_qualified_table(pg: PgSchema) -> None:
    other = f"{pg.schema}_x"
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(other)))
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(other)))
        conn.execute(
            "CREATE TABLE whatsapp_keys (company_id text, key_type text, key_id text, "
            "value jsonb, updated_at timestamptz, PRIMARY KEY (company_id, key_type, key_id))"
        )
        conn.execute(
            "INSERT INTO whatsapp_keys VALUES "
            "('c', 'session', 'old', '{}', now() - interval '40 days'), "
            "('c', 'session', 'new', '{}', now())"
        )
    try:
        report = run_cleanup(pg.settings(CLEANUP_TABLE=f"{other}.whatsapp_keys"), LIVE)
        assert report.table == f"{other}.whatsapp_keys"
        assert report.deleted == 1
    finally:
        with pg.connect() as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(other)))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CLEANUP_TABLE": "no_such_table"}, "table no_such_table does not exist"),
        ({"CLEANUP_TIMESTAMP_COLUMN": "touched_at"}, "column touched_at does not exist"),
        ({"CLEANUP_TIMESTAMP_COLUMN": "key_id"}, "is text, not a timestamp"),
        ({"CLEANUP_KEY_TYPE_COLUMN": "kind"}, "column kind does not exist"),
    ],
)
def test_bad_target_is_a_clear_error_and_deletes_nothing(
    pg: PgSchema, table: list[KeyRow], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        run_cleanup(pg.settings(**env), Flags(dry_run=False, force=True))
    assert pg.count() == len(table)


def test_view_is_refused(pg: PgSchema, table: list[KeyRow]) -> None:
    with pg.connect() as conn:
        conn.execute("CREATE VIEW v AS SELECT * FROM whatsapp_keys")
    with pytest.raises(ConfigError, match="not an ordinary table"):
        run_cleanup(pg.settings(CLEANUP_TABLE="v"), Flags(dry_run=False, force=True))
    assert pg.count() == len(table)


def test_retention_below_minimum_is_refused(pg: PgSchema, table: list[KeyRow]) -> None:
    settings = pg.settings(CLEANUP_MIN_RETENTION_DAYS="7")
    with pytest.raises(ConfigError, match="retention_days: 3 is below CLEANUP_MIN_RETENTION_DAYS"):
        run_cleanup(settings, Flags(dry_run=False, retention_days=3))
    assert pg.count() == len(table)


def test_connection_failure_is_clear_and_hides_the_password(pg: PgSchema) -> None:
    settings = pg.settings(
        DATABASE_URL="postgresql://postgres:hunter2-secret@127.0.0.1:1/none",
        CLEANUP_CONNECT_TIMEOUT_S="2",
    )
    with pytest.raises(CleanupError, match="could not connect") as info:
        run_cleanup(settings, LIVE)
    assert "hunter2-secret" not in str(info.value)


def test_vacuum_flag_runs_vacuum_and_reports_it(pg: PgSchema, table: list[KeyRow]) -> None:
    report = run_cleanup(
        pg.settings(CLEANUP_GUARD_MIN_KEYS="100000"), Flags(dry_run=False, vacuum=True)
    )
    assert report.vacuumed
    assert report.reclaimable_bytes > 0
    with pg.connect() as conn:
        row = conn.execute(
            "SELECT vacuum_count + autovacuum_count FROM pg_stat_user_tables "
            "WHERE relid = 'whatsapp_keys'::regclass"
        ).fetchone()
    assert row is not None
    assert row[0] >= 1


def test_released_is_measured_and_reclaimable_estimated(pg: PgSchema, table: list[KeyRow]) -> None:
    report = run_cleanup(pg.settings(CLEANUP_GUARD_MIN_KEYS="100000"), LIVE)
    assert report.before is not None
    assert report.after is not None
    assert report.released_bytes == report.before.total_bytes - report.after.total_bytes
    # Each deleted row is at least its header plus three short texts and a small JSON value.
    assert report.reclaimable_bytes >= report.deleted * 50


def test_dry_run_estimates_the_bytes_the_live_run_then_makes_reusable(
    pg: PgSchema, table: list[KeyRow]
) -> None:
    settings = pg.settings(CLEANUP_GUARD_MIN_KEYS="100000")
    dry = run_cleanup(settings, Flags())
    live = run_cleanup(settings, LIVE)
    assert live.deleted == dry.eligible > 0
    assert dry.reclaimable_bytes == live.reclaimable_bytes > 0


# Property: over random tables, retention and protected sets, exactly the expected rows survive.
row_strategy = st.tuples(
    st.sampled_from(TYPES), st.floats(min_value=0, max_value=120, allow_nan=False)
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.lists(row_strategy, max_size=80),
    retention=st.integers(min_value=1, max_value=100),
    protected=st.sets(st.sampled_from(TYPES), max_size=3),
    batch=st.integers(min_value=1, max_value=50),
)
def test_property_exactly_expected_rows_survive(
    pg: PgSchema,
    rows: list[tuple[str, float]],
    retention: int,
    protected: set[str],
    batch: int,
) -> None:
    with pg.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS whatsapp_keys CASCADE")
        conn.execute("DROP FUNCTION IF EXISTS whatsapp_keys_touch() CASCADE")
        conn.execute("DROP TABLE IF EXISTS whatsapp_auth")
    pg.create_reference_table()
    pg.add_auth({"c": AGE_CREDS["c0"]})
    keys = [KeyRow("c", t, str(i), age) for i, (t, age) in enumerate(rows)]
    # Keep ages off the cutoff's edge: the run's now() is a few ms after the insert's.
    keys = [k for k in keys if abs(k.age - retention) > 0.001]
    pg.insert_keys(keys)
    settings_ = pg.settings(
        CLEANUP_PROTECTED_KEY_TYPES=",".join(sorted(protected)),
        CLEANUP_UNPROTECT_KEY_TYPES=",".join(set(DEFAULT_PROTECTED_KEY_TYPES) - protected),
        CLEANUP_BATCH_SIZE=str(batch),
        CLEANUP_RETENTION_DAYS=str(retention),
    )
    report = run_cleanup(settings_, Flags(dry_run=False, force=True))
    survivors = expected_survivors(keys, retention, protected=tuple(protected))
    assert pg.key_set() == survivors
    assert report.deleted == len(keys) - len(survivors)


def test_reclaimable_estimate_counts_toasted_values(pg: PgSchema) -> None:
    pg.create_reference_table()
    with pg.connect() as conn:
        # 64 KiB of incompressible text per row: stored out of line, in the TOAST table.
        conn.execute(
            "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at) "
            "SELECT 'c', 'session', 'big' || g, jsonb_build_object('k', "
            "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 2048))), "
            "now() - interval '40 days' FROM generate_series(1, 3) g"
        )
    report = run_cleanup(pg.settings(), LIVE)
    assert report.deleted == 3
    # Estimated from the table's average stored size per key, TOAST included.
    assert 3 * 64 * 1024 <= report.reclaimable_bytes < 3 * 128 * 1024
