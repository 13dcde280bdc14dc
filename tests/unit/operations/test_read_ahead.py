"""A format 2 payload read ahead in a thread: the same bytes in the same order, an error
where it arose (after the pieces before it), and a reader closed early stops the thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from cosmic_backup.errors import IntegrityError
from cosmic_backup.operations.store import AHEAD_PIECES, PayloadReader, ReadAhead


def test_the_pieces_come_out_whole_and_in_order() -> None:
    pieces = [bytes([n]) * (1000 + n) for n in range(50)]
    reader = PayloadReader(iter(ReadAhead(iter(pieces))))
    assert reader.read() == b"".join(pieces)


def test_an_error_comes_after_the_pieces_before_it() -> None:
    def damaged() -> Iterator[bytes]:
        yield b"good"
        yield b"also good"
        raise IntegrityError("its pack fails its MAC")

    ahead = ReadAhead(damaged())
    assert next(ahead) == b"good"
    assert next(ahead) == b"also good"
    with pytest.raises(IntegrityError, match="fails its MAC"):
        next(ahead)
    with pytest.raises(StopIteration):  # and nothing after it
        next(ahead)


def test_it_reads_ahead_boundedly_and_closing_stops_it() -> None:
    produced: list[int] = []
    cleaned_up = threading.Event()

    def endless() -> Iterator[bytes]:
        try:
            while True:
                produced.append(1)
                yield b"x"
        finally:
            cleaned_up.set()  # the generator's clean-up (a temporary file) runs

    ahead = ReadAhead(endless())
    assert next(ahead) == b"x"
    deadline = time.monotonic() + 5
    while len(produced) < AHEAD_PIECES + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert AHEAD_PIECES <= len(produced) <= AHEAD_PIECES + 3  # ahead, but bounded
    ahead.close()
    assert cleaned_up.wait(5)
