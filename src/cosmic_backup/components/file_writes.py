"""Writing extracted files in a thread of their own, in bounded memory.

The extraction's thread decrypts, decompresses, parses and checks the tar stream;
creating the files and writing their contents (``os.open``, ``os.pwrite``: both release
the GIL; creating a file costs the kernel ~0.5 ms here, as much as writing 1 MiB) is
handed to writer threads, so the two cores share the work. Everything that decides what
is written where, and whether it is safe, stays in the extracting thread: a writer gets
a ready `create()` (``O_EXCL``, ``O_NOFOLLOW``, under folders the extraction made) and
the bytes, and sets the file's owner, mode and times once they are in. A file larger
than PIECE is created by the extracting thread and written in pieces.

Memory: the bytes handed over and not yet written are capped (`IN_FLIGHT_BYTES`); the
extracting thread waits when the cap is reached. A write error is raised in the
extracting thread at its next call. `drain` waits for every write and closes every
descriptor: call it before the result is used, and after an error before cleaning up,
so nothing is written into a folder once the caller starts removing it.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

IN_FLIGHT_BYTES = 32 * 1024 * 1024
JOB_COST = 4096  # counted against the cap for every job, besides its bytes
PIECE = 1024 * 1024  # a larger file is handed over in pieces of this size
# Smaller files are written by the extracting thread itself: a writer needs the GIL for
# each file, and for small ones that hand-over cost more than the write (100,000 files
# of 1 KiB restored 50% slower through the writer).
INLINE_BELOW = 256 * 1024
WORKERS = 1  # measured on 2 shared cores: each extra writer cost ~0.4 s of kernel time per GiB

Finish = Callable[[int], None]  # chown/chmod/utime on the descriptor, once it is written
Create = Callable[[], int]  # creates the new file (O_EXCL, O_NOFOLLOW): its descriptor


class ParallelWrites:
    def __init__(self, workers: int = WORKERS, cap: int = IN_FLIGHT_BYTES) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore-write")
        self._cap = cap
        self._in_flight = 0
        self._room = threading.Condition()
        self._futures: deque[Future[None]] = deque()  # in the order handed over
        self._open: set[int] = set()  # descriptors handed over and not closed yet
        self._lock = threading.Lock()

    # -- the extracting thread ----------------------------------------------------------
    def write_file(
        self, path: Path, create: Create, read: Callable[[int], bytes], size: int, finish: Finish
    ) -> None:
        """Create the file with `create()`, write `size` bytes read with `read(n)` into it,
        then `finish` it. `path` names the file in errors.

        A file of up to PIECE bytes is created by its writer: creating a file costs the
        kernel ~0.5 ms here, as much as writing 1 MiB, so creations run in parallel too.
        A larger one is created here and its descriptor handed to the writers.
        """
        if size < INLINE_BELOW:  # the hand-over would cost more than the write
            data = read(size)
            self.check()
            _named(path, self._whole, create, data, finish)
            return
        if size <= PIECE:  # the common case: one job creates, writes and finishes the file
            data = read(size)
            self._submit(path, len(data), self._whole, create, data, finish)
            return
        fd = create()
        with self._lock:
            self._open.add(fd)
        pieces = []
        for offset in range(0, size, PIECE):
            data = read(min(PIECE, size - offset))
            pieces.append(self._submit(path, len(data), self._piece, fd, data, offset))
        self._submit(path, 0, self._after, fd, pieces, finish)

    def settle(self) -> None:
        """Wait until every file handed over is written (before a hard link to one)."""
        while self._futures:
            self._futures.popleft().result()

    def check(self) -> None:
        """Raise the first error a writer met (in the extracting thread).

        Only the finished jobs at the front are looked at: a million small files cost
        one look each, and a later job's error surfaces here or in `drain`.
        """
        while self._futures and self._futures[0].done():
            self._futures.popleft().result()

    def drain(self, *, raise_errors: bool = True) -> None:
        """Wait for every write and close every descriptor; raise the first error met.

        `raise_errors=False` after an error of the caller's own, which is the one to
        report. Calling it again does nothing.
        """
        try:
            errors = [future.exception() for future in self._futures]
            self._futures.clear()
            first = next((error for error in errors if error is not None), None)
            if first is not None and raise_errors:
                raise first
        finally:
            self._pool.shutdown(wait=True)
            with self._lock:
                leftover, self._open = self._open, set()
            for fd in leftover:  # handed over, but the extraction stopped before its end
                os.close(fd)

    def _submit(
        self, path: Path, size: int, job: Callable[..., None], *args: object
    ) -> Future[None]:
        self.check()
        size += JOB_COST  # so that a million empty files cannot queue up either
        with self._room:
            while self._in_flight and self._in_flight + size > self._cap:
                self._room.wait()
            self._in_flight += size
        future = self._pool.submit(self._run, path, size, job, *args)
        self._futures.append(future)
        return future

    # -- the writer threads -------------------------------------------------------------
    def _run(self, path: Path, size: int, job: Callable[..., None], *args: object) -> None:
        try:
            _named(path, job, *args)
        finally:
            with self._room:
                self._in_flight -= size
                self._room.notify_all()

    def _whole(self, create: Create, data: bytes, finish: Finish) -> None:
        fd = create()
        try:
            _write_at(fd, data, 0)
            finish(fd)
        finally:
            os.close(fd)

    def _piece(self, fd: int, data: bytes, offset: int) -> None:
        _write_at(fd, data, offset)

    def _after(self, fd: int, pieces: list[Future[None]], finish: Finish) -> None:
        # Queued after its pieces, which the pool started first: this never waits on
        # a job that has no thread.
        try:
            for piece in pieces:
                piece.result()
            finish(fd)
        finally:
            self._close(fd)

    def _close(self, fd: int) -> None:
        with self._lock:
            if fd not in self._open:
                return
            self._open.discard(fd)
        os.close(fd)


def _named(path: Path, job: Callable[..., None], *args: object) -> None:
    """Run `job`; an OSError without a file name (pwrite, fchmod...) gets `path`'s."""
    try:
        job(*args)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
