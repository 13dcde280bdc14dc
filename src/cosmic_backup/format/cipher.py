"""AES-256-CBC in exactly the format of ``openssl enc -aes-256-cbc -pbkdf2 -iter N -md sha256``.

Layout: ``Salted__`` + 8-byte random salt + ciphertext (PKCS#7 padded). Key and IV are the
first 48 bytes of PBKDF2-HMAC-SHA256(passphrase, salt, N). openssl stores no iteration
count, so N travels in the manifest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cosmic_backup.errors import IntegrityError

MAGIC = b"Salted__"
SALT_LEN = 8
HEADER_LEN = len(MAGIC) + SALT_LEN
BLOCK_BITS = 128


def derive_key_iv(passphrase: bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    material = hashlib.pbkdf2_hmac("sha256", passphrase, salt, iterations, dklen=48)
    return material[:32], material[32:]


class Encryptor:
    """Streaming encryption; the header comes out with the first call to `update`."""

    def __init__(self, passphrase: bytes, iterations: int, salt: bytes | None = None) -> None:
        self.salt = salt if salt is not None else os.urandom(SALT_LEN)
        key, iv = derive_key_iv(passphrase, self.salt, iterations)
        self._cipher = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        self._padder = padding.PKCS7(BLOCK_BITS).padder()
        self._header_pending = True

    def _header(self) -> bytes:
        if self._header_pending:
            self._header_pending = False
            return MAGIC + self.salt
        return b""

    def update(self, data: bytes) -> bytes:
        return self._header() + self._cipher.update(self._padder.update(data))

    def finalize(self) -> bytes:
        tail = self._cipher.update(self._padder.finalize()) + self._cipher.finalize()
        return self._header() + tail


def read_salt(header: bytes) -> bytes:
    if len(header) < HEADER_LEN or not header.startswith(MAGIC):
        raise IntegrityError(
            "The backup file does not start with an openssl 'Salted__' header: it is not "
            "a cosmic-backup artifact or it is damaged."
        )
    return header[len(MAGIC) : HEADER_LEN]


KeySource = Callable[[bytes, bytes, int], tuple[bytes, bytes]]


class Decryptor:
    """Streaming decryption of a whole artifact, header included.

    `derive` turns (passphrase, salt, iterations) into key and IV: PBKDF2 by default; a
    reader that started the derivation early passes one that waits for its result.
    """

    def __init__(
        self, passphrase: bytes, iterations: int, derive: KeySource = derive_key_iv
    ) -> None:
        self._passphrase = passphrase
        self._iterations = iterations
        self._derive = derive
        self._pending = b""
        self._cipher = None
        self._unpadder = padding.PKCS7(BLOCK_BITS).unpadder()

    def update(self, data: bytes) -> bytes:
        if self._cipher is None:
            self._pending += data
            if len(self._pending) < HEADER_LEN:
                return b""
            salt = read_salt(self._pending)
            key, iv = self._derive(self._passphrase, salt, self._iterations)
            self._cipher = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
            data, self._pending = self._pending[HEADER_LEN:], b""
        return self._unpadder.update(self._cipher.update(data))

    def finalize(self) -> bytes:
        if self._cipher is None:
            raise IntegrityError("The backup file is truncated: it ends inside its header.")
        try:
            last = self._cipher.finalize()
            return self._unpadder.update(last) + self._unpadder.finalize()
        except ValueError as exc:
            raise IntegrityError(
                "The backup file is truncated or was encrypted with another key: "
                "its final block does not decrypt."
            ) from exc
