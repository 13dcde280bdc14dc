"""The streaming pipeline: round trips at every boundary, tamper and truncation detection
before any plaintext, the second line of defence, and bounded memory."""

from __future__ import annotations

import errno
import hashlib
import io
import random
import threading
import time
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cosmic_backup.errors import IntegrityError
from cosmic_backup.format.cipher import HEADER_LEN
from cosmic_backup.format.pipeline import (
    CHUNK_SIZE,
    SealedArtifact,
    SealingWriter,
    UnsealingReader,
    compute_mac,
    open_verified,
)
from tests.unit.format import FAST, KEY, OTHER_KEY, open_sealed, seal, unseal

BLOCK = 16
# Around the AES block, and around the pipeline's read chunk (and twice it).
BOUNDARY_SIZES = sorted(
    {
        n
        for base in (0, BLOCK, 2 * BLOCK, CHUNK_SIZE, 2 * CHUNK_SIZE)
        for n in range(base - 1, base + 2)
    }
    - {-1}
)
ROW = b'1017\talpha_99\t2026-11-24 02:00:00+00\t{"score": 0.5}\t12.50\n'


def make_payload(kind: str, size: int, seed: int) -> bytes:
    """Random bytes (incompressible), dump-like rows, or zeros (1000:1): the three shapes
    that move the gzip output, and so the cipher's input, around differently."""
    if kind == "random":
        return random.Random(seed).randbytes(size)
    if kind == "rows":
        return (ROW * (size // len(ROW) + 1))[seed % len(ROW) :][:size].ljust(size, b".")
    return bytes(size)


def read_in_pieces(reader: io.RawIOBase, sizes: list[int]) -> bytes:
    out, turn = bytearray(), 0
    while piece := reader.read(sizes[turn % len(sizes)]):
        out += piece
        turn += 1
    return bytes(out)


# -- round trips ----------------------------------------------------------------------------
@pytest.mark.parametrize("size", BOUNDARY_SIZES)
def test_round_trip_at_block_and_chunk_boundaries(size: int) -> None:
    payload = make_payload("random", size, seed=size)
    stored, sealed = seal(payload, write_sizes=[CHUNK_SIZE])
    assert sealed == SealedArtifact(
        plaintext_size=size,
        plaintext_sha256=hashlib.sha256(payload).hexdigest(),
        stored_size=len(stored),
        mac=compute_mac(io.BytesIO(stored), KEY)[0],
        iterations=FAST,
    )
    assert (len(stored) - HEADER_LEN) % BLOCK == 0
    assert unseal(stored, sealed) == payload


SIZES = st.one_of(
    st.integers(0, 200),
    st.sampled_from(BOUNDARY_SIZES),
    st.integers(0, 3 * CHUNK_SIZE),
)


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["random", "rows", "zeros"]),
    size=SIZES,
    seed=st.integers(0, 2**16),
    write_sizes=st.lists(st.integers(1, CHUNK_SIZE + 17), min_size=1, max_size=5),
    read_sizes=st.lists(st.integers(1, 3 * CHUNK_SIZE), min_size=1, max_size=5),
)
def test_round_trip_of_random_payloads_in_random_write_and_read_sizes(
    kind: str, size: int, seed: int, write_sizes: list[int], read_sizes: list[int]
) -> None:
    payload = make_payload(kind, size, seed)
    stored, sealed = seal(payload, write_sizes=write_sizes)
    assert read_in_pieces(open_sealed(stored, sealed), read_sizes) == payload


@settings(max_examples=80, deadline=None)
@given(
    kind=st.sampled_from(["random", "rows", "zeros"]),
    size=st.integers(0, 5000),
    chunk_size=st.sampled_from([1, 2, 15, 16, 17, 100, 4096]),
    read_size=st.integers(1, 300),
)
def test_the_readers_own_buffer_boundaries(
    kind: str, size: int, chunk_size: int, read_size: int
) -> None:
    """A tiny reader chunk puts the chunk boundaries of reading, decrypting and
    decompressing everywhere a small payload can have them."""
    payload = make_payload(kind, size, seed=size)
    stored, sealed = seal(payload)
    reader = UnsealingReader(
        io.BytesIO(stored),
        KEY,
        FAST,
        expected_sha256=sealed.plaintext_sha256,
        expected_size=size,
        chunk_size=chunk_size,
    )
    assert read_in_pieces(reader, [read_size]) == payload


def test_writes_of_any_buffer_type_and_through_a_buffered_writer() -> None:
    payload = make_payload("rows", 100_000, seed=1)
    sink = io.BytesIO()
    raw = SealingWriter(sink, KEY, FAST)
    with io.BufferedWriter(raw, buffer_size=8192) as buffered:  # how tarfile and co. write
        buffered.write(payload[:10])
        buffered.write(bytearray(payload[10:50_000]))
        buffered.write(memoryview(payload)[50_000:])
    assert raw.result is not None
    assert unseal(sink.getvalue(), raw.result) == payload


def test_the_same_payload_seals_differently_each_time() -> None:
    first, _ = seal(b"same")
    second, _ = seal(b"same")
    assert first[:8] == second[:8] and first[8:] != second[8:]  # a new salt each time


def test_progress_is_reported_in_plaintext_bytes_both_ways() -> None:
    payload = make_payload("rows", 3 * CHUNK_SIZE + 5, seed=2)
    sink, sealed_steps, unsealed_steps = io.BytesIO(), [], []
    with SealingWriter(sink, KEY, FAST, on_progress=sealed_steps.append) as writer:
        writer.write(payload)
    assert writer.result is not None
    reader = open_verified(
        io.BytesIO(sink.getvalue()),
        KEY,
        expected_mac=writer.result.mac,
        iterations=FAST,
        on_progress=unsealed_steps.append,
    )
    reader.read()
    assert sum(sealed_steps) == sum(unsealed_steps) == len(payload)


# -- a failed or aborted write ----------------------------------------------------------------
def test_an_error_inside_the_with_block_finishes_nothing() -> None:
    sink = io.BytesIO()
    with pytest.raises(RuntimeError), SealingWriter(sink, KEY, FAST) as writer:
        writer.write(b"x" * 100_000)
        raise RuntimeError("pg_dump died")
    written = len(sink.getvalue())
    assert writer.result is None
    assert writer.write(b"late data from a buffer") == 23  # dropped, not raised
    assert len(sink.getvalue()) == written


def test_writing_after_close_is_a_programming_error() -> None:
    writer = SealingWriter(io.BytesIO(), KEY, FAST)
    writer.close()
    writer.close()  # twice is harmless
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"x")


# -- the sealing thread -------------------------------------------------------------------------
class _GatedSink(io.BytesIO):
    """A backup disk that stalls until `gate` is set, or fails from `fail_after` bytes on."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.fail_after = fail_after

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.fail_after is not None and self.tell() + len(data) > self.fail_after:
            raise OSError(errno.ENOSPC, "No space left on device")
        assert self.gate.wait(10), "the test never opened the gate"
        return super().write(data)


def test_the_producer_is_not_held_up_by_compression_or_a_slow_disk() -> None:
    """Sealing runs in a thread of its own: with the sink stalled, the caller can still
    hand over a few chunks (what pg_dump's pipe would otherwise wait for)."""
    payload = make_payload("random", 3 * CHUNK_SIZE, seed=7)
    sink = _GatedSink()
    writer = SealingWriter(sink, KEY, FAST, threaded=True)
    started = time.monotonic()
    for start in range(0, len(payload), CHUNK_SIZE):
        writer.write(payload[start : start + CHUNK_SIZE])
    assert time.monotonic() - started < 5 and sink.getvalue() == b""
    sink.gate.set()
    writer.close()
    assert writer.result is not None
    assert unseal(sink.getvalue(), writer.result) == payload


@pytest.mark.parametrize("threaded", [True, False])
def test_a_reused_buffer_is_sealed_as_it_was_when_written(threaded: bool) -> None:
    """A bytearray or memoryview may be refilled by its owner once write() returns."""
    buffer = bytearray(b"a" * (CHUNK_SIZE + 10))
    sink = io.BytesIO()
    with SealingWriter(sink, KEY, FAST, threaded=threaded) as writer:
        writer.write(buffer)
        buffer[:] = b"b" * len(buffer)
        writer.write(memoryview(buffer))
        buffer[:] = b"c" * len(buffer)
        writer.write(b"d" * 3)
    assert writer.result is not None
    expected = b"a" * (CHUNK_SIZE + 10) + b"b" * (CHUNK_SIZE + 10) + b"ddd"
    assert unseal(sink.getvalue(), writer.result) == expected


@pytest.mark.parametrize("threaded", [True, False])
def test_a_full_backup_disk_is_raised_in_the_producers_thread(threaded: bool) -> None:
    sink = _GatedSink(fail_after=CHUNK_SIZE // 2)
    sink.gate.set()
    writer = SealingWriter(sink, KEY, FAST, threaded=threaded)
    payload = make_payload("random", CHUNK_SIZE, seed=3)
    with pytest.raises(OSError, match="No space left"):
        for _ in range(20):
            writer.write(payload)
        writer.close()
    writer.abort()
    assert writer.result is None and threading.active_count() < 50


def test_an_abort_with_chunks_queued_stops_without_sealing_them() -> None:
    sink = _GatedSink()
    writer = SealingWriter(sink, KEY, FAST, threaded=True)
    for _ in range(3):
        writer.write(make_payload("random", CHUNK_SIZE, seed=4))
    sink.gate.set()
    writer.abort()
    assert writer.result is None
    assert len(sink.getvalue()) <= 2 * CHUNK_SIZE  # at most the chunk being sealed
    assert not [t for t in threading.enumerate() if t.name == "cosmic-sealing"]


def test_threads_are_used_only_with_cores_to_spare() -> None:
    """Two cores of our own beside the producer's: a database backup (the server and
    pg_dump busy) seals inline on 2 cores, a files backup in threads (compression.py
    says what was measured)."""
    from cosmic_backup.format import compression

    writer = SealingWriter(io.BytesIO(), KEY, FAST)
    threaded = [t for t in threading.enumerate() if t.name == "cosmic-sealing"]
    writer.close()
    cores = compression.usable_cores()
    assert bool(threaded) == (cores >= 2)
    assert compression.threads_pay(2) == (cores >= 4)
    assert compression.threads_pay(cores - 1) is False


# -- tampering, truncation, the wrong key: refused before any plaintext -----------------------
SMALL = b"the one row that matters\n" * 3


def verify_only(stored: bytes, sealed: SealedArtifact, *, with_size: bool = True) -> None:
    """open_verified alone: it returns a reader only after the whole file checked out, so
    an error here means not one byte of plaintext was handed out."""
    open_verified(
        io.BytesIO(stored),
        KEY,
        expected_mac=sealed.mac,
        iterations=FAST,
        expected_stored_size=sealed.stored_size if with_size else None,
    )


@pytest.mark.parametrize("with_size", [True, False])
def test_every_single_byte_change_is_refused_before_any_plaintext(with_size: bool) -> None:
    stored, sealed = seal(SMALL)
    verify_only(stored, sealed, with_size=with_size)  # the untouched file passes
    for index in range(len(stored)):
        for value in range(256):
            if value == stored[index]:
                continue
            changed = bytearray(stored)
            changed[index] = value
            with pytest.raises(IntegrityError, match="MAC mismatch"):
                verify_only(bytes(changed), sealed, with_size=with_size)


def test_every_truncation_and_an_extension_are_refused_before_any_plaintext() -> None:
    stored, sealed = seal(SMALL)
    for length in range(len(stored)):
        with pytest.raises(IntegrityError, match=f"has {length} bytes where"):
            verify_only(stored[:length], sealed)
        with pytest.raises(IntegrityError, match="MAC mismatch"):
            verify_only(stored[:length], sealed, with_size=False)
    for extra in (b"\0", bytes(16)):
        with pytest.raises(IntegrityError):
            verify_only(stored + extra, sealed)
        with pytest.raises(IntegrityError, match="MAC mismatch"):
            verify_only(stored + extra, sealed, with_size=False)


def test_a_wrong_key_is_refused_by_the_mac_before_any_plaintext() -> None:
    """The format layer can only say the MAC does not match; which key a backup needs is
    the manifest's key_fingerprint, which restore compares first (operations/keys.py)."""
    stored, sealed = seal(SMALL)
    with pytest.raises(IntegrityError, match="MAC mismatch"):
        open_verified(io.BytesIO(stored), OTHER_KEY, expected_mac=sealed.mac, iterations=FAST)
    assert KEY.fingerprint != OTHER_KEY.fingerprint


def test_a_wrong_sha256_or_size_in_the_manifest_is_caught_at_the_end() -> None:
    stored, sealed = seal(SMALL)
    for expected, message in (
        ({"expected_sha256": "0" * 64}, "SHA-256"),
        ({"expected_plaintext_size": len(SMALL) + 1}, "decrypted to"),
    ):
        reader = open_verified(
            io.BytesIO(stored), KEY, expected_mac=sealed.mac, iterations=FAST, **expected
        )
        with pytest.raises(IntegrityError, match=message):
            reader.read()


def test_a_wrong_iteration_count_fails_the_decryption_not_silently() -> None:
    stored, sealed = seal(SMALL)
    reader = open_verified(io.BytesIO(stored), KEY, expected_mac=sealed.mac, iterations=FAST + 1)
    with pytest.raises(IntegrityError):
        reader.read()


# -- bounded memory -------------------------------------------------------------------------
class CountingSink(io.RawIOBase):
    """Keeps only the count of what is written, so it holds no memory of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.size += len(data)
        return len(data)


def peak_allocated(action: Callable[[], None]) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_bounded_by_the_chunk_both_ways() -> None:
    """64 MiB of zeros: about 64 KiB stored, so one stored chunk would inflate to far more
    than the payload if the reader did not bound its output per step."""
    total = 64 * CHUNK_SIZE
    chunk = bytes(CHUNK_SIZE)
    sink = CountingSink()
    writer = SealingWriter(sink, KEY, FAST)

    def write_all() -> None:
        for _ in range(total // CHUNK_SIZE):
            writer.write(chunk)
        writer.close()

    assert peak_allocated(write_all) < 4 * CHUNK_SIZE
    stored, sealed = seal(bytes(total), write_sizes=[CHUNK_SIZE])
    assert len(stored) < total // 500
    reader = open_verified(io.BytesIO(stored), KEY, expected_mac=sealed.mac, iterations=FAST)
    target = bytearray(CHUNK_SIZE)
    counted = []

    def read_all() -> None:
        while count := reader.readinto(target):
            counted.append(count)

    assert peak_allocated(read_all) < 4 * CHUNK_SIZE
    assert sum(counted) == total
