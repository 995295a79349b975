"""The tests, by tier: unit/ (no database), engine/ (run_cleanup against a real PostgreSQL,
one file per behaviour), handler/ (the entry points, notifiers and secrets), repo/ (docs,
template, fixtures). Shared helpers are in support/; fixtures in the conftest.py files."""
