"""Keys: the passphrase, what is derived from it, and its public fingerprint.

Everything but the openssl-compatible cipher key comes from one *master* secret,
PBKDF2-HMAC-SHA256(passphrase, fixed salt, 600,000 iterations), computed once per process
and key. Labels separate its uses, so the artifact MAC key, the manifest key and the
fingerprint are independent of each other and of the per-file AES key and IV, which
openssl derives from the passphrase and the file's own salt.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets

from cosmic_backup.errors import KeyProblem
from cosmic_backup.format import kdf

MASTER_SALT = b"cosmic-backup/v1/master"
MASTER_ITERATIONS = 600_000
MASTER_BYTES = 32
PASSPHRASE_BYTES = 32  # 256 random bits, written as 64 hex characters
FINGERPRINT_HEX_CHARS = 16


def _master_secret(passphrase: bytes) -> bytes:
    return kdf.pbkdf2(passphrase, MASTER_SALT, MASTER_ITERATIONS, MASTER_BYTES)


def start_master_secret(passphrase: bytes) -> None:
    """Begin the master secret's derivation in the background (see kdf.py)."""
    kdf.start(passphrase, MASTER_SALT, MASTER_ITERATIONS, MASTER_BYTES)


class Key:
    """A backup key: the passphrase (as openssl's ``-pass file:`` reads it) and its derivations."""

    def __init__(self, passphrase: bytes) -> None:
        if not passphrase:
            raise KeyProblem("The backup key is empty; restore the key file or set BACKUP_KEY.")
        self._passphrase = passphrase

    def __repr__(self) -> str:  # never show the secret, even in a traceback
        return f"Key(fingerprint={self.fingerprint})"

    @property
    def passphrase(self) -> bytes:
        return self._passphrase

    def _derive(self, label: bytes) -> bytes:
        return hmac.new(_master_secret(self._passphrase), label, hashlib.sha256).digest()

    @functools.cached_property
    def fingerprint(self) -> str:
        """A short public identifier; not a plain hash, so it says nothing of the key."""
        return self._derive(b"fingerprint").hex()[:FINGERPRINT_HEX_CHARS]

    @functools.cached_property
    def artifact_mac_key(self) -> bytes:
        return self._derive(b"artifact-mac")

    @functools.cached_property
    def manifest_mac_key(self) -> bytes:
        return self._derive(b"manifest-mac")


def generate_passphrase() -> str:
    """A new passphrase from the OS's secure random source, one line of 64 hex characters."""
    return secrets.token_hex(PASSPHRASE_BYTES)


def passphrase_from_text(text: bytes) -> bytes:
    """Take the passphrase as ``openssl -pass file:`` does: the bytes before the first newline.

    openssl keeps the ``\r`` of a CRLF line in the passphrase, so we keep it too: otherwise
    the by-hand recovery would derive another key from the same file.
    """
    return text.split(b"\n", 1)[0]
