"""The openssl-format cipher on its own: pinned derivations, the layout, and its refusals.

The live comparisons with the openssl binary are in test_openssl_compat.py; the vectors
pinned here were printed by it, so a change is caught even where openssl is missing.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from cosmic_backup.errors import IntegrityError
from cosmic_backup.format.cipher import (
    HEADER_LEN,
    MAGIC,
    SALT_LEN,
    Decryptor,
    Encryptor,
    decrypt_whole,
    derive_key_iv,
    read_salt,
)
from tests.unit.format import FAST, PASSPHRASE

SALT = bytes.fromhex("0102030405060708")


@pytest.mark.parametrize(
    ("passphrase", "iterations", "key_hex", "iv_hex"),
    [
        # printf 'abc\n' > k; openssl enc -aes-256-cbc -pbkdf2 -iter 1000 -md sha256
        #   -pass file:k -S 0102030405060708 -P
        (
            b"abc",
            1000,
            "d8cea574f02d114ab12c8f4bcaffd28958f4f7a225b307f0591eee43d106be21",
            "a3e3c0b020e1ea866188a6ac8b82e076",
        ),
        # the same with 'abc\r\n' in k: openssl keeps the \r
        (
            b"abc\r",
            1000,
            "8c599e024d44ed31289897d9fd8e3cbcc8b11cffc4ccf8641761deb17f455d41",
            None,
        ),
    ],
)
def test_key_and_iv_are_pinned_to_what_openssl_printed(
    passphrase: bytes, iterations: int, key_hex: str, iv_hex: str | None
) -> None:
    key, iv = derive_key_iv(passphrase, SALT, iterations)
    assert key.hex() == key_hex
    assert iv_hex is None or iv.hex() == iv_hex


def encrypt(plaintext: bytes, salt: bytes = SALT, pieces: int = 1) -> bytes:
    encryptor = Encryptor(PASSPHRASE, FAST, salt=salt)
    step = max(1, len(plaintext) // pieces)
    out = b"".join(
        encryptor.update(plaintext[i : i + step]) for i in range(0, len(plaintext), step)
    )
    return out + encryptor.finalize()


def decrypt(stored: bytes, piece: int = 1 << 20, passphrase: bytes = PASSPHRASE) -> bytes:
    decryptor = Decryptor(passphrase, FAST)
    out = b"".join(decryptor.update(stored[i : i + piece]) for i in range(0, len(stored), piece))
    return out + decryptor.finalize()


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 31, 32, 33])
def test_layout_is_header_salt_then_padded_blocks(size: int) -> None:
    stored = encrypt(bytes(range(size)))
    assert stored[:8] == MAGIC == b"Salted__"
    assert read_salt(stored[:HEADER_LEN]) == SALT and SALT_LEN == 8
    # PKCS#7 always pads, a whole block when the plaintext is already aligned
    assert len(stored) == HEADER_LEN + (size // 16 + 1) * 16


def test_a_fresh_random_salt_for_every_encryption() -> None:
    salts = {Encryptor(PASSPHRASE, FAST).salt for _ in range(20)}
    assert len(salts) == 20
    assert all(len(salt) == SALT_LEN for salt in salts)


@settings(max_examples=60, deadline=None)
@given(
    plaintext=st.binary(max_size=300),
    pieces=st.integers(1, 20),
    piece=st.sampled_from([1, 5, 15, 16, 17, 100, 4096]),
)
def test_round_trip_whatever_the_pieces(plaintext: bytes, pieces: int, piece: int) -> None:
    """The output does not depend on how writes are split, and reads may split anywhere,
    even inside the 16-byte header."""
    stored = encrypt(plaintext, pieces=pieces)
    assert stored == encrypt(plaintext)
    assert decrypt(stored, piece=piece) == plaintext


@pytest.mark.parametrize("stored", [b"", b"Salted_", b"Salted__1234567"])
def test_a_file_that_ends_inside_its_header_is_refused(stored: bytes) -> None:
    with pytest.raises(IntegrityError, match="ends inside its header"):
        decrypt(stored)


@pytest.mark.parametrize("header", [b"Salt3d__12345678", b"\0" * 16, b"\x1f\x8b" + bytes(14)])
def test_a_file_without_the_openssl_header_is_refused(header: bytes) -> None:
    with pytest.raises(IntegrityError, match="'Salted__' header"):
        decrypt(header + bytes(32))


@pytest.mark.parametrize("cut", [1, 15, 16, 17])
def test_a_cut_ciphertext_is_refused_at_the_end(cut: int) -> None:
    stored = encrypt(b"x" * 40)
    with pytest.raises(IntegrityError, match="truncated"):
        decrypt(stored[:-cut])


def test_a_wrong_passphrase_fails_the_padding_check() -> None:
    """Deterministic (fixed salt and plaintext). Padding catches a wrong key only by
    chance, about 255 times in 256: the pipeline's MAC is what makes it certain."""
    stored = encrypt(b"secret data")
    with pytest.raises(IntegrityError, match="another key"):
        decrypt(stored, passphrase=b"not the passphrase")


@pytest.mark.parametrize("piece", [Decryptor.STEP - 1, Decryptor.STEP + 17, 5 * Decryptor.STEP])
def test_reads_larger_than_the_decryptors_step_round_trip(piece: int) -> None:
    """A pack is decrypted in one call, in steps of its own; the steps and the block held
    back for the padding must meet exactly, wherever the reads are cut."""
    plaintext = bytes(range(256)) * (10 * Decryptor.STEP // 256) + b"tail"
    stored = encrypt(plaintext)
    assert decrypt(stored, piece=piece) == plaintext
    assert decrypt_whole(stored, PASSPHRASE, FAST) == plaintext


@pytest.mark.parametrize("pad", [0, 17, 255])
def test_a_final_block_with_impossible_padding_is_refused(pad: int) -> None:
    """The padding is checked here, not by a library unpadder: a last byte of 0 or above
    16 is refused, as is a last block whose pad bytes disagree."""
    key, iv = derive_key_iv(PASSPHRASE, SALT, FAST)
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    block = bytes(15) + bytes([pad]) if pad else bytes(16)
    stored = MAGIC + SALT + encryptor.update(b"x" * 16 + block) + encryptor.finalize()
    with pytest.raises(IntegrityError, match="another key"):
        decrypt(stored)
    uneven = (
        MAGIC
        + SALT
        + Cipher(algorithms.AES(key), modes.CBC(iv))
        .encryptor()
        .update(b"y" * 16 + bytes(13) + b"\x01\x02\x03")
    )
    with pytest.raises(IntegrityError, match="another key"):
        decrypt(uneven)
