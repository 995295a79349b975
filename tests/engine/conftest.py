"""Fixtures of the engine tests: the key tables they run on."""

from __future__ import annotations

import pytest

from tests.support.db import KeyRow, PgSchema
from tests.support.tables import AGE_CREDS, half_old_rows, mixed_rows


@pytest.fixture
def table(pg: PgSchema) -> list[KeyRow]:
    pg.create_reference_table()
    pg.add_auth(AGE_CREDS)
    rows = mixed_rows()
    pg.insert_keys(rows)
    return rows


@pytest.fixture
def half_old_table(pg: PgSchema) -> list[KeyRow]:
    pg.create_reference_table()
    keys = half_old_rows()
    pg.insert_keys(keys)
    return keys


@pytest.fixture
def keys_table(pg: PgSchema) -> PgSchema:
    pg.create_reference_table()
    return pg
