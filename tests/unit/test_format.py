"""The artifact format: openssl compatibility both ways, round trips, tamper detection.

The format functions take the iteration count as a parameter, so most tests use a low
count for speed; `test_real_minimum_iterations_with_openssl` uses the real minimum.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cosmic_backup.errors import IntegrityError
from cosmic_backup.format.cipher import HEADER_LEN, derive_key_iv
from cosmic_backup.format.keys import Key
from cosmic_backup.format.pipeline import CHUNK_SIZE, SealingWriter, compute_mac, open_verified
from cosmic_backup.settings import MIN_KDF_ITERATIONS

FAST = 1000
PASSPHRASE = b"4f1c0e2b9a7d6c5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e"
KEY = Key(PASSPHRASE)
OTHER_KEY = Key(b"another passphrase entirely")


def seal(payload: bytes, iterations: int = FAST, key: Key = KEY, write_size: int = 65536):
    sink = io.BytesIO()
    writer = SealingWriter(sink, key, iterations)
    for start in range(0, len(payload), write_size):
        writer.write(payload[start : start + write_size])
    writer.close()
    assert writer.result is not None
    return sink.getvalue(), writer.result


def unseal(stored: bytes, result, key: Key = KEY, iterations: int = FAST) -> bytes:
    reader = open_verified(
        io.BytesIO(stored),
        key,
        expected_mac=result.mac,
        iterations=iterations,
        expected_stored_size=result.stored_size,
        expected_sha256=result.plaintext_sha256,
        expected_plaintext_size=result.plaintext_size,
    )
    return reader.read()


def openssl(*args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=True).stdout


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "backup_key"
    path.write_bytes(PASSPHRASE + b"\n")
    return path


# -- openssl compatibility ---------------------------------------------------------------
def test_our_artifact_decrypts_with_openssl_and_gunzip(key_file: Path, tmp_path: Path) -> None:
    payload = b"COPY public.users (id, name) FROM stdin;\n" + os.urandom(3000) * 3
    stored, _ = seal(payload)
    artifact = tmp_path / "a.gz.enc"
    artifact.write_bytes(stored)
    command = (
        f"openssl enc -d -aes-256-cbc -pbkdf2 -iter {FAST} -md sha256 "
        f"-pass file:{key_file} -in {artifact} | gunzip"
    )
    out = subprocess.run(command, shell=True, capture_output=True, check=True).stdout  # noqa: S602
    assert out == payload


def test_openssl_output_decrypts_with_our_reader(key_file: Path) -> None:
    payload = os.urandom(100_000) + b"tail"
    encrypted = openssl(
        "enc",
        "-aes-256-cbc",
        "-pbkdf2",
        "-iter",
        str(FAST),
        "-md",
        "sha256",
        "-pass",
        f"file:{key_file}",
        stdin=gzip.compress(payload),
    )
    mac, size = compute_mac(io.BytesIO(encrypted), KEY)
    reader = open_verified(
        io.BytesIO(encrypted),
        KEY,
        expected_mac=mac,
        iterations=FAST,
        expected_stored_size=size,
        expected_sha256=hashlib.sha256(payload).hexdigest(),
    )
    assert reader.read() == payload


def test_real_minimum_iterations_with_openssl(key_file: Path, tmp_path: Path) -> None:
    payload = b"x" * 5000
    stored, result = seal(payload, iterations=MIN_KDF_ITERATIONS)
    assert result.iterations == MIN_KDF_ITERATIONS
    artifact = tmp_path / "a"
    artifact.write_bytes(stored)
    plain = openssl(
        "enc",
        "-d",
        "-aes-256-cbc",
        "-pbkdf2",
        "-iter",
        str(MIN_KDF_ITERATIONS),
        "-md",
        "sha256",
        "-pass",
        f"file:{key_file}",
        "-in",
        str(artifact),
    )
    assert gzip.decompress(plain) == payload


def test_key_and_iv_match_openssl(key_file: Path) -> None:
    salt = bytes.fromhex("0102030405060708")
    printed = openssl(
        "enc",
        "-aes-256-cbc",
        "-pbkdf2",
        "-iter",
        str(FAST),
        "-md",
        "sha256",
        "-pass",
        f"file:{key_file}",
        "-S",
        salt.hex(),
        "-P",
    ).decode()
    fields = {}
    for line in printed.splitlines():
        name, _, value = line.partition("=")
        fields[name.strip()] = value.strip().lower()
    key, iv = derive_key_iv(PASSPHRASE, salt, FAST)
    assert (fields["key"], fields["iv"]) == (key.hex(), iv.hex())


def test_pinned_vector_from_openssl() -> None:
    """`printf 'abc\\n' > k; openssl enc -aes-256-cbc -pbkdf2 -iter 1000 -md sha256
    -pass file:k -S 0102030405060708 -P`, pinned so a change is caught without openssl."""
    key, iv = derive_key_iv(b"abc", bytes.fromhex("0102030405060708"), 1000)
    assert key.hex() == "d8cea574f02d114ab12c8f4bcaffd28958f4f7a225b307f0591eee43d106be21"
    assert iv.hex() == "a3e3c0b020e1ea866188a6ac8b82e076"


# -- round trips --------------------------------------------------------------------------
SPECIAL_SIZES = sorted({0, 1, 15, 16, 17, 31, 32, 33, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1})


@pytest.mark.parametrize("size", SPECIAL_SIZES)
def test_round_trip_at_block_and_chunk_boundaries(size: int) -> None:
    payload = os.urandom(size)
    stored, result = seal(payload)
    assert result.plaintext_size == size
    assert result.stored_size == len(stored)
    assert (len(stored) - HEADER_LEN) % 16 == 0
    assert unseal(stored, result) == payload


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.one_of(
        st.binary(max_size=5000),
        st.integers(0, 3).flatmap(lambda n: st.just(b"row,text,123\n" * (n * 40000))),
    ),
    write_size=st.integers(1, 70000),
)
def test_round_trip_random_payloads_and_write_sizes(payload: bytes, write_size: int) -> None:
    stored, result = seal(payload, write_size=write_size)
    assert unseal(stored, result) == payload


def test_highly_compressible_payload_is_read_back_in_bounded_pieces() -> None:
    payload = bytes(64 * 1024 * 1024)  # zeros compress ~1000:1: one stored chunk = 1 GB out
    stored, result = seal(payload, write_size=CHUNK_SIZE)
    reader = open_verified(io.BytesIO(stored), KEY, expected_mac=result.mac, iterations=FAST)
    largest = 0
    total = 0
    buffer = bytearray(4 * CHUNK_SIZE)
    while count := reader.readinto(buffer):
        total += count
        largest = max(largest, len(reader._buffer) + count)  # what the reader held at once
    assert total == len(payload)
    assert largest <= 2 * CHUNK_SIZE


# -- tampering, truncation, wrong key -------------------------------------------------------
def test_every_single_byte_change_is_detected_before_any_output() -> None:
    payload = b"small but important\n" * 5
    stored, result = seal(payload)
    for index in range(len(stored)):
        for flip in (0x01, 0x80):
            changed = bytearray(stored)
            changed[index] ^= flip
            with pytest.raises(IntegrityError):
                unseal(bytes(changed), result)  # raises in open_verified: nothing is read


def test_every_truncation_is_detected() -> None:
    stored, result = seal(b"payload " * 100)
    for length in range(len(stored)):
        with pytest.raises(IntegrityError):
            unseal(stored[:length], result)
    with pytest.raises(IntegrityError):  # and an appended byte
        unseal(stored + b"\0", result)


def test_truncation_is_detected_even_without_the_recorded_size() -> None:
    stored, result = seal(b"payload " * 100)
    truncated = stored[:-16]
    with pytest.raises(IntegrityError, match="MAC"):
        open_verified(io.BytesIO(truncated), KEY, expected_mac=result.mac, iterations=FAST)


def test_a_wrong_key_fails_the_mac_check_and_fingerprints_differ() -> None:
    stored, result = seal(b"data")
    with pytest.raises(IntegrityError):
        unseal(stored, result, key=OTHER_KEY)
    assert KEY.fingerprint != OTHER_KEY.fingerprint
    assert len(KEY.fingerprint) == 16
    assert KEY.fingerprint not in PASSPHRASE.decode()
    assert KEY.fingerprint != hashlib.sha256(PASSPHRASE).hexdigest()[:16]  # not a plain hash


def test_a_swapped_sha256_is_caught_at_the_end() -> None:
    stored, result = seal(b"abc" * 1000)
    reader = open_verified(
        io.BytesIO(stored), KEY, expected_mac=result.mac, iterations=FAST, expected_sha256="0" * 64
    )
    with pytest.raises(IntegrityError, match="SHA-256"):
        reader.read()


def test_derived_keys_are_independent() -> None:
    keys = {KEY.artifact_mac_key, KEY.manifest_mac_key, bytes.fromhex(KEY.fingerprint)}
    assert len(keys) == 3
    aes_key, _ = derive_key_iv(PASSPHRASE, b"\0" * 8, FAST)
    assert aes_key not in keys
    assert "4f1c0e" not in repr(KEY)
