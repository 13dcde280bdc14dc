"""Keys: the pinned derivations (a change would orphan every existing backup and keyring),
the fingerprint, new passphrases, and reading a passphrase as openssl does."""

from __future__ import annotations

import hashlib
import re

import pytest

from cosmic_backup.errors import KeyProblem
from cosmic_backup.format.cipher import derive_key_iv
from cosmic_backup.format.keys import (
    MASTER_ITERATIONS,
    MASTER_SALT,
    Key,
    generate_passphrase,
    passphrase_from_text,
)
from tests.unit.format import FAST, KEY, OTHER_KEY, PASSPHRASE

# Computed with openssl alone, as docs/format.md shows:
#   openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt pass:$P
#     -kdfopt salt:cosmic-backup/v1/master -kdfopt iter:600000 PBKDF2      -> master
#   printf LABEL | openssl dgst -sha256 -mac HMAC -macopt hexkey:$MASTER    -> each value
PINNED = {
    "artifact-mac": "bba49a958d51df4c63fbf15a49d35055b2dde2f747e69aac1beb463616188bcf",
    "manifest-mac": "4b452fcfda562a497af64ad7d3cde09855f9d2319857a04c78336706f4df3566",
    "fingerprint": "0c61e5bf12ddaaa7",
}


def test_derivations_are_pinned_to_what_openssl_computes() -> None:
    assert (MASTER_SALT, MASTER_ITERATIONS) == (b"cosmic-backup/v1/master", 600_000)
    assert KEY.artifact_mac_key.hex() == PINNED["artifact-mac"]
    assert KEY.manifest_mac_key.hex() == PINNED["manifest-mac"]
    assert KEY.fingerprint == PINNED["fingerprint"]


def test_derived_values_are_independent_of_each_other_and_of_the_aes_keys() -> None:
    aes_key, iv = derive_key_iv(PASSPHRASE, b"\0" * 8, FAST)
    values = [KEY.artifact_mac_key, KEY.manifest_mac_key, bytes.fromhex(KEY.fingerprint)]
    assert len({*values, aes_key, iv}) == 5
    assert OTHER_KEY.fingerprint != KEY.fingerprint
    assert OTHER_KEY.artifact_mac_key != KEY.artifact_mac_key


def test_the_fingerprint_is_short_public_and_not_a_plain_hash() -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", KEY.fingerprint)
    assert Key(PASSPHRASE).fingerprint == KEY.fingerprint  # stable
    for name in ("sha256", "sha512", "blake2b"):  # what a careless fingerprint would be
        assert KEY.fingerprint not in hashlib.new(name, PASSPHRASE).hexdigest()
    assert KEY.fingerprint not in PASSPHRASE.decode()


def test_the_secret_never_shows_in_a_repr() -> None:
    assert PASSPHRASE.decode() not in repr(KEY)
    assert PASSPHRASE.decode()[:8] not in f"{KEY!r} {KEY!s}"
    assert KEY.fingerprint in repr(KEY)


def test_an_empty_passphrase_is_refused() -> None:
    with pytest.raises(KeyProblem, match="empty"):
        Key(b"")


def test_new_passphrases_carry_256_random_bits() -> None:
    made = {generate_passphrase() for _ in range(50)}
    assert len(made) == 50
    for passphrase in made:
        assert re.fullmatch(r"[0-9a-f]{64}", passphrase)
        assert len(bytes.fromhex(passphrase)) * 8 == 256


@pytest.mark.parametrize(
    ("text", "passphrase"),
    [
        (b"abc\n", b"abc"),
        (b"abc", b"abc"),
        (b"abc\nsecond line\n", b"abc"),
        (b"abc\r\n", b"abc\r"),  # as openssl -pass file: reads it (test_openssl_compat)
        (b" spaced out \n", b" spaced out "),
        (b"\nabc\n", b""),
    ],
)
def test_the_passphrase_is_the_first_line_as_openssl_reads_it(
    text: bytes, passphrase: bytes
) -> None:
    assert passphrase_from_text(text) == passphrase
