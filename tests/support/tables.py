"""Key tables the engine tests run on, and the run flags they use."""

from __future__ import annotations

from psycopg import sql

from handler.settings import DEFAULT_PROTECTED_KEY_TYPES, Flags
from tests.support.db import KeyRow, PgSchema, baileys_creds

LIVE = Flags(dry_run=False)


TYPES = ("pre-key", "session", "sender-key", "app-state-sync-key", "lid-mapping", "tctoken")


def mixed_rows(n: int = 300) -> list[KeyRow]:
    """Ages 0..59 days across types; with 30-day retention about half are past the cutoff.

    Pre-key ids are numbers above the creds' window (AGE_CREDS), so the age rule decides.
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


# Every tenant's creds: a registration with no pre-key yet (counters at 1), so every pre-key
# id is above its window, a leftover that goes by age (the window counts the ids held below
# firstUnuploadedPreKeyId: with counters far above these ids, it would keep them all).
AGE_CREDS = {f"c{i}": baileys_creds(1) for i in range(3)}


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


def half_old_rows(n: int = 400) -> list[KeyRow]:
    """Half of them past a 30-day retention, spread over the heap."""
    return [KeyRow("c", "session", f"k{i}", 40 if i % 2 else 5) for i in range(n)]


def half_old_survivors(keys: list[KeyRow]) -> set[tuple[str, str, str]]:
    return {k.ident for k in keys if k.age < 30}


def slow_deletes(pg: PgSchema, seconds: float, table: str = "whatsapp_keys") -> None:
    """Make every DELETE statement on `table` take `seconds` (a statement-level trigger)."""
    with pg.connect() as conn:
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep({}); RETURN NULL; END $$"
            ).format(sql.Literal(seconds))
        )
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER slow_delete BEFORE DELETE ON {} "
                "FOR EACH STATEMENT EXECUTE FUNCTION slow_delete()"
            ).format(sql.Identifier(table))
        )


DRY = Flags()


FORCE = Flags(dry_run=False, force=True)


def kinds(pg: PgSchema) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, key_type, _ in pg.key_set():
        counts[key_type] = counts.get(key_type, 0) + 1
    return counts


OLD_DAYS = 60  # days: past the 30-day retention


def uploaded_prekeys(pg: PgSchema, n: int) -> None:
    """The reference table with tenant a's creds (n + 1 next and first unuploaded) and its
    pre-keys 1..n, for the runs without a timestamp column (each DELETE checks the creds)."""
    pg.create_reference_table()
    pg.add_auth({"a": baileys_creds(n + 1)})
    with pg.connect() as conn:
        conn.execute(
            "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value) "
            "SELECT 'a', 'pre-key', g::text, '{}'::jsonb FROM generate_series(1, %s) g",
            (n,),
        )
