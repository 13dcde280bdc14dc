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
from cosmic_backup.format import kdf

MAGIC = b"Salted__"
SALT_LEN = 8
HEADER_LEN = len(MAGIC) + SALT_LEN
BLOCK_BITS = 128
BLOCK_BYTES = BLOCK_BITS // 8
KEY_IV_BYTES = 48  # AES-256 key, then the IV


# From this count up a derivation is memoized and may be started early (kdf.py); the
# store's objects use a low count under a full-entropy key, and are derived each time.
MEMOIZED_FROM = 10_000


def derive_key_iv(passphrase: bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    if iterations >= MEMOIZED_FROM:
        material = kdf.pbkdf2(passphrase, salt, iterations, KEY_IV_BYTES)
    else:
        material = hashlib.pbkdf2_hmac("sha256", passphrase, salt, iterations, KEY_IV_BYTES)
    return material[:32], material[32:]


def start_key_iv(passphrase: bytes, salt: bytes, iterations: int) -> None:
    """Begin `derive_key_iv` for these inputs in the background (full counts only)."""
    if iterations >= MEMOIZED_FROM:
        kdf.start(passphrase, salt, iterations, KEY_IV_BYTES)


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

    The ciphertext goes to AES at most STEP bytes at a time, into one buffer per call, and
    the last block is held back for the padding check here: `cryptography`'s `update` of a
    16 MiB pack, and its unpadder, cost 50 ms where this costs 3 (measured on the packs).
    """

    STEP = 1 << 20

    def __init__(
        self, passphrase: bytes, iterations: int, derive: KeySource = derive_key_iv
    ) -> None:
        self._passphrase = passphrase
        self._iterations = iterations
        self._derive = derive
        self._pending = b""
        self._cipher = None
        self._held = b""  # the last whole block decrypted: it carries the padding

    def _start(self, data: bytes | bytearray | memoryview) -> memoryview | None:
        """The ciphertext in `data` once the header is complete, or None before."""
        if self._pending or len(data) < HEADER_LEN:
            self._pending += bytes(data)
            if len(self._pending) < HEADER_LEN:
                return None
            data, self._pending = self._pending, b""
        view = memoryview(data)
        salt = read_salt(bytes(view[:HEADER_LEN]))
        key, iv = self._derive(self._passphrase, salt, self._iterations)
        self._cipher = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        return view[HEADER_LEN:]

    def update(self, data: bytes | bytearray | memoryview) -> bytearray:
        view = memoryview(data) if self._cipher is not None else self._start(data)
        if view is None or self._cipher is None:
            return bytearray()
        # Room for a partial block carried by AES from the last call, and one more.
        out = bytearray(len(self._held) + len(view) + 2 * BLOCK_BYTES)
        out[: len(self._held)] = self._held
        written = len(self._held)
        target = memoryview(out)
        for start in range(0, len(view), self.STEP):
            piece = view[start : start + self.STEP]
            written += self._cipher.update_into(piece, target[written:])
        target.release()
        keep = written - BLOCK_BYTES if written >= BLOCK_BYTES else 0
        self._held = bytes(out[keep:written])
        del out[keep:]
        return out

    def finalize(self) -> bytes:
        if self._cipher is None:
            raise IntegrityError("The backup file is truncated: it ends inside its header.")
        try:
            self._cipher.finalize()  # CBC holds nothing back; this checks whole blocks
        except ValueError:
            raise self._undecryptable() from None
        held = self._held
        pad = held[-1] if len(held) == BLOCK_BYTES else 0
        if not 1 <= pad <= BLOCK_BYTES or held[-pad:] != bytes([pad]) * pad:
            raise self._undecryptable()
        return held[:-pad]

    @staticmethod
    def _undecryptable() -> IntegrityError:
        return IntegrityError(
            "The backup file is truncated or was encrypted with another key: "
            "its final block does not decrypt."
        )


def decrypt_whole(
    stored: bytes | bytearray | memoryview, passphrase: bytes, iterations: int
) -> bytearray:
    """The plaintext of a whole openssl object held in memory, in one buffer."""
    decryptor = Decryptor(passphrase, iterations)
    plaintext = decryptor.update(stored)
    plaintext += decryptor.finalize()
    return plaintext
