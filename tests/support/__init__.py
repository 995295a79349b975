"""Helpers the tests share, imported as `from tests.support.<module> import ...`.

Fixtures are not here: pytest finds them in the conftest.py files.
"""
