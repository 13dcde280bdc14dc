"""The chunk store's sealed objects and the data key's wrap (docs/format.md, "The chunk
store"): pinned derivations, both directions against the real openssl and gunzip, and
damaged input refused before anything is decrypted."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from cosmic_backup.errors import IntegrityError, KeyProblem
from cosmic_backup.format.objects import (
    MEMBER_ALIGNMENT,
    OBJECT_ITERATIONS,
    WRAP_MAC_SALT,
    DataKey,
    aligned_member,
    gunzip_member,
    mac_of,
    open_object,
    seal,
    seal_object,
    unwrap_data_key,
    wrap_data_key,
    wrap_mac_key,
)
from tests.unit.format import FAST, KEY, OTHER_KEY, enc_options, openssl, write_key_file

DOCS = Path(__file__).resolve().parents[3] / "docs" / "format.md"
PINNED = DataKey(bytes(range(32)))
TEXT = b"cosmic-backup chunk list 2\nbackup files-20261124T020000Z\n" * 300


def test_derivations_are_pinned_and_match_openssl_hmac() -> None:
    # Pinned: a change here changes every chunk id and MAC of every existing store.
    assert PINNED.fingerprint == "5ab8c392c2c54035"
    pack_mac = "d4619e23edd4ff6f873437a36d7e6537e1f1d1911b346a9f87ec8a68b77550aa"
    assert PINNED.derive("pack-mac").hex() == pack_mac
    chunk_id = "5a5b5aac02b0bed515250059341c11a1c35d52c43de7774a9e47579bca3b55d0"
    assert PINNED.chunk_id(b"abc").hex() == chunk_id
    # ... and they are what the recovery script computes with openssl dgst.
    hexkey = PINNED.passphrase.decode()
    by_openssl = openssl(
        "dgst", "-sha256", "-mac", "HMAC", "-macopt", f"hexkey:{hexkey}", stdin=b"pack-mac"
    )
    assert by_openssl.decode().split("= ")[-1].strip() == pack_mac


def test_wrap_mac_key_is_what_openssl_enc_prints_without_the_passphrase_on_argv(
    tmp_path: Path,
) -> None:
    assert wrap_mac_key(KEY, FAST).hex() == (
        "666426e6dbd6c6df37618aea027e4c4cf1e99470d020d48cac6dd2922454bf90"
    )
    key_file = write_key_file(tmp_path)
    printed = openssl(
        "enc", *enc_options(FAST), "-pass", f"file:{key_file}", "-S", WRAP_MAC_SALT.hex(), "-P"
    ).decode()
    assert f"key={wrap_mac_key(KEY, FAST).hex().upper()}" in printed.replace(" ", "")


def test_object_opens_with_openssl_and_gunzip_and_with_us(tmp_path: Path) -> None:
    data_key = DataKey.generate()
    stored, mac = seal_object(TEXT, data_key, "list-mac")
    assert stored.startswith(b"Salted__")
    assert open_object(stored, data_key, "list-mac", mac) == TEXT
    key_file = tmp_path / "datakey"
    key_file.write_bytes(data_key.line)
    decrypted = openssl(
        "enc", "-d", *enc_options(OBJECT_ITERATIONS), "-pass", f"file:{key_file}", stdin=stored
    )
    plain = subprocess.run(["gunzip"], input=decrypted, capture_output=True, check=True)
    assert plain.stdout == TEXT


def test_openssl_sealed_object_opens_with_us(tmp_path: Path) -> None:
    data_key = DataKey.generate()
    key_file = tmp_path / "datakey"
    key_file.write_bytes(data_key.line)
    member = subprocess.run(["gzip", "-c"], input=TEXT, capture_output=True, check=True).stdout
    stored = openssl(
        "enc", *enc_options(OBJECT_ITERATIONS), "-pass", f"file:{key_file}", stdin=member
    )
    mac = mac_of(stored, data_key.derive("index-mac"))
    assert open_object(stored, data_key, "index-mac", mac) == TEXT


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-16],  # truncated by a block
        lambda b: b[:-1],  # truncated by a byte
        lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:],  # one bit flipped
        lambda b: b + b"\0" * 16,  # a block appended
    ],
    ids=["minus-a-block", "minus-a-byte", "bit-flipped", "block-appended"],
)
def test_damaged_object_is_refused_before_decryption(damage) -> None:
    data_key = DataKey.generate()
    stored, mac = seal_object(TEXT, data_key, "list-mac")
    with pytest.raises(IntegrityError, match="MAC mismatch"):
        open_object(damage(stored), data_key, "list-mac", mac)


def test_an_object_of_one_kind_is_refused_as_another() -> None:
    data_key = DataKey.generate()
    stored, mac = seal_object(TEXT, data_key, "pack-mac")
    with pytest.raises(IntegrityError):
        open_object(stored, data_key, "index-mac", mac)


def test_wrap_round_trip_and_openssl_unwraps_it_to_a_usable_key_file(tmp_path: Path) -> None:
    data_key = DataKey.generate()
    stored, mac = wrap_data_key(data_key, KEY, FAST)
    assert unwrap_data_key(stored, mac, KEY, FAST).passphrase == data_key.passphrase
    key_file = write_key_file(tmp_path)
    unwrapped = openssl("enc", "-d", *enc_options(FAST), "-pass", f"file:{key_file}", stdin=stored)
    assert unwrapped == data_key.line  # openssl -pass file: reads it as it is


def test_wrap_with_another_key_or_damaged_is_refused_in_one_sentence() -> None:
    data_key = DataKey.generate()
    stored, mac = wrap_data_key(data_key, KEY, FAST)
    with pytest.raises(KeyProblem, match="another key"):
        unwrap_data_key(stored, mac, OTHER_KEY, FAST)
    with pytest.raises(KeyProblem, match="damaged"):
        unwrap_data_key(stored[:-16], mac, KEY, FAST)
    with pytest.raises(KeyProblem, match="64 hex digits"):
        DataKey.from_line(b"not a key\n")


def test_data_key_never_shows_its_secret() -> None:
    assert PINNED.passphrase.decode() not in repr(PINNED)
    assert PINNED.fingerprint in repr(PINNED)


def documented_block(marker: str) -> str:
    """The shell block of docs/format.md that contains `marker`."""
    blocks = re.findall(r"```sh\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    return next(block for block in blocks if marker in block)


def test_documented_wrap_mac_key_command_prints_our_key(tmp_path: Path) -> None:
    write_key_file(tmp_path)  # the block runs from the project root, beside .backup_key
    env = {"PATH": os.environ["PATH"], "WRAP_N": str(FAST)}
    printed = subprocess.run(
        ["sh", "-c", documented_block("-S 6362777261707632")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        check=True,
    )
    assert printed.stdout.decode().strip().lower() == wrap_mac_key(KEY, FAST).hex()


def test_pack_members_are_aligned_and_cut_out_by_the_documented_dd(tmp_path: Path) -> None:
    sizes = [0, 1, 5, 63, 64, 4095, 70_000, 1_048_576, 123_457]  # empty to a MiB and odd
    chunks = [os.urandom(size // 2) + b"row\t" * (size // 8) for size in sizes]
    members = [aligned_member(chunk) for chunk in chunks]
    assert all(len(member) % MEMBER_ALIGNMENT == 0 for member in members)
    assert [gunzip_member(member) for member in members] == chunks
    data_key = DataKey.generate()
    stored, _ = seal(
        b"".join(members), data_key.passphrase, OBJECT_ITERATIONS, data_key.derive("pack-mac")
    )
    key_file = tmp_path / "datakey"
    key_file.write_bytes(data_key.line)
    (tmp_path / "pack").write_bytes(
        openssl(
            "enc", "-d", *enc_options(OBJECT_ITERATIONS), "-pass", f"file:{key_file}", stdin=stored
        )
    )
    whole = subprocess.run(
        ["gunzip"], input=(tmp_path / "pack").read_bytes(), capture_output=True, check=True
    )
    assert whole.stdout == b"".join(chunks)  # gunzip of the whole pack: every chunk in order
    offset = 0
    for chunk, member in zip(chunks, members, strict=True):
        env = {
            "PATH": os.environ["PATH"],
            "T": str(tmp_path),
            "OFF": str(offset),
            "LEN": str(len(member)),
        }
        cut = subprocess.run(
            ["sh", "-c", documented_block("dd bs=64")], env=env, capture_output=True, check=True
        )
        assert cut.stdout == chunk
        offset += len(member)
