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


def mask_url_password(text: str) -> str:
    """``postgres://u:pw@h/db`` becomes ``postgres://u:***@h/db``; also ``password=...``."""
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + "***@", text)
    return _KEYWORD_PASSWORD.sub(lambda m: m.group("head") + "***", text)


def register_secret(value: str | bytes | None) -> None:
    """Never let `value` through `redact` again in this process."""
    if value is None:
        return
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    text = text.strip()
    if len(text) >= _MIN_SECRET_LENGTH:
        with _lock:
            _secrets.add(text)


def redact(text: str) -> str:
    """`text` with URL passwords and every registered secret masked."""
    text = mask_url_password(text)
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, "***")
    return text
