"""The stream counter on hand-made archives: what it cannot read it says, never raises."""

from __future__ import annotations

import struct

from cosmic_backup.components.database.stream_counts import StreamCounter


def pg_int(value: int) -> bytes:
    return bytes([1 if value < 0 else 0]) + struct.pack("<I", abs(value))


def pg_str(text: str | None) -> bytes:
    if text is None:
        return pg_int(-1)
    raw = text.encode()
    return pg_int(len(raw)) + raw


def archive(version: tuple[int, int] = (1, 14), rows: list[bytes] | None = None) -> bytes:
    """A custom-format archive with one TABLE DATA entry (dump id 7) for s.t."""
    head = b"PGDMP" + bytes([version[0], version[1], 0, 4, 8, 1])
    head += pg_int(0)  # compression level (1.14)
    head += b"".join(pg_int(0) for _ in range(7)) + pg_str("db") + pg_str("15") + pg_str("15")
    entry = pg_int(7) + pg_int(1) + pg_str("1259") + pg_str("16384") + pg_str("t")
    entry += pg_str("TABLE DATA") + pg_int(3) + pg_str("") + pg_str("") + pg_str("COPY s.t;")
    entry += pg_str("s") + pg_str("") + pg_str("heap") + pg_str("me") + pg_str("false")
    entry += pg_str("6") + pg_str(None) + bytes(9)  # a dependency, the end, the offset
    data = bytes([1]) + pg_int(7)
    for row in rows if rows is not None else [b"a\n", b"b\\nc\n", b"\\.\n\n\n"]:
        data += pg_int(len(row)) + row
    return head + pg_int(1) + entry + data + pg_int(0)


def test_a_known_archive_is_counted() -> None:
    counter = StreamCounter()
    counter.feed(archive())
    assert counter.counts() == {"s.t": 2}


def test_a_line_ending_in_an_escaped_backslash_dot_is_a_row() -> None:
    """A value ending in backslash-dot is written `\\\\.`: not the end marker."""
    for rows, expected in (
        ([b"a\\\\.\n", b"\\.\n\n\n"], 1),
        ([b"a\\\\.\n"], 1),  # no trailer at all (not pg_dump's habit): every line counts
        ([b"a\n\\.\n\n\n"], 1),  # rows and trailer in one chunk
    ):
        counter = StreamCounter()
        counter.feed(archive(rows=rows))
        assert counter.counts() == {"s.t": expected}, rows


def test_an_unknown_archive_version_is_reported_not_raised() -> None:
    counter = StreamCounter()
    counter.feed(archive(version=(1, 99)))
    assert counter.counts() is None
    assert counter.failure == "unknown archive version 1.99"


def test_a_stream_that_is_no_archive_is_reported() -> None:
    counter = StreamCounter()
    counter.feed(b"-- PostgreSQL database dump\n" * 400)
    assert counter.counts() is None and "PGDMP" in (counter.failure or "")


def test_a_stream_cut_inside_a_table_is_reported() -> None:
    counter = StreamCounter()
    counter.feed(archive()[:-7])
    assert counter.counts() is None and "inside a data block" in (counter.failure or "")
