"""A dry run tells the truth about the live run: with a role that cannot delete, it says so and
the CLI exits 4, instead of "would delete N" and a first live run that fails with permission
denied. Real roles on a real PostgreSQL.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from handler import cli
from handler.cleanup import CleanupError, run_cleanup
from handler.settings import Flags, Settings
from tests.support.db import KeyRow, PgSchema

DRY, LIVE = Flags(dry_run=True), Flags(dry_run=False)


KEYS = [KeyRow("c1", "session", f"old{i}", 60) for i in range(30)]


KEYS += [KeyRow("c1", "session", f"new{i}", 1) for i in range(70)]


@pytest.fixture
def table(pg: PgSchema) -> PgSchema:
    pg.create_reference_table()
    pg.insert_keys(KEYS)
    # The history table exists, created by the owner as the README's checklist says.
    subprocess.run(
        [sys.executable, "-m", "handler.cli", "init-db"],
        env=pg.env(),
        check=True,
        capture_output=True,
    )
    return pg


def as_role(pg: PgSchema, *grants: str) -> Iterator[Settings]:
    """Settings that connect as a fresh role holding USAGE on the schema and `grants`."""
    with pg.role("job", *(g.format(schema=pg.schema, role="{role}") for g in grants)) as role:
        yield pg.settings(DATABASE_URL=pg.dsn + f" user={role}", CLEANUP_GUARD_MIN_KEYS="100000")


SELECT_ONLY = ("GRANT SELECT ON {schema}.whatsapp_keys TO {role}",)


NO_HISTORY = ("GRANT SELECT, DELETE ON {schema}.whatsapp_keys TO {role}",)


README_GRANTS = (
    *NO_HISTORY,
    "GRANT SELECT, INSERT ON {schema}.keys_cleanup_runs TO {role}",
    "GRANT USAGE ON SEQUENCE {schema}.keys_cleanup_runs_id_seq TO {role}",
)


@pytest.fixture
def select_only(table: PgSchema) -> Iterator[Settings]:
    yield from as_role(table, *SELECT_ONLY)


def test_a_dry_run_with_a_select_only_role_says_a_live_run_would_fail(
    table: PgSchema, select_only: Settings
) -> None:
    report = run_cleanup(select_only, DRY)
    assert report.status == "completed"
    assert report.eligible == 30
    assert report.live_run_would_fail
    assert (
        f"a live run would fail: this role lacks DELETE on {table.schema}.whatsapp_keys"
        in "\n".join(report.notes)
    )
    # And it is true: the live run with the same role fails on the first batch.
    with pytest.raises(CleanupError, match="permission denied"):
        run_cleanup(select_only, LIVE)
    assert table.count() == len(KEYS)


def test_the_cli_dry_run_exits_4_and_prints_the_note(
    table: PgSchema,
    select_only: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    table.use_env(monkeypatch, DATABASE_URL=select_only.database_url.get_secret_value())  # type: ignore[union-attr]
    assert cli.main([]) == cli.EXIT_LIVE_WOULD_FAIL == 4
    out = capsys.readouterr().out
    assert "a live run would fail: this role lacks DELETE on" in out


def test_a_role_without_the_history_grants_gets_a_note_and_exit_0(table: PgSchema) -> None:
    for settings in as_role(table, *NO_HISTORY):
        report = run_cleanup(settings, DRY)
        assert not report.live_run_would_fail
        (note,) = [n for n in report.notes if "would not record" in n]
        history = f"{table.schema}.keys_cleanup_runs"
        assert note == (
            "a live run would not record its run history: this role lacks SELECT on "
            f"{history}, INSERT on {history}, USAGE on the sequence {history}_id_seq"
        )
        assert cli.exit_code(report) == 0


def test_a_role_with_the_readme_grants_gets_no_note(table: PgSchema) -> None:
    for settings in as_role(table, *README_GRANTS):
        report = run_cleanup(settings, DRY)
        assert not report.live_run_would_fail
        assert not [n for n in report.notes if "a live run would" in n]
        assert cli.exit_code(report) == 0
        assert run_cleanup(settings, LIVE).deleted == 30


def test_without_a_history_table_the_dry_run_checks_that_a_live_run_may_create_it(
    pg: PgSchema,
) -> None:
    pg.create_reference_table()
    pg.insert_keys(KEYS)
    for settings in as_role(pg, *NO_HISTORY):
        (note,) = [n for n in run_cleanup(settings, DRY).notes if "would not record" in n]
        assert f"CREATE on the schema {pg.schema}" in note
    # The owner may create it: no note.
    assert not [n for n in run_cleanup(pg.settings(), DRY).notes if "would not record" in n]
