"""The stream counter on hand-made archives: what it cannot read it says, never raises."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cosmic_backup.components.database import stream_counts
from cosmic_backup.components.database.stream_counts import StreamCounter

WALKERS = {"python": stream_counts.walk_py, "c": stream_counts.walk_c}
INSTALLED_WALK = stream_counts.walk


@pytest.fixture(autouse=True, params=sorted(WALKERS))
def walker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test runs with both walks of a table's chunks: the C one and the Python one."""
    walk = WALKERS[request.param]
    if walk is None:
        pytest.fail("the C row counter (_chunk_walk) was not built by this install")
    monkeypatch.setattr(stream_counts, "walk", walk)
    yield request.param


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


def test_the_c_walk_is_what_an_install_uses() -> None:
    """An install with a C compiler (this one, and CI's) counts at C speed."""
    assert stream_counts.walk_c is not None
    assert INSTALLED_WALK is stream_counts.walk_c


# COPY text never holds a NUL byte, but may hold anything else, including bytes of a
# length prefix (a newline is byte 10).
copy_rows = st.lists(
    st.binary(min_size=0, max_size=300).map(lambda b: b.replace(b"\0", b"x") + b"\n"),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(rows=copy_rows, cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=8))
def test_any_rows_cut_anywhere_count_the_same_in_c_and_python(
    rows: list[bytes], cuts: list[int]
) -> None:
    rows = [row for row in rows if row.count(b"\n") == 1]  # one row per chunk, as pg_dump
    stream = archive(rows=[*rows, b"\\.\n\n\n"])
    results = []
    for walk in (stream_counts.walk_py, stream_counts.walk_c):
        assert walk is not None
        stream_counts.walk = walk  # the autouse fixture puts the original back
        counter = StreamCounter()
        start = 0
        for cut in [*cuts, len(stream)]:
            counter.feed(stream[start : start + cut])
            start += cut
        counter.feed(stream[start:])
        results.append(counter.counts())
    assert results[0] == results[1] == {"s.t": len(rows)}


@pytest.mark.parametrize("int_size", [4, 8])
def test_both_walks_agree_on_every_kind_of_stop(int_size: int) -> None:
    def prefix(value: int) -> bytes:
        return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(int_size, "little")

    body = prefix(3) + b"a\nb" + prefix(10) + b"\n" * 10
    cases = [
        body + prefix(0) + b"rest",  # the table ends
        body + prefix(-2),  # a negative length
        body + prefix(50) + b"abc",  # a chunk goes on in the next read
        body + prefix(50)[:3],  # a prefix split across reads
        b"",
    ]
    for data in cases:
        c_walk = stream_counts.walk_c
        assert c_walk is not None
        assert c_walk(data, 0, int_size) == stream_counts.walk_py(data, 0, int_size), data
