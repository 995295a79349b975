"""The age rule against a real PostgreSQL: exactly the keys past their type's retention go, on
any table layout.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handler.cleanup import run_cleanup
from handler.settings import DEFAULT_PROTECTED_KEY_TYPES, ConfigError, Flags
from tests.support.db import KeyRow, PgSchema
from tests.support.tables import AGE_CREDS, DRY, FORCE, LIVE, TYPES, expected_survivors, kinds


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


def test_per_type_retention_override(pg: PgSchema, table: list[KeyRow]) -> None:
    settings = pg.settings(
        CLEANUP_TYPE_RETENTION_DAYS="pre-key=45,session=10", CLEANUP_GUARD_MIN_KEYS="100000"
    )
    report = run_cleanup(settings, LIVE)
    overrides = {"pre-key": 45, "session": 10}
    assert pg.key_set() == expected_survivors(table, 30, overrides=overrides)
    assert report.by_type["pre-key"].retention_days == 45
    assert report.retention_overrides == overrides


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
    keys = [KeyRow("c", t, str(i + 1), age) for i, (t, age) in enumerate(rows)]
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


def test_a_retention_override_for_no_existing_type_is_noted_and_not_applied(
    app_state: PgSchema,
) -> None:
    # `sesion=90` would keep the 60-day sessions if it were matched loosely: it is not. The
    # dry run counts them eligible and says why; a live run refuses the typo (forced too).
    settings = app_state.settings(CLEANUP_TYPE_RETENTION_DAYS="sesion=90")
    report = run_cleanup(settings, DRY)
    assert report.by_type["session"].eligible == 3
    assert any(
        "CLEANUP_TYPE_RETENTION_DAYS: key type 'sesion' matches no key" in note
        and "did you mean 'session'?" in note
        and "a live run refuses it" in note
        for note in report.notes
    )
    with pytest.raises(ConfigError, match=r"CLEANUP_TYPE_RETENTION_DAYS names 'sesion'"):
        run_cleanup(settings, FORCE)
    assert kinds(app_state)["session"] == 6
