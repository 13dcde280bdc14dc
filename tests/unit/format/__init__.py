"""Shared pieces of the format tests: one key (its 600,000-iteration master secret is
derived once per process and cached), sealing and unsealing helpers, and the real openssl.

Artifacts here use a low iteration count (`FAST`): the format takes the count as a
parameter and records it. One test in test_openssl_compat.py runs at the real minimum.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
from collections.abc import Iterable
from pathlib import Path

from cosmic_backup.format.keys import Key
from cosmic_backup.format.pipeline import (
    SealedArtifact,
    SealingWriter,
    UnsealingReader,
    compute_mac,
    open_verified,
)

FAST = 1000
PASSPHRASE = b"4f1c0e2b9a7d6c5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e"
KEY = Key(PASSPHRASE)
OTHER_KEY = Key(b"another passphrase entirely")


def seal(
    payload: bytes,
    *,
    key: Key = KEY,
    iterations: int = FAST,
    write_sizes: Iterable[int] = (65536,),
) -> tuple[bytes, SealedArtifact]:
    """Seal `payload` into memory, written in pieces of the given sizes (cycled)."""
    sizes = list(write_sizes)
    sink = io.BytesIO()
    writer = SealingWriter(sink, key, iterations)
    start, turn = 0, 0
    while start < len(payload):
        size = sizes[turn % len(sizes)]
        writer.write(payload[start : start + size])
        start, turn = start + size, turn + 1
    writer.close()
    assert writer.result is not None
    return sink.getvalue(), writer.result


def open_sealed(stored: bytes, sealed: SealedArtifact, *, key: Key = KEY) -> UnsealingReader:
    """`open_verified` checking everything a manifest records, as restore does."""
    return open_verified(
        io.BytesIO(stored),
        key,
        expected_mac=sealed.mac,
        iterations=sealed.iterations,
        expected_stored_size=sealed.stored_size,
        expected_sha256=sealed.plaintext_sha256,
        expected_plaintext_size=sealed.plaintext_size,
    )


def unseal(stored: bytes, sealed: SealedArtifact, *, key: Key = KEY) -> bytes:
    return open_sealed(stored, sealed, key=key).read()


def recorded_for(stored: bytes, payload: bytes, iterations: int) -> SealedArtifact:
    """What a manifest would record of an artifact someone else (openssl) encrypted: the
    MAC is ours alone, so it is computed here."""
    mac, stored_size = compute_mac(io.BytesIO(stored), KEY)
    sha256 = hashlib.sha256(payload).hexdigest()
    return SealedArtifact(len(payload), sha256, stored_size, mac, iterations)


def enc_options(iterations: int) -> list[str]:
    """The openssl options that describe our cipher, as docs/format.md gives them."""
    return ["-aes-256-cbc", "-pbkdf2", "-iter", str(iterations), "-md", "sha256"]


def openssl(*args: str, stdin: bytes | None = None) -> bytes:
    """Run the real openssl; fail the test with its stderr if it fails."""
    result = subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def write_key_file(folder: Path, content: bytes = PASSPHRASE + b"\n") -> Path:
    """A private key file, as `openssl enc -pass file:` and `read_key_file` read it."""
    path = folder / ".backup_key"
    path.write_bytes(content)
    path.chmod(0o600)
    return path
