"""Reading an artifact: the file's AES key is derived while the MAC pass runs."""

from __future__ import annotations

import hashlib
import io
import threading

import pytest

from cosmic_backup.errors import IntegrityError
from cosmic_backup.format import pipeline
from cosmic_backup.format.keys import Key
from cosmic_backup.format.pipeline import SealingWriter, open_verified

ITERATIONS = 1000
KEY = Key(b"a passphrase of some length for the tests")


def sealed(plaintext: bytes) -> tuple[bytes, pipeline.SealedArtifact]:
    sink = io.BytesIO()
    with SealingWriter(sink, KEY, ITERATIONS) as writer:
        writer.write(plaintext)
    assert writer.result is not None
    return sink.getvalue(), writer.result


def test_the_file_key_is_derived_in_a_thread_started_before_the_first_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data, result = sealed(b"row\n" * 100_000)
    threads: list[str] = []
    real = pipeline.derive_key_iv

    def spy(passphrase: bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
        threads.append(threading.current_thread().name)
        return real(passphrase, salt, iterations)

    monkeypatch.setattr(pipeline, "derive_key_iv", spy)
    reader = open_verified(
        io.BytesIO(data),
        KEY,
        expected_mac=result.mac,
        iterations=ITERATIONS,
        expected_stored_size=result.stored_size,
        expected_sha256=result.plaintext_sha256,
        expected_plaintext_size=result.plaintext_size,
    )
    assert len(threads) == 1 and threads[0] != threading.main_thread().name
    plaintext = io.BufferedReader(reader).read()
    assert hashlib.sha256(plaintext).hexdigest() == result.plaintext_sha256
    assert len(threads) == 1  # the first read took the thread's result


def test_a_damaged_header_is_still_a_mac_failure_first() -> None:
    data, result = sealed(b"some text\n" * 1000)
    damaged = b"Xalted__" + data[8:]
    with pytest.raises(IntegrityError, match="MAC mismatch"):
        open_verified(io.BytesIO(damaged), KEY, expected_mac=result.mac, iterations=ITERATIONS)


def test_small_reads_hand_out_each_chunk_in_order() -> None:
    text = bytes(range(256)) * 20_000
    data, result = sealed(text)
    reader = open_verified(
        io.BytesIO(data),
        KEY,
        expected_mac=result.mac,
        iterations=ITERATIONS,
        expected_sha256=result.plaintext_sha256,
        expected_plaintext_size=result.plaintext_size,
    )
    pieces = []
    while piece := reader.read(7777):
        pieces.append(piece)
    assert b"".join(pieces) == text
