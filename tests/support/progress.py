"""Progress callbacks of the engine tests: something happens while a run is under way."""

from __future__ import annotations

from collections.abc import Callable

from handler.deleteloop import Progress
from tests.support.db import PgSchema


class AfterFirstBatch:
    """A progress callback that runs `action` once, after the run's first batch; `seen` holds the
    Progress it was called with (empty: the run never finished a batch)."""

    def __init__(self, action: Callable[[], None]) -> None:
        self.action = action
        self.seen: list[Progress] = []

    def __call__(self, p: Progress) -> None:
        if not self.seen:
            self.action()
            self.seen.append(p)


def refresh_last_old_key(pg: PgSchema) -> tuple[tuple[str, str, str], AfterFirstBatch]:
    """The last old key in heap order (not of a protected type), and a progress callback by
    which the application uses it after the run's first batch: it is measured eligible, then
    refreshed before its batch comes."""
    with pg.connect() as conn:
        row = conn.execute(
            "SELECT company_id, key_type, key_id FROM whatsapp_keys "
            "WHERE updated_at < now() - interval '30 days' "
            "AND key_type NOT IN ('app-state-sync-key', 'lid-mapping') "
            "ORDER BY ctid DESC LIMIT 1"
        ).fetchone()
    assert row is not None
    last = (str(row[0]), str(row[1]), str(row[2]))

    def refresh() -> None:
        with pg.connect() as app:
            app.execute(
                "UPDATE whatsapp_keys SET value = value "
                "WHERE company_id = %s AND key_type = %s AND key_id = %s",
                last,
            )

    return last, AfterFirstBatch(refresh)
