"""The unit tier runs without a database: a test here that asks for one fails."""

from __future__ import annotations

import pytest


@pytest.fixture
def pg_server_dsn() -> str:
    pytest.fail("tests/unit/ uses no database: put this test in tests/engine/ or tests/handler/")
