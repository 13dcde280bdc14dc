"""The C row sort (_row_sort.c) against the Python keys of row_order.py, on runs of COPY
rows as pg_dump writes them: the same order, and None where the Python sort falls back."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from cosmic_backup.components.database import row_order

PREFIX = struct.Struct("<BI")
ROWS = [b"10\tb\tx\n", b"-3\ta\ty\n", b"9\tb\tz\n", b"10\ta\t\\N\n", b"0\tc\t\n"]


@pytest.fixture
def row_sort() -> object:
    assert row_order._row_sort is not None, "the C row sort (_row_sort) was not built"
    return row_order._row_sort


def run_of(rows: list[bytes]) -> bytes:
    return b"".join(PREFIX.pack(0, len(row)) + row for row in rows)


def rows_of(run: bytes) -> list[bytes]:
    rows, pos = [], 0
    while pos < len(run):
        _sign, length = PREFIX.unpack_from(run, pos)
        rows.append(run[pos + 5 : pos + 5 + length])
        pos += 5 + length
    return rows


@pytest.mark.parametrize(
    ("columns", "key"),
    [
        (["id", "k", "v"], (("id", True),)),  # integers, negative ones too
        (["id", "k", "v"], (("k", False), ("id", True))),  # composite, text first
        (["id", "k", "v"], (("v", False),)),  # the last field, without its newline
        (["id", "k", "v"], None),  # no key: the whole row
    ],
)
def test_the_c_order_is_the_python_order(row_sort: object, columns: list[str], key: object) -> None:
    python_key = row_order.key_function(columns, key)  # type: ignore[arg-type]
    spec = row_order.key_spec(columns, key)  # type: ignore[arg-type]
    ordered, places = row_sort.sort_run(run_of(ROWS), 4, spec)  # type: ignore[attr-defined]
    expected = sorted(ROWS, key=lambda row: (python_key(row), ROWS.index(row)))
    assert rows_of(ordered) == expected
    assert list(struct.unpack(f"<{len(ROWS)}I", places)) == [ROWS.index(r) for r in expected]


@pytest.mark.parametrize(
    "rows",
    [
        [b"1\ta\n", b"2\tb\n3\tc\n"],  # a piece holding two rows
        [b"1\ta\n", b"2\tb"],  # a piece that is not a whole row
        [b"1\ta\n", b"x\tb\n"],  # an integer key that does not parse
        [b"1\ta\n", b"99999999999999999999\tb\n"],  # nor fits in 64 bits
        [b"1\ta\n", b"\\.\n\n\n"],  # the trailer is never sorted with the rows
    ],
)
def test_a_surprise_gives_none(row_sort: object, rows: list[bytes]) -> None:
    assert row_sort.sort_run(run_of(rows), 4, ((0, True),)) is None  # type: ignore[attr-defined]


def test_runs_merge_with_their_big_row_references(row_sort: object, tmp_path: Path) -> None:
    """Two sorted runs, one holding a reference to a big row: merged in key order, the
    reference handed to big() after the bytes before it."""
    big_row = b"5\t" + b"q" * 100 + b"\n"
    reference = struct.pack("<QQ", 7, len(big_row)) + big_row[:10]
    first = run_of([b"1\ta\n", b"8\tb\n"])
    second = run_of([b"3\tc\n"]) + PREFIX.pack(1, len(reference)) + reference
    second += run_of([b"9\td\n"])
    paths = [tmp_path / "1.run", tmp_path / "2.run"]
    paths[0].write_bytes(first)
    paths[1].write_bytes(second)
    out: list[bytes] = []
    fds = [os.open(path, os.O_RDONLY) for path in paths]
    try:
        row_sort.merge_runs(  # type: ignore[attr-defined]
            fds,
            4,
            ((0, True),),
            out.append,
            lambda offset, length: out.append(b"BIG%d,%d" % (offset, length)),
        )
    finally:
        for fd in fds:
            os.close(fd)
    merged = b"".join(out)
    assert merged == run_of([b"1\ta\n", b"3\tc\n"]) + b"BIG7,%d" % len(big_row) + run_of(
        [b"8\tb\n", b"9\td\n"]
    )
