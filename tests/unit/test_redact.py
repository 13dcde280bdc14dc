"""What we print, log and record never carries a password or a registered secret.

Each test starts with no registered secret (the autouse fixture in tests/conftest.py).
"""

from __future__ import annotations

import pytest

from cosmic_backup.redact import (
    forget_secrets,
    mask_connection_string,
    mask_url_password,
    redact,
    register_secret,
)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgres://app:pw@db/app", "postgres://app:***@db/app"),
        (
            "postgresql://app:s%40f3:x@db.example.com:5432/app?sslmode=require",
            "postgresql://app:***@db.example.com:5432/app?sslmode=require",
        ),
        (
            "pg_dump: error: connection to postgresql://u:p4ss@h/db failed; retry with "
            "postgresql://v:other@h2/db",
            "pg_dump: error: connection to postgresql://u:***@h/db failed; retry with "
            "postgresql://v:***@h2/db",
        ),
        # raw "/" and "@" are not valid in a URL's password, but people write them:
        ("s3://AKIA:wJalr/K7+MDENG@s3.example.com/b", "s3://AKIA:***@s3.example.com/b"),
        ("postgresql://app:p@ss/w@db/app", "postgresql://app:***@db/app"),
        ("host=db password=hunter2 user=app", "host=db password=*** user=app"),
        ("host=db PASSWORD = 'two words' user=app", "host=db PASSWORD = *** user=app"),
    ],
)
def test_passwords_in_urls_and_conninfo_are_masked(text: str, masked: str) -> None:
    assert mask_url_password(text) == masked
    assert redact(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://app@db/app",
        "postgresql://db:5432/app",
        "see https://example.com/a:b for details",
        "mailto:ops@example.com",
    ],
)
def test_text_without_a_password_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_registered_secrets_are_removed_wherever_they_appear() -> None:
    register_secret(b"  0123456789abcdef-key-under-test\n")  # as read from a key file
    register_secret("db-password-under-test")
    text = (
        "BACKUP_KEY=0123456789abcdef-key-under-test\n"
        "the password db-password-under-test was refused\n"
        "key again: 0123456789abcdef-key-under-test."
    )
    shown = redact(text)
    assert "key-under-test" not in shown and "db-password-under-test" not in shown
    assert shown == "BACKUP_KEY=***\nthe password *** was refused\nkey again: ***."
    assert redact(shown) == shown


def test_the_longest_secret_is_masked_first() -> None:
    """A secret that contains another must not leave its tail behind."""
    register_secret("inner-secret-xyz")
    register_secret("outer-inner-secret-xyz-tail")
    assert redact("got outer-inner-secret-xyz-tail") == "got ***"


def test_very_short_values_and_none_are_not_registered() -> None:
    """A three-letter password would otherwise erase every 'pg_' from every message;
    such a password is still masked where it appears in a URL."""
    register_secret("pg_")
    register_secret(None)
    assert redact("pg_dump and pg_restore") == "pg_dump and pg_restore"
    assert redact("postgresql://u:pg_@h/db") == "postgresql://u:***@h/db"


def test_secrets_can_be_forgotten_and_none_leaks_in_from_another_test() -> None:
    assert redact("0123456789abcdef-key-under-test") == "0123456789abcdef-key-under-test"
    register_secret("forget-me-secret-value")
    assert redact("forget-me-secret-value") == "***"
    forget_secrets()
    assert redact("forget-me-secret-value") == "forget-me-secret-value"


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("postgresql://app:p@ss:w/rd#1%x@db/app", "postgresql://app:***@db/app"),
        ("postgresql://app:two words@db/app", "postgresql://app:***@db/app"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        ("host=db password=two words user=app", "host=db password=*** user=app"),
        ("host=db password='it''s' dbname=x", "host=db password=*** dbname=x"),
    ],
)
def test_a_whole_connection_string_is_masked_entirely(value: str, masked: str) -> None:
    assert mask_connection_string(value) == masked
