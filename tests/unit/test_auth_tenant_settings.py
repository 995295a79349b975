"""CLEANUP_AUTH_TENANT_COLUMN and CLEANUP_CREDS_PATH (docs/layouts.md): defaults, each bad
value refused with one line naming the setting, and the encoded layout's refusals of the
columns layout's settings set explicitly."""

from __future__ import annotations

import pytest

from handler.lifecycle import parse_creds
from handler.settings import ConfigError, Settings

ENCODED = {"CLEANUP_LAYOUT": "encoded", "CLEANUP_TENANT_COLUMN": "session_id"}


def test_the_auth_tenant_column_defaults_to_the_key_tables_and_the_path_to_the_value() -> None:
    s = Settings.from_env({"CLEANUP_TENANT_COLUMN": "whatsappId"})
    assert (s.auth_tenant_column, s.auth_tenant, s.creds_path) == (None, "whatsappId", ())
    t = Settings.from_env({"CLEANUP_AUTH_TENANT_COLUMN": "id", "CLEANUP_CREDS_PATH": "a.b_c"})
    assert (t.auth_tenant, t.tenant_column, t.creds_path) == ("id", "company_id", ("a", "b_c"))


@pytest.mark.parametrize(
    "path", ["a..b", ".creds", "creds.", "a b", "cr'eds", "1creds", "a.b.c.d.e.f.g.h.i", "x" * 64]
)
def test_a_bad_creds_path_is_refused_with_one_line(path: str) -> None:
    with pytest.raises(ConfigError, match=r"^invalid settings: CLEANUP_CREDS_PATH: ") as refused:
        Settings.from_env({"CLEANUP_CREDS_PATH": path})
    assert "\n" not in str(refused.value)
    assert ";" not in str(refused.value)
    assert path not in str(refused.value)


@pytest.mark.parametrize("value", ["Whatsapps.id", "id; DROP TABLE x", "a b"])
def test_a_bad_auth_tenant_column_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^invalid settings: CLEANUP_AUTH_TENANT_COLUMN: "):
        Settings.from_env({"CLEANUP_AUTH_TENANT_COLUMN": value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CLEANUP_KEY_TYPE_COLUMN", "key_type"),  # even the default, set explicitly
        ("CLEANUP_KEY_TYPE_COLUMN", "none"),
        ("CLEANUP_KEY_ID_COLUMN", "key_id"),
        ("CLEANUP_AUTH_TENANT_COLUMN", "id"),
        ("CLEANUP_CREDS_PATH", "creds"),
    ],
)
def test_the_encoded_layout_refuses_a_columns_layout_setting_set_explicitly(
    name: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=f"{name} has no use in the encoded layout") as refused:
        Settings.from_env({**ENCODED, name: value})
    assert "\n" not in str(refused.value)


def test_the_encoded_layout_accepts_those_settings_left_unset_or_empty() -> None:
    s = Settings.from_env({**ENCODED, "CLEANUP_KEY_TYPE_COLUMN": "", "CLEANUP_KEY_ID_COLUMN": ""})
    assert s.layout == "encoded"


def test_the_creds_path_is_followed_in_text_and_a_missing_one_is_a_reason() -> None:
    creds = {"nextPreKeyId": 1200, "firstUnuploadedPreKeyId": 1200}
    text = '{"creds": {"nextPreKeyId": 1200, "firstUnuploadedPreKeyId": 1200}, "keys": {}}'
    read = parse_creds(text, ("creds",))
    assert not isinstance(read, str)
    assert read.next_prekey_id == 1200
    assert parse_creds(creds, ()) == read
    assert parse_creds('{"keys": {}}', ("creds",)) == "creds have no creds (CLEANUP_CREDS_PATH)"
    assert parse_creds('{"a": 1}', ("a", "b")) == "creds have no a.b (CLEANUP_CREDS_PATH)"
    assert parse_creds("[1]", ("creds",)) == "creds are not a JSON object"
    assert parse_creds("{", ("creds",)) == "creds are not JSON"
    assert parse_creds(None, ("creds",), path_in_sql=True).startswith("creds have no creds")
