"""The encoded layout's key parser (handler/keyparse.py), the Python twin of its SQL: the type
is the longest known Baileys type that, followed by "-", starts the key."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from handler.keyparse import KEY_TYPES, LONGEST_FIRST, EncodedKey, key_type_of, parse_key
from handler.settings import BAILEYS_KEY_TYPES, DEFAULT_PROTECTED_KEY_TYPES

ids = st.text(max_size=40)
sessions = st.text(min_size=1, max_size=20).filter(lambda s: ":" not in s)


def test_the_parser_knows_every_type_baileys_writes() -> None:
    assert set(KEY_TYPES) == BAILEYS_KEY_TYPES
    assert set(LONGEST_FIRST) == set(KEY_TYPES)
    assert [len(t) for t in LONGEST_FIRST] == sorted((len(t) for t in KEY_TYPES), reverse=True)


@given(st.sampled_from(DEFAULT_PROTECTED_KEY_TYPES), ids)
def test_no_key_of_a_protected_type_is_classified_as_something_else(
    key_type: str, key_id: str
) -> None:
    assert parse_key(f"{key_type}-{key_id}") == EncodedKey(None, key_type, key_id)


@given(st.sampled_from(DEFAULT_PROTECTED_KEY_TYPES), ids, sessions)
def test_nor_behind_a_session_prefix(key_type: str, key_id: str, session: str) -> None:
    parsed = parse_key(f"{session}:{key_type}-{key_id}", ":")
    assert parsed == EncodedKey(session, key_type, key_id)


@given(st.sampled_from(KEY_TYPES), ids)
def test_every_type_reads_as_itself_unless_a_longer_type_claims_the_key(
    key_type: str, key_id: str
) -> None:
    key = f"{key_type}-{key_id}"
    longer = [t for t in KEY_TYPES if len(t) > len(key_type) and key.startswith(t + "-")]
    assert key_type_of(key) == (longer[0] if longer else key_type)


def test_the_neighbours_the_issue_names_are_told_apart() -> None:
    assert key_type_of("sender-key-memory-120363@g.us") == "sender-key-memory"
    assert key_type_of("sender-key-120363@g.us::5511::0") == "sender-key"
    assert key_type_of("app-state-sync-version-critical_block") == "app-state-sync-version"
    assert key_type_of("app-state-sync-key-AAAAAA==") == "app-state-sync-key"


@given(st.text(max_size=40))
def test_a_key_that_starts_with_no_type_and_dash_is_unknown(key: str) -> None:
    if not any(key.startswith(t + "-") for t in KEY_TYPES):
        assert parse_key(key) == EncodedKey(None, None, None)


def test_the_session_is_what_precedes_the_first_separator() -> None:
    assert parse_key("s1:sender-key-g@g.us::u:1::0", ":") == EncodedKey(
        "s1", "sender-key", "g@g.us::u:1::0"
    )
    assert parse_key("pre-key-1", ":") == EncodedKey(None, None, None)
    assert parse_key("s1:creds", ":") == EncodedKey("s1", None, None)
