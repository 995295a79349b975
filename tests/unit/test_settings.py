"""Settings read from the environment without a database: defaults, empty values, and bad values
refused naming the setting.
"""

from __future__ import annotations

import pytest

from handler.settings import ConfigError, Flags, Settings, notification_settings


def test_rule_settings_defaults_empty_values_and_bad_values() -> None:
    defaults = Settings.from_env({})
    # TTL and orphans are opt-in (docs/key-lifecycle.md); the creds are read by default.
    assert (defaults.expires_column, defaults.orphan_rule) == (None, False)
    assert (defaults.prekey_window, defaults.prekey_age_only) == (1000, False)
    assert (defaults.creds_column, defaults.key_id_column) == ("creds", "key_id")
    assert (defaults.auth_table, defaults.auth_table_parts) == (None, None)
    assert (defaults.tenant_column, defaults.orphan_grace_days) == ("company_id", 1)
    assert (defaults.max_orphan_tenant_fraction, defaults.top_tenants) == (0.25, 5)
    empty = Settings.from_env({"CLEANUP_EXPIRES_COLUMN": "", "CLEANUP_AUTH_TABLE": " "})
    assert (empty.expires_column, empty.auth_table) == (None, None)
    assert Settings.from_env({"CLEANUP_AUTH_TABLE": "auth.creds"}).auth_table_parts == (
        "auth",
        "creds",
    )
    for name, value in [
        ("CLEANUP_EXPIRES_COLUMN", "expires at"),
        ("CLEANUP_TENANT_COLUMN", "company-id"),
        ("CLEANUP_ORPHAN_GRACE_DAYS", "0"),
        ("CLEANUP_MAX_ORPHAN_TENANT_FRACTION", "0"),
        ("CLEANUP_MAX_ORPHAN_TENANT_FRACTION", "1.5"),
        ("CLEANUP_TOP_TENANTS", "-1"),
        ("CLEANUP_EXPIRES_COLUMN", "updated_at"),
        ("CLEANUP_PREKEY_WINDOW", "811"),
        ("CLEANUP_CREDS_COLUMN", "creds;"),
        ("CLEANUP_KEY_ID_COLUMN", "key id"),
        ("CLEANUP_ORPHAN_RULE", "maybe"),
    ]:
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})


def test_orphan_settings_defaults() -> None:
    defaults = Settings.from_env({})
    assert defaults.max_orphan_tenant_fraction == 0.25
    assert defaults.max_orphan_tenants == 100


def test_unknown_time_zone_is_refused_naming_the_setting_and_the_closest_zone() -> None:
    with pytest.raises(ConfigError, match=r"CLEANUP_TIMESTAMP_TIMEZONE.*Europe/Berlin"):
        Settings.from_env({"CLEANUP_TIMESTAMP_TIMEZONE": "Europe/Berlinn"})


def test_the_opt_out_refuses_a_name_that_is_not_a_builtin_protected_type() -> None:
    with pytest.raises(ConfigError, match=r"CLEANUP_UNPROTECT_KEY_TYPES.*lid-maping"):
        Settings.from_env({"CLEANUP_UNPROTECT_KEY_TYPES": "lid-maping"})


TOKEN_CANARY = "987654321:TOKENCANARY_7f3a9c1e5b2d4f6a8c0e1b3d5f7"


@pytest.mark.parametrize(
    "url",
    [
        "api.telegram.org",  # no scheme
        "htps://api.telegram.org",  # the scheme misspelt
        "http://api.telegram.org",  # plain HTTP off this machine: the token in clear
        "https://",  # no host
        "https://user:pw@api.telegram.org",  # userinfo
        "https://api.telegram.org/?x=1",  # a query
        "https://api.telegram.org/#frag",  # a fragment
        f"https://api.telegram.org/bot{TOKEN_CANARY}",  # the token pasted in
        "https://api.telegram.org:99999",  # a bad port
    ],
)
def test_a_broken_telegram_api_url_is_refused_naming_the_setting(url: str) -> None:
    with pytest.raises(ConfigError, match="TELEGRAM_API_URL") as info:
        Settings.from_env({"TELEGRAM_API_URL": url, "TELEGRAM_BOT_TOKEN": TOKEN_CANARY})
    assert "TOKENCANARY" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.telegram.org",
        "https://api.telegram.org/",
        "https://telegram-proxy.example.com:8443/base",
        "http://127.0.0.1:8080",  # a local fake server (the tests' own)
        "http://localhost:8080",
        "http://[::1]:8080",
    ],
)
def test_a_telegram_api_url_over_https_or_to_this_machine_is_accepted(url: str) -> None:
    assert Settings.from_env({"TELEGRAM_API_URL": url}).telegram_api_url == url


@pytest.mark.parametrize("value", ["pre-key=90,session=45,pre-key=14", "session=45, session =45"])
def test_a_type_named_twice_in_the_retention_map_is_refused_naming_it(value: str) -> None:
    """The last value silently won: pre-key's 90 days became 14."""
    with pytest.raises(ConfigError, match="CLEANUP_TYPE_RETENTION_DAYS") as info:
        Settings.from_env({"CLEANUP_TYPE_RETENTION_DAYS": value})
    assert "twice" in str(info.value)
    assert value.split("=", maxsplit=1)[0] in str(info.value)


def test_notification_settings_are_read_apart_from_the_cleanup_settings() -> None:
    env = {
        "CLEANUP_RETENTION_DAYS": "zero",  # breaks Settings, not the notifiers
        "SENTRY_DSN": "https://key@sentry.example/1",
        "SENTRY_MONITOR_SLUG": "nightly",
        "SENTRY_ENVIRONMENT": " ",  # empty is unset: the default
        "TELEGRAM_CHAT_ID": "-100",
        "TELEGRAM_BOT_TOKEN": "123:secret-token-value",
    }
    with pytest.raises(ConfigError):
        Settings.from_env(env)
    notice, problems = notification_settings(env)
    assert problems == {}
    assert notice.sentry_monitor_slug == "nightly"
    assert notice.sentry_environment == "production"
    assert notice.telegram_chat_id == "-100"
    assert not hasattr(notice, "retention_days")


@pytest.mark.parametrize(
    ("broken", "off", "kept"),
    [
        ({"TELEGRAM_API_URL": "ftp://tg.example.net"}, "telegram", "sentry"),
        ({"SENTRY_MAX_RUNTIME_MINUTES": "-5"}, "sentry", "telegram"),
    ],
)
def test_a_channel_with_an_invalid_setting_is_left_off_and_the_other_kept(
    broken: dict[str, str], off: str, kept: str
) -> None:
    """The same validators as Settings; the problem names the variable, never its value."""
    env = {
        "SENTRY_DSN": "https://key@sentry.example/1",
        "TELEGRAM_CHAT_ID": "-100",
        "TELEGRAM_BOT_TOKEN": "123:secret-token-value",
        **broken,
    }
    notice, problems = notification_settings(env)
    (name,) = broken
    assert list(problems) == [off]
    assert name in problems[off]
    assert broken[name] not in problems[off]
    on = {"sentry": notice.sentry_dsn is not None, "telegram": notice.telegram_chat_id is not None}
    assert on == {off: False, kept: True}
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CLEANUP_KEY_SESSION_SEPARATOR", ":"),
        ("CLEANUP_VALUE_COLUMN", "data"),
        ("CLEANUP_CREDS_KEY", "auth-creds"),
        ("CLEANUP_KEY_COLUMN", "k"),
    ],
)
def test_an_encoded_only_setting_in_the_columns_layout_is_refused_naming_it(
    name: str, value: str
) -> None:
    """CLEANUP_LAYOUT=encoded forgotten (or misspelt): the encoded layout's own settings would
    be ignored and the table read as the columns layout; refused like the reverse."""
    with pytest.raises(ConfigError, match=f"{name} has no use in the columns layout") as info:
        Settings.from_env({name: value})
    assert "CLEANUP_LAYOUT=encoded" in str(info.value)
    if len(value) > 2:
        assert value not in str(info.value)
    # Encoded, they are the layout's own settings.
    Settings.from_env({name: value, "CLEANUP_LAYOUT": "encoded", "CLEANUP_TENANT_COLUMN": "none"})


def test_a_live_run_refuses_an_unknown_cleanup_variable_and_a_dry_run_does_not() -> None:
    settings = Settings.from_env({"CLEANUP_RETENTON_DAYS": "90", "CLEANUP_TABEL": "x"})
    settings.check_flags(Flags(dry_run=True))
    with pytest.raises(ConfigError) as info:
        settings.check_flags(Flags(dry_run=False, force=True))
    message = str(info.value)
    assert "CLEANUP_RETENTON_DAYS" in message
    assert "CLEANUP_RETENTION_DAYS" in message
    assert "CLEANUP_TABEL" in message
    assert "CLEANUP_TABLE" in message
    assert "90" not in message
