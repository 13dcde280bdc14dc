"""Incompressible data goes into the gzip stream as deflate stored blocks, compressible data
stays compressed, and the mix is still one gzip stream that gunzip, Python's gzip, our
own reader and the real ``openssl enc -d | gunzip | tar -x`` recovery read."""

from __future__ import annotations

import gzip
import io
import random
import subprocess
import tarfile
from pathlib import Path

import pytest

from cosmic_backup.format.compression import (
    BLOCK,
    DEFAULT_LEVEL,
    GZIP_WBITS,
    AdaptiveDeflate,
    Decompressor,
    _zlib,
    compressor,
)
from tests.unit.format import FAST, enc_options, seal, unseal, write_key_file

MIB = 1024 * 1024
WORDS = [b"orbit", b"nebula", b"comet", b"invoice", b"avatar", b"profile"]


def text(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return b" ".join(rng.choice(WORDS) for _ in range(size // 5))[:size]


def noise(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def mixed(parts: int, size: int = MIB // 4) -> bytes:
    """Uploads-like: text and random (photo-like) parts in turn, of a size that does not
    line up with the compressor's blocks."""
    size += 777
    return b"".join(noise(size, n) if n % 2 else text(size, n) for n in range(parts))


def gzipped(payload: bytes, write_size: int) -> bytes:
    packer = compressor(threaded=True)
    out = [packer.compress(payload[i : i + write_size]) for i in range(0, len(payload), write_size)]
    return b"".join([*out, packer.flush()])


def ours(stream: bytes, read_size: int = 4099) -> bytes:
    reader, out = Decompressor(), bytearray()
    for start in range(0, len(stream), 5003):
        reader.feed(stream[start : start + 5003])
        while piece := reader.read(read_size):
            out += piece
    reader.finish()
    return bytes(out)


@pytest.mark.parametrize("write_size", [MIB, 10240, 7, BLOCK + 1])
def test_random_bytes_are_stored_as_they_are_and_read_back_by_every_reader(
    write_size: int,
) -> None:
    payload = mixed(6)
    stream = gzipped(payload, write_size)
    # Stored blocks carry the bytes verbatim: a deflated copy would never contain them.
    for part in (1, 3, 5):
        random_part = noise(MIB // 4 + 777, part)
        assert random_part[len(random_part) // 2 :][:4096] in stream
    assert gzip.decompress(stream) == payload
    assert ours(stream) == payload
    gunzip = subprocess.run(["gunzip", "-c"], input=stream, capture_output=True, check=True)
    assert gunzip.stdout == payload


def test_text_compresses_as_well_as_before_and_random_costs_no_more_than_stored() -> None:
    for payload, bound in ((text(2 * MIB, 7), 1.01), (noise(2 * MIB, 7), None)):
        before = len(_zlib.compress(payload, DEFAULT_LEVEL, GZIP_WBITS))
        now = len(gzipped(payload, MIB))
        if bound is not None:
            assert now <= before * bound
        else:  # 5 bytes per 64 KiB stored block, plus gzip's 18
            assert now <= len(payload) + 5 * (len(payload) // 65535 + 2) + 18 + 2 * BLOCK // 100
    assert len(gzipped(mixed(8), MIB)) < len(_zlib.compress(mixed(8), DEFAULT_LEVEL, GZIP_WBITS))


def test_text_after_random_is_compressed_again() -> None:
    payload = noise(MIB, 1) + text(MIB, 2)
    stream = gzipped(payload, MIB)
    text_alone = len(_zlib.compress(text(MIB, 2), DEFAULT_LEVEL, GZIP_WBITS))
    assert len(stream) < MIB + text_alone * 1.5  # not stored: that would be 2 MiB
    assert gzip.decompress(stream) == payload


@pytest.mark.parametrize(
    "payload", [b"", b"x", noise(BLOCK, 3), noise(BLOCK + 1, 4), text(BLOCK - 1, 5)]
)
def test_edges_stay_one_valid_gzip_stream(payload: bytes) -> None:
    for packer in (compressor(threaded=True), compressor(threaded=False), AdaptiveDeflate()):
        stream = packer.compress(payload) + packer.flush()
        assert gzip.decompress(stream) == payload
        assert ours(stream) == payload


def test_a_mixed_artifact_is_recovered_by_hand_with_openssl_gunzip_and_tar(
    tmp_path: Path,
) -> None:
    """docs/format.md's recovery, on a files archive whose stream mixes both kinds."""
    members = {"uploads/photo.jpg": noise(MIB + 3, 9), "uploads/notes.txt": text(MIB, 10)}
    members["uploads/more.jpg"] = noise(300_000, 11)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    payload = archive.getvalue()
    stored, sealed = seal(payload, write_sizes=[MIB, 10240, 3])
    assert noise(MIB + 3, 9)[4096:8192] not in stored  # encrypted: nothing shows through
    assert unseal(stored, sealed) == payload
    key_file = write_key_file(tmp_path)
    artifact = tmp_path / "files-20261129T120000Z.tar.gz.enc"
    artifact.write_bytes(stored)
    (tmp_path / "out").mkdir()
    options = " ".join(enc_options(FAST))
    script = (
        f"openssl enc -d {options} -pass file:{key_file} -in {artifact} "
        f"| gunzip | tar -x -C {tmp_path / 'out'}"
    )
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    for name, data in members.items():
        assert (tmp_path / "out" / name).read_bytes() == data
