"""The artifact against the real openssl binary, both ways, and docs/format.md's recovery
commands run exactly as written."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cosmic_backup.format.cipher import Decryptor, Encryptor, derive_key_iv
from cosmic_backup.format.compression import Decompressor
from cosmic_backup.format.keyfile import read_key_file
from cosmic_backup.format.keys import Key
from cosmic_backup.format.manifest import Manifest, dump_manifest, kdf_description
from cosmic_backup.format.pipeline import CHUNK_SIZE, SealingWriter
from cosmic_backup.settings import MIN_KDF_ITERATIONS
from tests.unit.format import (
    FAST,
    KEY,
    PASSPHRASE,
    enc_options,
    openssl,
    recorded_for,
    seal,
    unseal,
    write_key_file,
)

DOCS = Path(__file__).resolve().parents[3] / "docs" / "format.md"
DOC_ID = "config-20261124T101500Z"  # the backup the documented commands name
ROW = b'42\tnebula_4711\t2026-11-24 02:00:00+00\t{"score": 0.25}\n'


def dump_like(size: int) -> bytes:
    return (ROW * (size // len(ROW) + 1))[:size]


def shell(script: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """Run a POSIX shell script with every failure in a pipeline counted."""
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=cwd, capture_output=True, check=False
    )


def openssl_decrypt_and_gunzip(artifact: Path, key_file: Path, iterations: int) -> bytes:
    options = " ".join(enc_options(iterations))
    result = shell(
        f"openssl enc -d {options} -pass file:{key_file} -in {artifact} | gunzip",
        cwd=artifact.parent,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return write_key_file(tmp_path)


# -- ours -> openssl ----------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4096, CHUNK_SIZE + 17])
def test_our_artifact_decrypts_with_openssl_and_gunzip(
    size: int, key_file: Path, tmp_path: Path
) -> None:
    payload = dump_like(size)
    stored, _ = seal(payload, write_sizes=[1000, 7, 65536])
    artifact = tmp_path / "a.dump.gz.enc"
    artifact.write_bytes(stored)
    assert openssl_decrypt_and_gunzip(artifact, key_file, FAST) == payload


@pytest.fixture(scope="module")
def shared_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_key_file(tmp_path_factory.mktemp("key"))


@settings(max_examples=25, deadline=None)
@given(plaintext=st.binary(max_size=80), salt=st.binary(min_size=8, max_size=8))
def test_encryptor_output_is_byte_for_byte_openssl_enc(
    shared_key_file: Path, plaintext: bytes, salt: bytes
) -> None:
    encryptor = Encryptor(PASSPHRASE, FAST, salt=salt)
    ours = encryptor.update(plaintext) + encryptor.finalize()
    theirs = openssl(
        "enc",
        *enc_options(FAST),
        "-pass",
        f"file:{shared_key_file}",
        "-S",
        salt.hex(),
        stdin=plaintext,
    )
    # Given a salt with -S, openssl writes the ciphertext alone, without its header.
    assert ours == b"Salted__" + salt + theirs


def test_key_and_iv_match_openssl_printing_them(key_file: Path) -> None:
    salt = bytes.fromhex("0102030405060708")
    printed = openssl(
        "enc", *enc_options(FAST), "-pass", f"file:{key_file}", "-S", salt.hex(), "-P"
    )
    fields = dict(
        (name.strip(), value.strip().lower())
        for name, _, value in (line.partition("=") for line in printed.decode().splitlines())
    )
    key, iv = derive_key_iv(PASSPHRASE, salt, FAST)
    assert (fields["salt"], fields["key"], fields["iv"]) == (salt.hex(), key.hex(), iv.hex())


def test_a_key_file_with_windows_line_ends_means_what_openssl_reads(tmp_path: Path) -> None:
    """openssl keeps the \\r of a CRLF line as part of the passphrase: so must we."""
    key_file = write_key_file(tmp_path, PASSPHRASE + b"\r\n")
    key, _ = read_key_file(key_file)
    stored, _ = seal(b"windows", key=key)
    artifact = tmp_path / "a.gz.enc"
    artifact.write_bytes(stored)
    assert openssl_decrypt_and_gunzip(artifact, key_file, FAST) == b"windows"


# -- openssl -> ours ----------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 17, 2 * CHUNK_SIZE + 5])
def test_gzip_and_openssl_output_reads_back_through_open_verified(
    size: int, key_file: Path, tmp_path: Path
) -> None:
    payload = dump_like(size)
    (tmp_path / "plain").write_bytes(payload)
    options = " ".join(enc_options(FAST))
    made = shell(
        f"gzip -6 -c plain | openssl enc {options} -pass file:{key_file} -out enc", tmp_path
    )
    assert made.returncode == 0, made.stderr.decode()
    encrypted = (tmp_path / "enc").read_bytes()
    assert unseal(encrypted, recorded_for(encrypted, payload, FAST)) == payload


def test_openssl_output_through_the_bare_decryptor_and_decompressor(key_file: Path) -> None:
    payload = dump_like(300_000)
    gzipped = subprocess.run(["gzip", "-c"], input=payload, capture_output=True, check=True).stdout
    encrypted = openssl("enc", *enc_options(FAST), "-pass", f"file:{key_file}", stdin=gzipped)
    decryptor, decompressor, out = Decryptor(PASSPHRASE, FAST), Decompressor(), bytearray()
    for start in range(0, len(encrypted), 4099):  # pieces that split the header and blocks
        decompressor.feed(decryptor.update(encrypted[start : start + 4099]))
        while piece := decompressor.read(1000):
            out += piece
    decompressor.feed(decryptor.finalize())
    while piece := decompressor.read(1000):
        out += piece
    decompressor.finish()
    assert bytes(out) == payload


# -- the real minimum, and docs/format.md as written --------------------------------------
def doc_block(heading: str) -> str:
    """The first ```sh block under the docs/format.md heading `heading`."""
    _, found, rest = DOCS.read_text().partition(f"### {heading}\n")
    assert found, f"docs/format.md has no heading {heading!r}"
    block = re.search(r"```sh\n(.*?)```", rest, re.DOTALL)
    assert block is not None, f"no sh block under {heading!r}"
    return block.group(1)


CONFIG_TAR_MEMBERS = {"files/.env": b"SECRET_KEY_BASE=abc\n", "environment.env": b"A=1\n"}


def config_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in CONFIG_TAR_MEMBERS.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture(scope="module")
def doc_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project root holding the backup the documented commands name, sealed at the real
    minimum iteration count (this module's only slow derivation)."""
    root = tmp_path_factory.mktemp("project")
    write_key_file(root)
    folder = root / "tmp" / "backups" / "config"
    folder.mkdir(parents=True)
    payload = config_tar()
    stored, sealed = seal(payload, iterations=MIN_KDF_ITERATIONS)
    (folder / f"{DOC_ID}.tar.gz.enc").write_bytes(stored)
    manifest = Manifest(
        DOC_ID,
        "config",
        "ok",
        "full",
        ["manual"],
        "2026-11-24T10:15:00.000000Z",
        "2026-11-24T10:15:01.000000Z",
        "0.1.0",
        artifact=f"{DOC_ID}.tar.gz.enc",
        plaintext_size=sealed.plaintext_size,
        stored_size=sealed.stored_size,
        plaintext_sha256=sealed.plaintext_sha256,
        artifact_mac=sealed.mac,
        kdf=kdf_description(MIN_KDF_ITERATIONS),
        key_fingerprint=KEY.fingerprint,
    )
    (folder / f"{DOC_ID}.manifest.json").write_bytes(dump_manifest(manifest, KEY))
    yield root


def test_the_documented_recovery_works_at_the_real_minimum(doc_project: Path) -> None:
    assert f"N={MIN_KDF_ITERATIONS}\n" in doc_block("Decrypting")
    result = shell(doc_block("Decrypting"), doc_project)
    assert result.returncode == 0, result.stderr.decode()
    assert (doc_project / "config.tar").read_bytes() == config_tar()
    listing = result.stdout.decode()
    assert all(name in listing for name in CONFIG_TAR_MEMBERS)


def test_the_documented_mac_and_fingerprint_checks_agree_with_ours(doc_project: Path) -> None:
    result = shell(
        doc_block("Checking the MAC") + doc_block("Which key made this backup"), doc_project
    )
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "MAC OK"
    assert lines[1] == KEY.fingerprint
    assert f'"key_fingerprint": "{KEY.fingerprint}"' in lines[2]


def test_the_documented_mac_check_reports_a_changed_byte(doc_project: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(doc_project, copy)
    artifact = copy / "tmp" / "backups" / "config" / f"{DOC_ID}.tar.gz.enc"
    changed = bytearray(artifact.read_bytes())
    changed[-1] ^= 0x01
    artifact.write_bytes(bytes(changed))
    result = shell(doc_block("Checking the MAC"), copy)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().startswith("MAC MISMATCH")


def test_openssl_at_the_real_minimum_reads_back_through_ours(key_file: Path) -> None:
    payload = dump_like(5000)
    gzipped = subprocess.run(["gzip", "-c"], input=payload, capture_output=True, check=True).stdout
    encrypted = openssl(
        "enc", *enc_options(MIN_KDF_ITERATIONS), "-pass", f"file:{key_file}", stdin=gzipped
    )
    sealed = recorded_for(encrypted, payload, MIN_KDF_ITERATIONS)
    assert unseal(encrypted, sealed) == payload


def test_the_keys_are_derived_while_the_producer_starts(key_file: Path, tmp_path: Path) -> None:
    """Opening a writer does not wait for PBKDF2 (it runs in threads until the first
    write needs it), and what comes out is still exactly openssl's format."""
    iterations = 1_500_000  # about 0.8 s here: far more than opening should take
    key = Key(b"a key no other test derives, so its master secret is not cached")
    key_file.write_bytes(key.passphrase)
    began = time.perf_counter()
    with open(tmp_path / "artifact", "wb") as sink:
        writer = SealingWriter(sink, key, iterations)
        opened = time.perf_counter() - began
        writer.write(b"written after the derivation")
        writer.close()
    derived = time.perf_counter() - began
    assert opened < derived / 4, (opened, derived)
    artifact = tmp_path / "artifact"
    assert openssl_decrypt_and_gunzip(artifact, key_file, iterations) == (
        b"written after the derivation"
    )
