"""gzip streams: ISA-L (isal) for speed when it is installed, zlib otherwise.

Both write the same RFC 1952 format, so ``gunzip`` reads either.

The writer does not compress what does not compress. Uploads are often photos, videos
and archives, already compressed: deflating them costs CPU on backup and restore for
nothing. So the data goes through in blocks of 64 KiB; a block that deflate could not
shrink by 3% makes the following blocks go out as deflate's *stored* blocks (the bytes
as they are, with a 5-byte header per 64 KiB) until a cheap test of a block's first and
last KiB says it compresses again. Stored and compressed blocks are both plain deflate:
the output stays ONE gzip member that ``gunzip``, Python's gzip and every earlier
version of this reader read.

Deflating runs in a worker thread (isal and zlib release the GIL), one chunk behind
the caller, so it overlaps the caller's encryption, hashing and reading.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from cosmic_backup.errors import IntegrityError

GZIP_WBITS = 31  # 16 + 15: a gzip container with the largest window
RAW_WBITS = -15  # a bare deflate stream: the writer frames it as gzip itself

try:  # pragma: no cover - which branch runs depends on the machine
    from isal import isal_zlib as _zlib

    BACKEND = "isal"
    DEFAULT_LEVEL = 1  # isal levels are 0-3; 1 keeps up with pg_dump at a good ratio
    PROBE_LEVEL = 0  # isal's level 0 is a fast Huffman-only pass, not stored blocks
except ImportError:  # pragma: no cover
    import zlib as _zlib  # type: ignore[no-redef]

    BACKEND = "zlib"
    DEFAULT_LEVEL = 1
    PROBE_LEVEL = 1  # zlib's level 0 stores: it would call everything incompressible

BLOCK = 64 * 1024  # the unit of the store-or-compress decision
STORED_MAX = 65535  # a stored block holds at most this many bytes (RFC 1951 3.2.4)
WORTH_IT = 0.97  # a block compressed to more than this share of its size: store the next
PROBE = 1024  # bytes of a stored block's head and tail test-compressed
PROBE_WORTH_IT = 0.90  # random bytes probe at 1.0-1.35, text at 0.2-0.35
THREAD_MIN = 64 * 1024  # smaller writes are compressed inline: a thread hop costs more
IN_FLIGHT = 2 * 1024 * 1024  # bytes handed to the worker and not yet returned: bounded

# The same 10-byte header the backend writes for a gzip stream of its own.
GZIP_HEADER = _zlib.compress(b"", DEFAULT_LEVEL, GZIP_WBITS)[:10]
FINAL_EMPTY_BLOCK = b"\x03\x00"  # BFINAL=1, fixed Huffman, end of block: zlib's own ending


class Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0))


# Worker threads pay only with cores to spare: two of ours, beside those the producer
# keeps busy. A database backup's producer holds two (the server's COPY and pg_dump):
# on 2 cores the threads made it slower (1.3 GB: 6.69 s with them against 6.19 s
# without, medians of 6, interleaved). A files backup's producer is our own tar reader:
# there the threads made it faster on the same 2 cores (1 GiB: 3.73 s against 5.54 s).
OUR_THREADS_CORES = 2


def threads_pay(producer_cores: int = 0) -> bool:
    """Do worker threads pay when the producer keeps `producer_cores` cores busy?"""
    return usable_cores() >= producer_cores + OUR_THREADS_CORES


def compressor(level: int = DEFAULT_LEVEL, *, threaded: bool | None = None) -> Compressor:
    """The gzip writer: in a worker thread of its own when `threaded` (default: when the
    machine has cores to spare)."""
    inner = AdaptiveDeflate(level)
    return ThreadedCompressor(inner) if (threads_pay() if threaded is None else threaded) else inner


def stored_blocks(data: memoryview) -> list[bytes | memoryview]:
    """`data` as non-final deflate stored blocks; the stream must be byte-aligned here."""
    pieces: list[bytes | memoryview] = []
    for start in range(0, len(data), STORED_MAX):
        piece = data[start : start + STORED_MAX]
        pieces.append(b"\x00" + struct.pack("<HH", len(piece), len(piece) ^ 0xFFFF))
        pieces.append(piece)
    return pieces


def compresses(sample: memoryview) -> bool:
    """Does this sample look compressible? Deflating a KiB fast costs ~7 µs."""
    return len(_zlib.compress(sample, PROBE_LEVEL, RAW_WBITS)) < PROBE_WORTH_IT * len(sample)


class AdaptiveDeflate:
    """One gzip member whose deflate stream mixes compressed blocks and stored blocks.

    While compressing, every block is synced (byte-aligned, ~5 bytes) so its compressed
    size is known exactly, and the switch to stored blocks can happen at any block. A new
    run of compressed blocks starts a new deflate compressor: it never refers back past
    the stored bytes, so the stream stays valid whatever the mix.
    """

    def __init__(self, level: int = DEFAULT_LEVEL) -> None:
        self._level = level
        self._deflate: object | None = None  # the live compressor while compressing
        self._storing = False
        self._crc = 0
        self._size = 0
        self._started = False
        self._carry = bytearray()  # the start of a block not yet complete

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        view = memoryview(data).cast("B")
        out: list[bytes | memoryview] = []
        if not self._started:
            out.append(GZIP_HEADER)
            self._started = True
        self._crc = _zlib.crc32(view, self._crc)
        self._size += len(view)
        if self._carry:  # the decision is taken per whole block: complete the last one
            taken = BLOCK - len(self._carry)
            self._carry += view[:taken]
            view = view[taken:]
            if len(self._carry) < BLOCK:
                return b"".join(out)
            self._block(memoryview(bytes(self._carry)), out)
            self._carry = bytearray()
        whole = len(view) - len(view) % BLOCK
        for start in range(0, whole, BLOCK):
            self._block(view[start : start + BLOCK], out)
        self._carry += view[whole:]
        return b"".join(out)

    def _block(self, block: memoryview, out: list[bytes | memoryview]) -> None:
        if self._storing:
            probes = (block[:PROBE], block[-PROBE:]) if len(block) > PROBE else (block,)
            if not any(compresses(probe) for probe in probes):
                out.extend(stored_blocks(block))
                return
            self._storing = False
        if self._deflate is None:
            self._deflate = _zlib.compressobj(self._level, _zlib.DEFLATED, RAW_WBITS)
        deflate = self._deflate
        packed = deflate.compress(block) + deflate.flush(_zlib.Z_SYNC_FLUSH)  # type: ignore[attr-defined]
        out.append(packed)
        if len(block) == BLOCK and len(packed) > WORTH_IT * len(block):
            self._storing = True
            self._deflate = None  # the next compressed run starts afresh

    def flush(self) -> bytes:
        out: list[bytes | memoryview] = [] if self._started else [GZIP_HEADER]
        self._started = True
        if self._carry:
            self._block(memoryview(bytes(self._carry)), out)
            self._carry = bytearray()
        if self._deflate is not None:
            out.append(self._deflate.flush(_zlib.Z_FINISH))  # type: ignore[attr-defined]
        else:
            out.append(FINAL_EMPTY_BLOCK)
        out.append(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        return b"".join(out)


class ThreadedCompressor:
    """Runs a compressor in one worker thread, up to IN_FLIGHT bytes behind the caller.

    `compress` hands a copy of the chunk over (the caller may reuse its buffer) and returns
    what the worker has finished, in order; `flush` waits for the rest. An error in the
    worker is raised in the caller at its next call. Small chunks go inline when nothing
    is pending, so a stream of small writes pays no thread hop.
    """

    def __init__(self, inner: AdaptiveDeflate) -> None:
        self._inner = inner
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[int, Future[bytes]]] = deque()
        self._pending_bytes = 0

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        if not self._pending and len(data) < THREAD_MIN:
            return self._inner.compress(data)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gzip")
        self._pending.append((len(data), self._pool.submit(self._inner.compress, bytes(data))))
        self._pending_bytes += len(data)
        done = []
        while self._pending and (self._pending_bytes > IN_FLIGHT or self._pending[0][1].done()):
            size, future = self._pending.popleft()
            self._pending_bytes -= size
            done.append(future.result())
        return b"".join(done)

    def flush(self) -> bytes:
        done = [future.result() for _, future in self._pending]
        self._pending.clear()
        self._pending_bytes = 0
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        done.append(self._inner.flush())
        return b"".join(done)


class Decompressor:
    """A gzip decompressor with bounded output per step; refuses trailing data and a missing end.

    Input is fed with `feed`; `read(max_length)` returns at most that much plaintext, so a
    highly compressible stream (a sparse file, a table of zeros) never balloons in memory.
    """

    def __init__(self) -> None:
        self._inner = _zlib.decompressobj(GZIP_WBITS)
        self._pending = b""

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._inner.eof:
            raise IntegrityError("The backup payload has data after its gzip end.")
        self._pending = self._pending + data if self._pending else data

    def read(self, max_length: int) -> bytes:
        if not self._pending:
            return b""
        try:
            out = self._inner.decompress(self._pending, max_length)
        except _zlib.error as exc:
            raise IntegrityError(f"The backup payload is not valid gzip data ({exc}).") from exc
        self._pending = self._inner.unconsumed_tail
        if self._inner.eof and (self._inner.unused_data or self._pending):
            raise IntegrityError("The backup payload has data after its gzip end.")
        return out

    def finish(self) -> None:
        if not self._inner.eof:
            raise IntegrityError("The backup payload ends before its gzip stream does.")
