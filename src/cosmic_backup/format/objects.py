"""Sealed objects of the chunk store (format version 2, docs/format.md "The chunk store").

A sealed object is byte for byte what ``openssl enc -aes-256-cbc -pbkdf2 -iter N -md sha256
-pass file:KEY`` writes, and its MAC is the HMAC-SHA256 of every stored byte under a key of
the object's kind (encrypt-then-MAC). Objects are sealed under the store's *data key*, 32
random bytes written as a key file is, at a low iteration count: the key is full-entropy, so
PBKDF2's count adds no security there (the doc says why 1,000). The data key itself is
*wrapped* (sealed) under the user's key at the full count.

Not used by the backup path yet: this is the format of one object, and nothing else.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import struct

from cosmic_backup.errors import IntegrityError, KeyProblem
from cosmic_backup.format.cipher import (
    Encryptor,
    decrypt_whole,
    derive_key_iv,
    start_key_iv,
)
from cosmic_backup.format.compression import Decompressor, compressor
from cosmic_backup.format.keys import FINGERPRINT_HEX_CHARS, Key, passphrase_from_text

OBJECT_ITERATIONS = 1_000
DATA_KEY_BYTES = 32
# The wrap MAC key is the AES key openssl derives from the user's passphrase with this
# fixed 8-byte salt (`openssl enc ... -S 6362777261707632 -P`), so the recovery script
# gets it without the passphrase on a command line.
WRAP_MAC_SALT = b"cbwrapv2"
READ_STEP = 1024 * 1024
MEMBER_ALIGNMENT = 64  # a pack's members start and end at multiples of this
GZIP_FLAG_OFFSET = 3
GZIP_FIXED_HEADER = 10
FEXTRA = 0x04
PADDING_SUBFIELD = b"CP"  # RFC 1952 extra subfield id: cosmic padding, zeros
SUBFIELD_HEADER = 4  # SI1, SI2 and a 2-byte length


class DataKey:
    """The store's data key: openssl's passphrase is its 64 hex digits; MAC keys and the
    chunk id key are HMAC-SHA256 of a label under its 32 raw bytes."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != DATA_KEY_BYTES:
            raise KeyProblem("The store's data key is not 32 bytes: its wrap is damaged.")
        self._secret = secret

    def __repr__(self) -> str:  # never show the secret, even in a traceback
        return f"DataKey(fingerprint={self.fingerprint})"

    @classmethod
    def generate(cls) -> DataKey:
        return cls(secrets.token_bytes(DATA_KEY_BYTES))

    @classmethod
    def from_line(cls, text: bytes) -> DataKey:
        """Read the key line as ``openssl -pass file:`` does: 64 hex digits before ``\\n``."""
        line = passphrase_from_text(text)
        try:
            if len(line) != 2 * DATA_KEY_BYTES:
                raise ValueError("wrong length")
            return cls(bytes.fromhex(line.decode("ascii")))
        except (ValueError, UnicodeDecodeError):
            raise KeyProblem(
                "The store's data key did not unwrap to 64 hex digits: the wrap is damaged "
                "or was made with another key."
            ) from None

    @property
    def passphrase(self) -> bytes:
        return self._secret.hex().encode()

    @property
    def line(self) -> bytes:
        return self.passphrase + b"\n"

    @functools.lru_cache(maxsize=16)  # noqa: B019 - a handful of labels per key, kept with it
    def derive(self, label: str) -> bytes:
        return hmac.new(self._secret, label.encode(), hashlib.sha256).digest()

    @functools.cached_property
    def fingerprint(self) -> str:
        return self.derive("fingerprint").hex()[:FINGERPRINT_HEX_CHARS]

    def chunk_id(self, plaintext: bytes | memoryview) -> bytes:
        return hmac.new(self.derive("chunk-id"), plaintext, hashlib.sha256).digest()


def mac_of(stored: bytes, mac_key: bytes) -> str:
    return hmac.new(mac_key, stored, hashlib.sha256).hexdigest()


def seal(plaintext: bytes, passphrase: bytes, iterations: int, mac_key: bytes) -> tuple[bytes, str]:
    """The openssl ``enc`` output for `plaintext`, with a fresh salt, and its MAC."""
    encryptor = Encryptor(passphrase, iterations)
    stored = encryptor.update(plaintext) + encryptor.finalize()
    return stored, mac_of(stored, mac_key)


def unseal(
    stored: bytes,
    passphrase: bytes,
    iterations: int,
    mac_key: bytes,
    expected_mac: str,
) -> bytearray:
    """The plaintext of a sealed object, once its MAC matched; nothing is decrypted before."""
    if not hmac.compare_digest(mac_of(stored, mac_key), expected_mac):
        raise IntegrityError(
            "A stored object fails its integrity check (MAC mismatch): it is damaged, "
            "truncated or was replaced. Run `cosmic-backup verify` to see which backups it breaks."
        )
    return decrypt_whole(stored, passphrase, iterations)


def gzip_member(data: bytes) -> bytes:
    """One gzip member, written by the artifact's own writer (stored blocks included)."""
    writer = compressor(threaded=False)
    return writer.compress(data) + writer.flush()


def gunzip_member(member: bytes | bytearray | memoryview) -> bytes:
    reader = Decompressor()
    reader.feed(member)
    out = []
    while chunk := reader.read(READ_STEP):
        out.append(chunk)
    reader.finish()
    return b"".join(out)


def aligned_member(data: bytes, alignment: int = MEMBER_ALIGNMENT) -> bytes:
    """One gzip member of `data` whose length is a multiple of `alignment`.

    The padding goes in the member's own header, as an extra field (FEXTRA) holding one
    subfield of zeros, which every gzip reader skips: a pack's plaintext stays nothing but
    gzip members, and the recovery script cuts one out with `dd` in whole blocks.
    """
    member = gzip_member(data)
    shortfall = -len(member) % alignment
    if shortfall == 0:
        return member
    # The extra field costs 2 bytes of XLEN, then a subfield of at least 4 bytes (or none).
    extra_length = shortfall - 2
    while extra_length < 0 or 0 < extra_length < SUBFIELD_HEADER:
        extra_length += alignment
    extra = b""
    if extra_length:
        fill = extra_length - SUBFIELD_HEADER
        extra = PADDING_SUBFIELD + struct.pack("<H", fill) + bytes(fill)
    header = bytearray(member[:GZIP_FIXED_HEADER])
    header[GZIP_FLAG_OFFSET] |= FEXTRA
    return bytes(header) + struct.pack("<H", len(extra)) + extra + member[GZIP_FIXED_HEADER:]


def seal_object(
    plaintext: bytes, data_key: DataKey, kind: str, iterations: int = OBJECT_ITERATIONS
) -> tuple[bytes, str]:
    """A list or index object: one gzip member sealed under the data key, MACed for `kind`."""
    return seal(gzip_member(plaintext), data_key.passphrase, iterations, data_key.derive(kind))


def open_object(
    stored: bytes,
    data_key: DataKey,
    kind: str,
    expected_mac: str,
    iterations: int = OBJECT_ITERATIONS,
) -> bytes:
    member = unseal(stored, data_key.passphrase, iterations, data_key.derive(kind), expected_mac)
    return gunzip_member(member)


def wrap_mac_key(user_key: Key, iterations: int) -> bytes:
    return derive_key_iv(user_key.passphrase, WRAP_MAC_SALT, iterations)[0]


def wrap_data_key(data_key: DataKey, user_key: Key, iterations: int) -> tuple[bytes, str]:
    """The data key line sealed under the user's key at the full count, and its MAC.

    The MAC key's derivation starts first, in the background, so that it runs beside the
    AES key's (the wrap's own salt): a new store's first backup paid both one after the
    other."""
    start_key_iv(user_key.passphrase, WRAP_MAC_SALT, iterations)
    encryptor = Encryptor(user_key.passphrase, iterations)
    stored = encryptor.update(data_key.line) + encryptor.finalize()
    return stored, mac_of(stored, wrap_mac_key(user_key, iterations))


def unwrap_data_key(stored: bytes, expected_mac: str, user_key: Key, iterations: int) -> DataKey:
    mac_key = wrap_mac_key(user_key, iterations)
    if not hmac.compare_digest(mac_of(stored, mac_key), expected_mac):
        raise KeyProblem(
            f"The store's data key wrap does not match the key {user_key.fingerprint}: it was "
            "made with another key, or it is damaged. Use the key the store was made with."
        )
    try:
        line = unseal(stored, user_key.passphrase, iterations, mac_key, expected_mac)
    except IntegrityError as exc:
        raise KeyProblem(f"The store's data key wrap does not decrypt: {exc}") from None
    return DataKey.from_line(line)
