"""Keeping secrets out of what we print, log and record.

One place knows what a secret looks like: passwords in connection URLs, and any value
registered with `register_secret` (the backup key, a database password...).
"""

from __future__ import annotations

import re
import threading

# The password runs to the last "@" of the word: a raw "/" or "@" in it (an AWS-style
# secret, a password nobody percent-encoded) must not leave its tail visible.
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)(?P<pw>\S+)@")
_KEYWORD_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'[^']*'|\S+)", re.IGNORECASE)
_MIN_SECRET_LENGTH = 4

_lock = threading.Lock()
_secrets: set[str] = set()

# One whole connection URL (not free text): its user information runs to the LAST "@",
# so a password holding "@", "/", "?", "#" or spaces is masked whole, never in part.
_WHOLE_URL = re.compile(r"^(?P<head>\s*[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>.*)@", re.DOTALL)
# What may stand unencoded in a URL's user information (RFC 3986 userinfo).
USERINFO_CHARS = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:]|%[0-9A-Fa-f]{2})*")
# key=value connection strings: the password runs to the next "word=" (or the end).
_WHOLE_KEYWORD_PASSWORD = re.compile(
    r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|.*?)(?=\s+\w+\s*=|\s*$)",
    re.IGNORECASE | re.DOTALL,
)


def mask_url_password(text: str) -> str:
    """``postgres://u:pw@h/db`` becomes ``postgres://u:***@h/db``; also ``password=...``."""
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + "***@", text)
    return _KEYWORD_PASSWORD.sub(lambda m: m.group("head") + "***", text)


def split_url_password(url: str) -> tuple[str, str, str] | None:
    """(before, password, after) of one whole connection URL, or None when it has none.

    The user ends at the first ":" of the user information, the password at its last "@".
    """
    match = _WHOLE_URL.match(url)
    if match is None or ":" not in match.group("userinfo"):
        return None
    user, _, password = match.group("userinfo").partition(":")
    head = match.group("head") + user + ":"
    return head, password, url[match.end() - 1 :]


def mask_connection_string(value: str) -> str:
    """One whole DATABASE_URL (URL or key=value form) with its password masked entirely."""
    parts = split_url_password(value)
    if parts is not None:
        head, _password, tail = parts
        return head + "***" + tail
    return _WHOLE_KEYWORD_PASSWORD.sub(lambda m: m.group("head") + "***", value)


def register_secret(value: str | bytes | None) -> None:
    """Never let `value` through `redact` again in this process."""
    if value is None:
        return
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    text = text.strip()
    if len(text) >= _MIN_SECRET_LENGTH:
        with _lock:
            _secrets.add(text)


def forget_secrets() -> None:
    """Forget every registered secret (for tests: each starts with none)."""
    with _lock:
        _secrets.clear()


def redact(text: str) -> str:
    """`text` with URL passwords and every registered secret masked."""
    text = mask_url_password(text)
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, "***")
    return text
