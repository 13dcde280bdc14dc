"""Row counts read from pg_dump's custom-format stream as it passes through.

`pg_dump -Fc -Z0` writes a header, the table of contents (TOC), then one data block per
entry that has data. A TABLE DATA block carries the table's COPY text in length-prefixed
chunks; COPY text escapes a newline inside a value as the two characters `\\n`, so every
raw newline byte ends exactly one row, except in the block's trailer: pg_dump ends each
table's data with a `\\.` line and two empty lines (`\\.\\n\\n\\n`), which are not rows.
Counting them per block, and naming each block through the TOC's dump id, gives the row
count of every table without a second scan of the data.

The layout follows pg_dump's pg_backup_archiver.c (ReadHead, ReadToc) and
pg_backup_custom.c (_StartData, _CustomWriteFunc, _EndData, the BLOBS blocks). An
archive version we do not know, a compressed archive, or anything else unexpected makes
the counter give up (`counts()` returns None) and the caller counts with count(*): it
never stops a backup. Memory stays bounded: only the header and TOC are buffered, and
later never more than one length prefix that straddles two reads.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

MAGIC = b"PGDMP"
FORMAT_CUSTOM = 1
# The format byte of a -Fd dump's toc.dat: the same head, a file name for each entry's data.
# pg_dump 15 writes 3 there (its tar format's number), though its own enum says 5.
FORMAT_DIRECTORY = frozenset({3, 5})
BLK_DATA = 1
BLK_BLOBS = 3
# Archive versions (major, minor) whose header and TOC layout this module knows:
# 1.12 (PostgreSQL 9.0) up to 1.16 (PostgreSQL 17).
KNOWN_VERSIONS = frozenset({(1, 12), (1, 13), (1, 14), (1, 15), (1, 16)})
# The TOC of a database with tens of thousands of tables fits easily; past this the
# stream is not what we think it is.
MAX_HEAD = 256 * 1024 * 1024


class ArchiveFormatError(Exception):
    """The stream is not a custom-format archive this module can read."""


class _NeedMore(Exception):
    """The buffered bytes end before the header and TOC do."""


@dataclass
class _Reader:
    """ReadInt/ReadStr over the buffered head of the archive (pg_backup_archiver.c)."""

    data: bytes
    pos: int = 0
    int_size: int = 4

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise _NeedMore
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _NeedMore
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def int(self) -> int:
        sign = self.byte()
        value = int.from_bytes(self.take(self.int_size), "little")
        return -value if sign else value

    def str(self) -> str | None:
        length = self.int()
        if length < 0:
            return None
        return self.take(length).decode("utf-8", "replace")


@dataclass
class Head:
    """What the counter (and toc_offsets.py) need of the header and TOC."""

    version: tuple[int, int]
    int_size: int
    tables: dict[int, str]  # dump id of a TABLE DATA entry -> "schema.table"
    size: int  # bytes of header + TOC
    offset_size: int = 8
    offset_fields: dict[int, int] = field(default_factory=dict)  # dump id -> its offset field
    # The DROP statements of the entries in no schema (a publication, a cast...), in order.
    unschemed_drops: list[tuple[str, str]] = field(default_factory=list)  # (kind, statement)
    policies: list[str] = field(default_factory=list)  # each POLICY entry's CREATE POLICY
    # The drops of the domain constraints dumped apart (NOT VALID ones): (schema, statement).
    domain_constraint_drops: list[tuple[str, str]] = field(default_factory=list)
    archive_format: int = FORMAT_CUSTOM
    # Each TABLE DATA entry's (schema, table, COPY statement): row_order.py's key columns.
    copies: dict[int, tuple[str, str, str]] = field(default_factory=dict)


def parse_head(data: bytes, *, toc_file: bool = False) -> Head:
    """The header and TOC at the start of `data` (with `toc_file`, a -Fd dump's toc.dat);
    _NeedMore if it ends too soon."""
    reader = _Reader(data)
    if reader.take(5) != MAGIC:
        raise ArchiveFormatError("not a pg_dump custom-format archive (no PGDMP magic)")
    version = (reader.byte(), reader.byte())
    reader.byte()  # revision
    if version not in KNOWN_VERSIONS:
        raise ArchiveFormatError(f"unknown archive version {version[0]}.{version[1]}")
    reader.int_size = reader.byte()
    if reader.int_size not in _PREFIX:
        raise ArchiveFormatError(f"unexpected integer size {reader.int_size}")
    offset_size = reader.byte()
    archive_format = reader.byte()
    if archive_format not in (FORMAT_DIRECTORY if toc_file else {FORMAT_CUSTOM}):
        raise ArchiveFormatError(f"not the archive format expected ({archive_format})")
    _read_compression(reader, version)
    for _ in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
        reader.int()
    for _ in range(3):  # database name, server version, pg_dump version
        reader.str()
    head = Head(version, reader.int_size, {}, 0, offset_size, archive_format=archive_format)
    _read_toc(reader, version, head)
    head.size = reader.pos
    return head


def _read_compression(reader: _Reader, version: tuple[int, int]) -> None:
    # From 1.15 a byte names the algorithm (0: none); before, an int gives zlib's level
    # (0: none, -1: zlib's default).
    compressed = reader.byte() != 0 if version >= (1, 15) else reader.int() != 0
    if compressed:
        raise ArchiveFormatError("the archive's data is compressed")


def _read_toc(reader: _Reader, version: tuple[int, int], head: Head) -> None:
    """Into `head`: the TABLE DATA entries' names, where each entry's data offset field
    is, the DROP statements of the entries in no schema, and the policies."""
    for _ in range(reader.int()):
        dump_id = reader.int()
        reader.int()  # hadDumper
        reader.str()  # tableoid
        reader.str()  # oid
        tag = reader.str()
        desc = reader.str()
        reader.int()  # section
        defn = reader.str()
        drop = reader.str()
        copy = reader.str()
        namespace = reader.str()
        reader.str()  # tablespace
        if version >= (1, 14):
            reader.str()  # table access method
        if version >= (1, 16):
            reader.int()  # relkind
        reader.str()  # owner
        reader.str()  # "false": WITH OIDS is gone
        while reader.str() is not None:  # dependencies, ended by a NULL string
            pass
        if head.archive_format in FORMAT_DIRECTORY:
            reader.str()  # the data's file name
        else:
            head.offset_fields[dump_id] = reader.pos
            reader.take(1 + head.offset_size)  # custom format's data offset (flag + offset)
        if desc == "TABLE DATA" and tag is not None and namespace is not None:
            head.tables[dump_id] = f"{namespace}.{tag}"
            if copy:
                head.copies[dump_id] = (namespace, tag, copy)
        if drop and desc and not namespace:
            head.unschemed_drops.append((desc, drop))
        if desc == "POLICY" and defn:
            head.policies.append(defn)
        if desc == "CHECK CONSTRAINT" and drop and drop.startswith("ALTER DOMAIN "):
            head.domain_constraint_drops.append((namespace or "", drop))


# States of the data part.
_BLOCK = 0  # at a block's type byte
_DUMP_ID = 1  # at the block's dump id
_CHUNK = 2  # at a chunk's length (0 ends the table's block, or one large object)
_IN_CHUNK = 3  # inside a chunk's bytes
_BLOB_OID = 4  # at a large object's oid (0 ends the BLOBS block)


@dataclass
class StreamCounter:
    """Feed it the archive's bytes in order; `counts()` gives rows per table at the end."""

    _head: bytearray = field(default_factory=bytearray)
    _next_try: int = 4096
    _info: Head | None = None
    _failed: str | None = None
    _state: int = _BLOCK
    _pending: bytearray = field(default_factory=bytearray)  # a split length prefix
    _left: int = 0  # bytes left in the current chunk
    _block_type: int = 0
    _table: str | None = None  # the table whose block this is, None for others
    _rows: int = 0
    _chunk_len: int = 0
    _tail: bytes = b""  # the last bytes (at most TAIL) of the block's last chunk
    _tail_whole: bool = False  # whether _tail is that whole chunk
    _counts: dict[str, int] = field(default_factory=dict)

    @property
    def failure(self) -> str | None:
        """Why the counter gave up, if it did."""
        return self._failed

    def feed(self, data: bytes) -> None:
        if self._failed is not None:
            return
        try:
            if self._info is None:
                self._feed_head(data)
            else:
                self._feed_data(data, 0)
        except ArchiveFormatError as error:
            self._fail(str(error))

    def counts(self) -> dict[str, int] | None:
        """Rows per "schema.table" of every TABLE DATA entry, or None if not readable."""
        if self._failed is None and self._info is None:
            self._next_try = 0  # a stream shorter than the first try: parse what came
            self.feed(b"")
        if self._failed is None and self._info is None:
            self._fail("the stream ended inside the archive's header")
        if self._failed is None and (self._state != _BLOCK or self._pending):
            self._fail("the stream ended inside a data block")
        if self._failed is not None:
            return None
        assert self._info is not None
        return {name: self._counts.get(name, 0) for name in self._info.tables.values()}

    def _fail(self, why: str) -> None:
        self._failed = why
        self._head = bytearray()
        self._pending = bytearray()

    def _feed_head(self, data: bytes) -> None:
        self._head += data
        if len(self._head) < self._next_try:
            return
        try:
            info = parse_head(bytes(self._head))
        except _NeedMore:
            # Parse again once the buffer has doubled: a large TOC costs linear time.
            self._next_try = 2 * len(self._head)
            if len(self._head) > MAX_HEAD:
                raise ArchiveFormatError("the archive's table of contents is too large") from None
            return
        rest = bytes(self._head[info.size :])
        self._info, self._head = info, bytearray()
        self._feed_data(rest, 0)

    def _int(self, data: bytes, pos: int) -> tuple[int | None, int]:
        """A length-prefixed int at `pos`, or None if it continues in the next read."""
        assert self._info is not None
        width = 1 + self._info.int_size
        if self._pending or pos + width > len(data):
            need = width - len(self._pending)
            self._pending += data[pos : pos + need]
            pos = min(len(data), pos + need)
            if len(self._pending) < width:
                return None, pos
            raw, self._pending = bytes(self._pending), bytearray()
        else:
            raw, pos = data[pos : pos + width], pos + width
        value = int.from_bytes(raw[1:], "little")
        return (-value if raw[0] else value), pos

    def _feed_data(self, data: bytes, pos: int) -> None:
        end = len(data)
        while pos < end:
            if self._state == _IN_CHUNK:
                pos = self._in_chunk(data, pos)
            elif self._state == _CHUNK and self._block_type == BLK_DATA and not self._pending:
                pos = self._table_chunks(data, pos)
            elif self._state == _BLOCK:
                self._block_type = data[pos]
                pos += 1
                if self._block_type not in (BLK_DATA, BLK_BLOBS):
                    raise ArchiveFormatError(f"unknown data block type {self._block_type}")
                self._state = _DUMP_ID
            else:
                value, pos = self._int(data, pos)
                if value is not None:
                    self._step(value)

    def _step(self, value: int) -> None:
        """One int of the data part read: move the state on."""
        assert self._info is not None
        if self._state == _DUMP_ID:
            self._table = self._info.tables.get(value) if self._block_type == BLK_DATA else None
            self._rows = 0
            self._state = _CHUNK if self._block_type == BLK_DATA else _BLOB_OID
        elif self._state == _BLOB_OID:
            self._state = _CHUNK if value > 0 else _BLOCK
        elif value < 0:
            raise ArchiveFormatError("negative chunk length")
        elif value > 0:
            self._start_chunk(value)
        elif self._block_type == BLK_DATA:
            self._end_table()
        else:
            self._state = _BLOB_OID  # one large object done; the next oid or 0 follows

    def _start_chunk(self, length: int) -> None:
        self._left, self._chunk_len, self._state, self._tail = length, length, _IN_CHUNK, b""

    def _end_table(self) -> None:
        rows = self._rows - _trailer_newlines(self._tail, self._tail_whole)
        if self._table is not None:
            self._counts[self._table] = self._counts.get(self._table, 0) + rows
        self._state, self._tail, self._tail_whole = _BLOCK, b"", False

    def _in_chunk(self, data: bytes, pos: int) -> int:
        stop = min(len(data), pos + self._left)
        if self._block_type == BLK_DATA:
            self._rows += data.count(b"\n", pos, stop)
            self._tail = (self._tail + data[max(pos, stop - TAIL) : stop])[-TAIL:]
        self._left -= stop - pos
        if self._left == 0:
            self._state = _CHUNK
            self._tail_whole = self._chunk_len <= TAIL
        return stop

    def _table_chunks(self, data: bytes, pos: int) -> int:
        """A table's chunks, walked without copying them (the hot loop, in `walk`)."""
        assert self._info is not None
        newlines, pos, last_start, last_stop, status, length = walk(data, pos, self._info.int_size)
        self._rows += newlines
        self._keep_tail(data, last_start, last_stop)
        if status == NEGATIVE:
            raise ArchiveFormatError("negative chunk length")
        if status == END_OF_TABLE:
            self._end_table()
            return pos
        end = len(data)
        if status == CHUNK_GOES_ON:
            self._rows += data.count(b"\n", pos, end)
            self._start_chunk(length)
            self._left, self._tail = pos + length - end, data[max(pos, end - TAIL) : end]
            return end
        if pos < end:  # a length prefix split across two reads
            value, pos = self._int(data, pos)
            assert value is None
        return pos

    def _keep_tail(self, data: bytes, start: int, stop: int) -> None:
        if stop >= 0:
            self._tail = data[max(start, stop - TAIL) : stop]
            self._tail_whole = stop - start <= TAIL


def _trailer_newlines(tail: bytes, whole: bool) -> int:
    """The newlines of pg_dump's `\\.` trailer at the end of a table's data (0 if none).

    `\\.` counts as the trailer only at the start of a line: a value ending in a
    backslash and a dot is written `\\\\.`, never as a line of its own.
    """
    body = tail.rstrip(b"\n")
    newlines = len(tail) - len(body)
    at_line_start = body.endswith(b"\n\\.") or (whole and body == b"\\.")
    return newlines if newlines and at_line_start else 0


TAIL = 16
_PREFIX = {4: struct.Struct("<BI"), 8: struct.Struct("<BQ")}

# What `walk` says ended the walk.
PREFIX_SPLIT, END_OF_TABLE, NEGATIVE, CHUNK_GOES_ON = 0, 1, 2, 3
WalkResult = tuple[int, int, int, int, int, int]


def walk_py(data: bytes, pos: int, int_size: int) -> WalkResult:
    """Walk a table's chunks from the length prefix at `pos`; count their newlines.

    Returns (newlines, pos, last_start, last_stop, status, length), exactly as the C
    version in _chunk_walk.c does (see there); this one serves an install built without
    a C compiler. pg_dump writes one chunk per row, so this runs once per row.
    """
    width = 1 + int_size
    unpack = _PREFIX[int_size].unpack_from
    count = data.count
    end = len(data)
    newlines = 0
    last_start = last_stop = -1
    while pos + width <= end:
        sign, length = unpack(data, pos)
        pos += width
        if sign:
            return newlines, pos, last_start, last_stop, NEGATIVE, 0
        if length == 0:
            return newlines, pos, last_start, last_stop, END_OF_TABLE, 0
        stop = pos + length
        if stop > end:
            return newlines, pos, last_start, last_stop, CHUNK_GOES_ON, length
        newlines += count(b"\n", pos, stop)
        last_start, last_stop = pos, stop
        pos = stop
    return newlines, pos, last_start, last_stop, PREFIX_SPLIT, 0


try:
    from cosmic_backup.components.database._chunk_walk import walk as walk_c
except ImportError:  # built without a C compiler: same answers, slower
    walk_c = None

walk: Callable[[bytes, int, int], WalkResult] = walk_c or walk_py
