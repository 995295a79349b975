"""The layout settings (docs/layouts.md): defaults, and each bad value or combination refused
with one message naming the setting."""

from __future__ import annotations

import pytest

from handler.settings import ConfigError, Settings

ENCODED = {"CLEANUP_LAYOUT": "encoded", "CLEANUP_TENANT_COLUMN": "session_id"}


def test_layout_defaults() -> None:
    s = Settings.from_env({})
    assert (s.layout, s.key_column, s.value_column) == ("columns", "key", "value")
    assert (s.creds_key, s.session_separator, s.timestamp_column) == ("creds", None, "updated_at")
    assert Settings.from_env({"CLEANUP_TIMESTAMP_COLUMN": "None"}).timestamp_column is None
    assert Settings.from_env({"CLEANUP_TENANT_COLUMN": "none"}).tenant_column is None
    prefixed = Settings.from_env(
        {
            "CLEANUP_LAYOUT": "encoded",
            "CLEANUP_TENANT_COLUMN": "none",
            "CLEANUP_KEY_SESSION_SEPARATOR": ":",
            "CLEANUP_CREDS_KEY": "auth_creds",
        }
    )
    assert (prefixed.session_separator, prefixed.creds_key) == (":", "auth_creds")
    assert prefixed.has_key_types


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CLEANUP_LAYOUT": "blob"}, "CLEANUP_LAYOUT"),
        ({**ENCODED, "CLEANUP_AUTH_TABLE": "whatsapp_auth"}, "CLEANUP_AUTH_TABLE has no use"),
        ({**ENCODED, "CLEANUP_KEY_COLUMN": "the key"}, "CLEANUP_KEY_COLUMN"),
        ({**ENCODED, "CLEANUP_VALUE_COLUMN": "v;"}, "CLEANUP_VALUE_COLUMN"),
        ({**ENCODED, "CLEANUP_KEY_SESSION_SEPARATOR": "-"}, "CLEANUP_KEY_SESSION_SEPARATOR"),
        ({**ENCODED, "CLEANUP_KEY_SESSION_SEPARATOR": "ninechars"}, "SEPARATOR"),
        ({**ENCODED, "CLEANUP_CREDS_KEY": "session-creds"}, "reads as a key of type session"),
        ({**ENCODED, "CLEANUP_CREDS_KEY": "x" * 256}, "CLEANUP_CREDS_KEY"),
        (
            {**ENCODED, "CLEANUP_KEY_SESSION_SEPARATOR": ":"},
            "CLEANUP_KEY_SESSION_SEPARATOR and CLEANUP_TENANT_COLUMN both name the session",
        ),
        (
            {**ENCODED, "CLEANUP_VALUE_COLUMN": "key"},
            "CLEANUP_KEY_COLUMN and CLEANUP_VALUE_COLUMN are the same column",
        ),
        (
            {**ENCODED, "CLEANUP_TIMESTAMP_COLUMN": "session_id"},
            "CLEANUP_TENANT_COLUMN and CLEANUP_TIMESTAMP_COLUMN are the same column",
        ),
        (
            {"CLEANUP_TIMESTAMP_COLUMN": "none", "CLEANUP_TYPE_RETENTION_DAYS": "session=40"},
            "CLEANUP_TYPE_RETENTION_DAYS needs a timestamp",
        ),
        (
            {"CLEANUP_TIMESTAMP_COLUMN": "none", "CLEANUP_PREKEY_AGE_ONLY": "true"},
            "CLEANUP_PREKEY_AGE_ONLY needs a timestamp",
        ),
    ],
)
def test_bad_layout_settings_are_refused_naming_the_setting(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as exc:
        Settings.from_env(env)
    assert "\n" not in str(exc.value)
