"""A stable row order for custom-format dumps: each table's rows sorted by primary key.

pg_dump writes a table's rows in heap order. New rows fill free space all over the heap
and an updated row moves, so a day's churn changes almost every chunk of a busy table
(issue 19). Here the `-Z0` archive stream is rewritten on its way to the store: each
TABLE DATA block is a sequence of length-prefixed pieces, one per COPY row (pg_dump.c
dumpTableData_copy hands each PQgetCopyData row to WriteData; with no compression
pg_backup_custom.c _CustomWriteFunc writes it as one length-prefixed chunk), then the
`\\.` trailer and a zero length. The pieces are permuted into key order:

- a primary key of integer columns compares numerically, so new serial ids go last;
- any other primary key compares by its columns' COPY text, bytewise;
- a table without one compares by the whole row.

A permutation keeps the block's length and bytes-per-row, so the TOC stays valid, stock
pg_restore restores it (COPY does not care about row order) and the stream's row counts
stay. A table's pieces are sorted in bounded memory (`memory` bytes of rows, counting
each row's bookkeeping too); past it sorted runs spill to a private folder and are
merged (external merge sort, at most MERGE_FAN_IN runs at a time). A row larger than
BIG_ROW is never held whole: it goes straight to that folder as it arrives, and its key
is read from its first KEY_PREFIX bytes.

Two sorts give the same archive: RunSort, with _row_sort.c (a run is raw bytes, sorted
and merged in C: no Python object per row), and TableSort, in Python, for an install
built without a C compiler and for a table kept in pg_dump's order after a surprise.

Anything unexpected falls back, never to a broken archive: a piece that is not one row,
or a key column that does not parse, puts that table back in pg_dump's order (the same
bytes pg_dump wrote); a header or block this module does not know passes the rest of
the stream through unchanged.
"""

from __future__ import annotations

import heapq
import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cosmic_backup.components.database.stream_counts import (
    BLK_BLOBS,
    BLK_DATA,
    MAX_HEAD,
    PREFIX_SPLIT,
    ArchiveFormatError,
    Head,
    _NeedMore,
    parse_head,
    walk_c,
)
from cosmic_backup.errors import OperationFailed

ORDER_PRIMARY_KEY = "primary-key"
ORDER_DUMP = "dump"
DEFAULT_MEMORY = 64 * 1024 * 1024
ROW_OVERHEAD = 160  # bytes of bookkeeping per row held (tuple, key, bytes object)
BIG_ROW = 8 * 1024 * 1024  # a row above this goes to disk as it arrives
KEY_PREFIX = 64 * 1024  # a big row's key is read from this much of its start
MERGE_FAN_IN = 64  # runs merged at once: 64 read buffers, not one per run
READ_BUFFER = 256 * 1024
WRITE_BATCH = 1024 * 1024
TRAILER = b"\\.\n\n\n"
INTEGER_TYPES = ("int2", "int4", "int8")
_RUN_RECORD = struct.Struct("<QQq")  # sequence number, length, offset in the big-row file

PRIMARY_KEYS_QUERY = """
SELECT n.nspname, c.relname,
       array_agg(a.attname::text ORDER BY k.ord),
       array_agg(t.typname::text ORDER BY k.ord)
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
JOIN pg_type t ON t.oid = a.atttypid
WHERE con.contype = 'p'
GROUP BY n.nspname, c.relname
"""

# A table's primary key: its columns in key order, each (name, whether an integer type).
PrimaryKey = tuple[tuple[str, bool], ...]
Key = Callable[[bytes], Any]
KeySpec = tuple[tuple[int, bool], ...]  # _row_sort's key: (field index, numeric) pairs
C_MAX_KEYS, C_MAX_FIELD = 16, 64  # what _row_sort.c's key extraction handles


@dataclass(frozen=True)
class RowOrderSettings:
    """BACKUP_DB_ROW_ORDER and its memory bound, and where runs spill."""

    order: str
    memory: int
    spill_parent: Path


def read_primary_keys(conn: Any) -> dict[tuple[str, str], PrimaryKey]:
    """Every table's primary key columns, read in the dump's snapshot."""
    keys: dict[tuple[str, str], PrimaryKey] = {}
    for schema, table, names, types in conn.execute(PRIMARY_KEYS_QUERY).fetchall():
        keys[(str(schema), str(table))] = tuple(
            (str(name), str(kind) in INTEGER_TYPES) for name, kind in zip(names, types, strict=True)
        )
    return keys


try:
    from cosmic_backup.components.database import _row_sort
except ImportError:  # built without a C compiler: the Python sort, same archive, slower
    _row_sort = None  # type: ignore[assignment]

# -- keys --------------------------------------------------------------------------------
_IDENT = r'(?:"(?:[^"]|"")*"|[^\s.,()"]+)'
_COPY = re.compile(
    rf"^COPY {_IDENT}(?:\.{_IDENT})? (?:\((?P<cols>.*)\) )?FROM stdin;\s*$", re.DOTALL
)
_COLUMN = re.compile(rf"\s*({_IDENT})\s*(?:,|$)")


def copy_columns(statement: str) -> list[str] | None:
    """The column names of pg_dump's `COPY schema.table (a, "B c") FROM stdin;`, None if
    the statement is not of that shape."""
    match = _COPY.match(statement)
    if match is None:
        return None
    text = match.group("cols")
    if text is None:
        return []
    names, pos = [], 0
    while pos < len(text):
        column = _COLUMN.match(text, pos)
        if column is None or column.end() == pos:
            return None
        name = column.group(1)
        names.append(name[1:-1].replace('""', '"') if name.startswith('"') else name)
        pos = column.end()
    return names


def whole_row(row: bytes) -> bytes:
    return row[:KEY_PREFIX]


def key_function(columns: list[str] | None, primary_key: PrimaryKey | None) -> Key:
    """How one row's COPY text gives its sort key; the whole row without a usable key."""
    if not primary_key or columns is None:
        return whole_row
    try:
        spots = [(columns.index(name), numeric) for name, numeric in primary_key]
    except ValueError:
        return whole_row  # a key column not dumped: the whole row still orders it
    last = max(index for index, _ in spots)
    if len(spots) == 1 and spots[0] == (0, True):
        return _first_integer  # the common case (serial id first), kept fast

    def key(row: bytes) -> tuple[Any, ...]:
        fields = row[:KEY_PREFIX].split(b"\t", last + 1)
        if len(fields) <= last:
            raise ValueError("fewer fields than the key needs")
        return tuple(
            int(fields[index]) if numeric else fields[index].rstrip(b"\n")
            for index, numeric in spots
        )

    return key


def key_spec(columns: list[str] | None, primary_key: PrimaryKey | None) -> KeySpec | None:
    """The same key as key_function's, as _row_sort takes it: (field, numeric) pairs, ()
    for the whole row; None when only the Python sort can take it."""
    if not primary_key or columns is None or any(n not in columns for n, _ in primary_key):
        return ()
    spec = tuple((columns.index(name), numeric) for name, numeric in primary_key)
    return spec if len(spec) <= C_MAX_KEYS and max(f for f, _ in spec) <= C_MAX_FIELD else None


def _first_integer(row: bytes) -> int:
    end = row.find(b"\t", 0, KEY_PREFIX)
    return int(row[:end] if end >= 0 else row[:KEY_PREFIX])


# -- pieces and runs ---------------------------------------------------------------------
@dataclass(frozen=True)
class BigRow:
    """A row kept in the table's big-row file, not in memory."""

    offset: int
    length: int


Piece = bytes | bytearray | BigRow
Record = tuple[Any, int, Piece]  # (key, sequence number in pg_dump's order, the row)


class _Unexpected(Exception):
    """The data part is not as expected at `pos` of the buffer: pass the rest as it is."""

    def __init__(self, pos: int, why: str) -> None:
        super().__init__(why)
        self.pos = pos


class Surprise(Exception):
    """The table's data is not what the sort needs: keep pg_dump's order."""


@dataclass
class Spill:
    """The private folder's files of one table: sorted runs and the big rows."""

    folder: Path
    prefix: str
    runs: list[Path] = field(default_factory=list)
    big: BinaryIO | None = None
    big_size: int = 0
    _made: int = 0

    def new_path(self) -> Path:
        self._made += 1
        return self.folder / f"{self.prefix}-{self._made}.run"

    def big_file(self) -> BinaryIO:
        if self.big is None:
            self.big = open(self.folder / f"{self.prefix}.big", "w+b")  # noqa: SIM115
        return self.big

    def read_big(self, offset: int, length: int) -> bytes:
        assert self.big is not None
        return os.pread(self.big.fileno(), length, offset)

    def close(self) -> None:
        if self.big is not None:
            self.big.close()
            Path(self.big.name).unlink(missing_ok=True)
            self.big = None
        for run in self.runs:
            run.unlink(missing_ok=True)
        self.runs = []


def write_run(path: Path, records: Iterable[Record]) -> None:
    with open(path, "wb", buffering=READ_BUFFER) as run:
        for _key, seq, piece in records:
            if isinstance(piece, BigRow):
                run.write(_RUN_RECORD.pack(seq, piece.length, piece.offset))
            else:
                run.write(_RUN_RECORD.pack(seq, len(piece), -1))
                run.write(piece)


def read_run(path: Path, spill: Spill, key: Key | None) -> Iterator[Record]:
    """A run's records; the keys are computed again (`key` None: pg_dump's order)."""
    with open(path, "rb", buffering=READ_BUFFER) as run:
        while head := run.read(_RUN_RECORD.size):
            seq, length, offset = _RUN_RECORD.unpack(head)
            piece: Piece
            if offset >= 0:
                piece = BigRow(offset, length)
                start = spill.read_big(offset, min(length, KEY_PREFIX))
            else:
                piece = start = run.read(length)
            yield (seq if key is None else key(start)), seq, piece


# -- one table ---------------------------------------------------------------------------
class TableSort:
    """The pieces of one table's data block, given in pg_dump's order, out in key order."""

    def __init__(self, key: Key, memory: int, spill: Spill) -> None:
        self.key: Key | None = key
        self.memory = memory
        self.spill = spill
        self.held: list[Record] = []
        self.held_bytes = 0
        self.seq = 0
        self.spilled_runs = 0
        self.fell_back = False
        self.trailer: bytes | None = None  # the `\\.` piece, held back: it stays last
        self.fallback: TableSort | None = None  # never set here (RunSort's)

    def take_rows(self, buf: bytearray, pos: int, width: int, unpack: Any) -> int:
        """Whole pieces of `buf` from `pos`, up to a zero length, a big row or the end of
        `buf`; where it stopped. The hot loop, one turn a row: the common case inline."""
        end, held, key, memory = len(buf), self.held, self.key, self.memory
        seq, size = self.seq, self.held_bytes
        while pos + width <= end:
            sign, length = unpack(buf, pos)
            stop = pos + width + length
            if sign or length == 0 or length > BIG_ROW or stop > end:
                break
            piece = buf[pos + width : stop]
            pos = stop
            # One row: its only newline ends it (COPY escapes the ones inside values).
            if key is not None and self.trailer is None and piece.find(b"\n") == length - 1:
                try:
                    held.append((key(piece), seq + 1, piece))
                except ValueError:
                    pass
                else:
                    seq += 1
                    size += length + ROW_OVERHEAD
                    if size > memory:
                        self.seq, self.held_bytes = seq, size
                        self._spill_run()
                        held, size = self.held, 0
                    continue
            self.seq, self.held_bytes = seq, size
            self.add_piece(piece, piece, piece.find(b"\n") == length - 1)
            held, key, seq, size = self.held, self.key, self.seq, self.held_bytes
        self.seq, self.held_bytes = seq, size
        return pos

    def add_piece(self, piece: Piece, start: bytes, is_row: bool) -> None:
        """A piece that is not simply a row: maybe the trailer (kept for the end), a big
        row, a surprise, or any piece of a table kept in pg_dump's order."""
        if self.trailer is not None:  # something after what looked like the trailer
            trailer, self.trailer = self.trailer, None
            self.add(trailer, trailer, False)
        if piece == TRAILER:
            self.trailer = TRAILER
            return
        self.add(piece, start, is_row)

    def add(self, piece: Piece, start: bytes, is_row: bool) -> None:
        """One piece (`start`: its first bytes, the whole of it unless it is big;
        `is_row`: it holds exactly one row, ended by its only newline)."""
        self.seq += 1
        order: Any = self.seq
        if self.key is not None:
            try:
                if not is_row:
                    raise Surprise("a piece is not one row")
                order = self.key(start)
            except (Surprise, ValueError):
                self._keep_dump_order()
                order = self.seq
        self.held.append((order, self.seq, piece))
        self.held_bytes += ROW_OVERHEAD + _held_size(piece)
        if self.held_bytes > self.memory:
            self._spill_run()

    def add_at(self, seq: int, piece: Piece) -> None:
        """A piece of a table kept in pg_dump's order, at its place `seq` (1 first)."""
        self.held.append((seq, seq, piece))
        self.held_bytes += ROW_OVERHEAD + _held_size(piece)
        self.seq = max(self.seq, seq)
        if self.held_bytes > self.memory:
            self._spill_run()

    def _spill_run(self) -> None:
        self.held.sort()
        path = self.spill.new_path()
        write_run(path, self.held)
        self.spill.runs.append(path)
        self.spilled_runs += 1
        self.held, self.held_bytes = [], 0

    def _keep_dump_order(self) -> None:
        """From now on every record is keyed by its sequence number; the runs already
        written (keyed by row) are merged and sorted again by it."""
        self.key = None
        self.fell_back = True
        self.held = [(seq, seq, piece) for _key, seq, piece in self.held]
        self.held.sort()
        if self.spill.runs:
            # Each run is sorted by key, not by sequence: merged by sequence from the
            # start of each would be wrong, so they are sorted again as one.
            runs, self.spill.runs = self.spill.runs, []
            again = TableSort(_no_key, self.memory, self.spill)
            again.key = None
            for _key, seq, piece in heapq.merge(*(read_run(r, self.spill, None) for r in runs)):
                again.held.append((seq, seq, piece))
                again.held_bytes += ROW_OVERHEAD + _held_size(piece)
                if again.held_bytes > again.memory:
                    again._spill_run()
            for run in runs:
                run.unlink()
            self.held = sorted(again.held + self.held)
            self.spill.runs = again.spill.runs

    def _merge_into_run(self, runs: list[Path]) -> Path:
        path = self.spill.new_path()
        write_run(path, heapq.merge(*(read_run(r, self.spill, self.key) for r in runs)))
        for run in runs:
            run.unlink()
        return path

    def records(self) -> Iterator[Record]:
        """Every record, in order: the held ones merged with the spilled runs."""
        self.held.sort()
        while len(self.spill.runs) > MERGE_FAN_IN:
            first = self.spill.runs[:MERGE_FAN_IN]
            self.spill.runs = [*self.spill.runs[MERGE_FAN_IN:], self._merge_into_run(first)]
        if not self.spill.runs:
            return iter(self.held)
        runs = [read_run(run, self.spill, self.key) for run in self.spill.runs]
        return heapq.merge(iter(self.held), *runs)


def _no_key(row: bytes) -> Any:
    raise AssertionError("records kept in pg_dump's order are keyed by sequence")


def _held_size(piece: Piece) -> int:
    return 0 if isinstance(piece, BigRow) else len(piece)


class RunSort:
    """The C path (_row_sort) for one table: its pieces gathered as bytes, each run
    sorted in C and written to the spill folder, the runs merged in C into the output.

    A third of the memory bound goes to the run: while it is sorted, its sorted copy and
    the sort's index (about 60 bytes a row) are held too. Each spilled run keeps the
    order file of its pieces' places in the input, so that a surprise in a later run can
    still put the whole table back in pg_dump's order (`fallback`, a TableSort).
    """

    def __init__(self, spec: KeySpec, memory: int, spill: Spill, int_size: int) -> None:
        self.spec, self.memory, self.spill, self.int_size = spec, memory, spill, int_size
        self.target = max(1, memory // 3)
        self.prefix = struct.Struct("<BI" if int_size == 4 else "<BQ")
        self.trailer_piece = self.prefix.pack(0, len(TRAILER)) + TRAILER
        self.run = bytearray()
        self.run_pieces: list[int] = []  # pieces in each spilled run
        self.orders: list[Path] = []
        self.key: Any = spec
        self.trailer: bytes | None = None
        self.fallback: TableSort | None = None
        self.spilled_runs = 0
        self.fell_back = False
        self.references = 0

    def take_rows(self, buf: bytearray, pos: int, width: int, unpack: Any) -> int:
        """Whole pieces of `buf` from `pos` up to a zero length, a piece that goes on past
        `buf` (a big row's, or one whose end comes in the next write) or a split prefix."""
        assert walk_c is not None
        _newlines, stop, _start, _last, status, _length = walk_c(buf, pos, self.int_size)
        end = stop if status == PREFIX_SPLIT else stop - width
        with memoryview(buf) as view:
            self.run += view[pos:end]
        if len(self.run) > self.target:
            self._spill()
        return end

    def add_piece(self, piece: Piece, start: bytes, is_row: bool) -> None:
        """A big row, kept in the big-row file: a reference to it joins the run."""
        assert isinstance(piece, BigRow)
        payload = struct.pack("<QQ", piece.offset, piece.length) + start
        self.run += self.prefix.pack(1, len(payload)) + payload
        self.references += 1
        if not is_row:
            self._fall_back()

    def _spill(self) -> None:
        """Sort the run and write it out; keep the trailer back if the run ends with it."""
        kept = b""
        if self.run.endswith(self.trailer_piece):
            kept = self.trailer_piece
            del self.run[-len(kept) :]
        assert _row_sort is not None
        result = _row_sort.sort_run(self.run, self.int_size, self.spec)
        if result is None:
            self.run += kept
            self._fall_back()
            return
        ordered, places = result
        path = self.spill.new_path()
        path.write_bytes(ordered)
        order = path.with_suffix(".order")
        order.write_bytes(places)
        self.spill.runs.append(path)
        self.orders.append(order)
        self.run_pieces.append(len(places) // 4)
        self.spilled_runs += 1
        self.run = bytearray(kept)

    def finish(self, write: Callable[[bytes], Any], copy_big: Callable[[BigRow], None]) -> None:
        """The table's pieces, in key order, into `write` (unless it falls back)."""
        if self.run.endswith(self.trailer_piece):
            del self.run[-len(self.trailer_piece) :]
            self.trailer = TRAILER
        assert _row_sort is not None
        if not self.spill.runs and not self.references:
            result = _row_sort.sort_run(self.run, self.int_size, self.spec)
            if result is None:
                self._fall_back()
            else:
                write(result[0])
            return
        if self.run:
            self._spill()
            if self.fallback is not None:
                return
        for order in self.orders:
            order.unlink(missing_ok=True)
        while len(self.spill.runs) > MERGE_FAN_IN:
            first = self.spill.runs[:MERGE_FAN_IN]
            path = self.spill.new_path()
            with open(path, "wb") as merged:
                self._merge(first, merged.write, None)
            for run in first:
                run.unlink()
            self.spill.runs = [*self.spill.runs[MERGE_FAN_IN:], path]

        def big(offset: int, length: int) -> None:
            write(self.prefix.pack(0, length))
            copy_big(BigRow(offset, length))

        self._merge(self.spill.runs, write, big)

    def _merge(self, runs: list[Path], write: Callable[[bytes], Any], big: Any) -> None:
        assert _row_sort is not None
        files = [open(run, "rb") for run in runs]  # noqa: SIM115 - closed below
        try:
            _row_sort.merge_runs([f.fileno() for f in files], self.int_size, self.spec, write, big)
        finally:
            for handle in files:
                handle.close()

    def _fall_back(self) -> None:
        """Put everything so far into a TableSort in pg_dump's order, which takes over."""
        table = TableSort(_no_key, self.memory, self.spill)
        table.key, table.fell_back = None, True
        runs, self.spill.runs = self.spill.runs, []
        base = 0
        for run, order, count in zip(runs, self.orders, self.run_pieces, strict=True):
            places = struct.unpack(f"<{count}I", order.read_bytes())
            for place, piece in zip(places, self._pieces(run.read_bytes()), strict=True):
                table.add_at(base + place + 1, piece)
            run.unlink()
            order.unlink()
            base += count
        for piece in self._pieces(bytes(self.run)):
            table.add_at(base + 1, piece)
            base += 1
        table.trailer = self.trailer
        self.run, self.orders, self.run_pieces = bytearray(), [], []
        self.fell_back, self.fallback = True, table

    def _pieces(self, data: bytes) -> Iterator[Piece]:
        """The pieces of a run as written: bytes, or a BigRow for a reference."""
        pos, width = 0, self.prefix.size
        while pos < len(data):
            sign, length = self.prefix.unpack_from(data, pos)
            payload = data[pos + width : pos + width + length]
            pos += width + length
            if sign:
                offset, size = struct.unpack_from("<QQ", payload)
                yield BigRow(offset, size)
            else:
                yield payload


# -- the archive stream ------------------------------------------------------------------
_HEAD, _BLOCK, _SORTED, _BIG, _CHUNKS, _RAW_BYTES, _BLOB_OID, _PASS = range(8)


@dataclass
class OrderStats:
    """What the rewrite did, for the log."""

    sorted_tables: int = 0
    spilled_tables: int = 0
    runs: int = 0
    kept_dump_order: list[str] = field(default_factory=list)
    passed_through: str | None = None  # why the whole rest of the stream was left as it was


class RowOrderWriter:
    """A file-like sink: write pg_dump's -Fc -Z0 stream into it, `finish()` at its end;
    `out` gets the same archive with every table's rows in key order."""

    def __init__(
        self,
        out: BinaryIO,
        primary_keys: dict[tuple[str, str], PrimaryKey],
        folder: Path,
        memory: int,
    ) -> None:
        self.out = out
        self.primary_keys = primary_keys
        self.folder = folder
        self.memory = memory
        self.stats = OrderStats()
        self._state = _HEAD
        self._buf = bytearray()  # appended to: a row cut in many writes costs no copies
        self._next_try = 4096
        self._info: Head | None = None
        self._width = 5
        self._prefix = struct.Struct("<BI")
        self._plans: dict[int, tuple[str, Key, KeySpec | None]] = {}
        self._blob_data = False  # whether the chunks being passed are a large object's
        self._left = 0
        self._table: TableSort | RunSort | None = None
        self._table_name = ""
        self._big_start = b""
        self._big_newlines = 0
        self._big_last = b""

    # -- input ----------------------------------------------------------------------------
    def write(self, data: bytes) -> int:
        if self._state == _PASS:
            self.out.write(data)
            return len(data)
        self._buf += data
        self._advance(final=False)
        return len(data)

    def finish(self) -> None:
        """The stream has ended: write what is still held."""
        self._advance(final=True)
        if self._state == _PASS:
            return
        if self._state != _BLOCK or self._buf:
            raise OperationFailed(
                "pg_dump's output ended inside a table's data, so the dump is not whole; "
                "run the backup again, and check the server's log if it happens again."
            )

    def _advance(self, *, final: bool) -> None:
        """Parse the head once it is all there, then consume what the buffer holds."""
        if self._state == _HEAD:
            self._try_head(final=final)
        if self._state in (_HEAD, _PASS):
            return
        try:
            pos = self._feed(self._buf)
        except _Unexpected as error:
            del self._buf[: error.pos]
            self._pass_rest(str(error))
            return
        del self._buf[:pos]

    def close(self) -> None:
        """Remove every file the sort left (also when the dump failed)."""
        if self._table is not None:
            self._table.spill.close()
            self._table = None

    # -- header and table of contents ------------------------------------------------------
    def _try_head(self, *, final: bool) -> None:
        if not final and len(self._buf) < self._next_try:
            return
        try:
            info = parse_head(bytes(self._buf))
        except _NeedMore:
            self._next_try = 2 * len(self._buf)
            if final or len(self._buf) > MAX_HEAD:
                self._pass_rest("the archive's header did not parse")
            return
        except ArchiveFormatError as error:
            self._pass_rest(str(error))
            return
        self._info = info
        self._width = 1 + info.int_size
        self._prefix = struct.Struct("<BI" if info.int_size == 4 else "<BQ")
        self._plans = self._table_plans(info)
        self.out.write(bytes(self._buf[: info.size]))
        del self._buf[: info.size]
        self._state = _BLOCK

    def _table_plans(self, info: Head) -> dict[int, tuple[str, Key, KeySpec | None]]:
        plans = {}
        for dump_id, (schema, table, copy) in info.copies.items():
            columns, primary_key = copy_columns(copy), self.primary_keys.get((schema, table))
            key = key_function(columns, primary_key)
            plans[dump_id] = (f"{schema}.{table}", key, key_spec(columns, primary_key))
        return plans

    def _pass_rest(self, why: str) -> None:
        """Leave the rest of the stream as pg_dump wrote it (what is held first)."""
        if self._table is not None:
            self._write_table(keep_dump_order=True)
        self.out.write(bytes(self._buf))
        self._buf = bytearray()
        self._state = _PASS
        self.stats.passed_through = why

    # -- data blocks -----------------------------------------------------------------------
    def _int(self, buf: bytearray, pos: int) -> int | None:
        if pos + self._width > len(buf):
            return None
        sign, value = self._prefix.unpack_from(buf, pos)
        if sign:
            raise _Unexpected(pos, "a negative length or id in the data")
        return int(value)

    def _feed(self, buf: bytearray) -> int:
        """Consume what can be consumed of `buf`; where the unconsumed rest starts."""
        pos, end = 0, len(buf)
        while pos < end:
            state = self._state
            if state == _SORTED:
                moved = self._sorted_pieces(buf, pos)
            elif state == _BIG:
                moved = self._big_bytes(buf, pos)
            elif state == _RAW_BYTES:
                take = min(self._left, end - pos)
                self.out.write(bytes(buf[pos : pos + take]))
                self._left -= take
                if self._left == 0:
                    self._state = _CHUNKS
                moved = pos + take
            elif state == _BLOCK:
                moved = self._block_start(buf, pos)
            else:
                moved = self._raw_int(buf, pos)
            if moved == pos:
                break  # the next item continues in the next write
            pos = moved
        return pos

    def _block_start(self, buf: bytearray, pos: int) -> int:
        kind = buf[pos]
        if kind not in (BLK_DATA, BLK_BLOBS):
            raise _Unexpected(pos, f"unknown data block type {kind}")
        dump_id = self._int(buf, pos + 1)
        if dump_id is None:
            return pos
        stop = pos + 1 + self._width
        self.out.write(bytes(buf[pos:stop]))
        plan = self._plans.get(dump_id) if kind == BLK_DATA else None
        if plan is not None:
            self._start_table(*plan)
        elif kind == BLK_DATA:
            self._state, self._blob_data = _CHUNKS, False
        else:
            self._state = _BLOB_OID
        return stop

    def _raw_int(self, buf: bytearray, pos: int) -> int:
        """A length or large-object oid of a block passed as it is."""
        value = self._int(buf, pos)
        if value is None:
            return pos
        stop = pos + self._width
        self.out.write(bytes(buf[pos:stop]))
        if self._state == _BLOB_OID:
            self._state, self._blob_data = (_CHUNKS, True) if value else (_BLOCK, False)
        elif value:
            self._state, self._left = _RAW_BYTES, value
        else:
            self._state = _BLOB_OID if self._blob_data else _BLOCK
        return stop

    def _start_table(self, name: str, key: Key, spec: KeySpec | None) -> None:
        spill = Spill(self.folder, f"t{self.stats.sorted_tables}")
        table: TableSort | RunSort
        if spec is not None and _row_sort is not None and walk_c is not None:
            table = RunSort(spec, self.memory, spill, self._width - 1)
        else:
            table = TableSort(key, self.memory, spill)
        self._table = table
        self._table_name = name
        self._state = _SORTED

    def _sorted_pieces(self, buf: bytearray, pos: int) -> int:
        """A sorted table's pieces, each taken whole, up to what ends them."""
        table = self._table
        assert table is not None
        pos = table.take_rows(buf, pos, self._width, self._prefix.unpack_from)
        self._switch_on_fallback()
        if pos + self._width > len(buf):
            return pos
        sign, length = self._prefix.unpack_from(buf, pos)
        if sign:
            raise _Unexpected(pos, "a negative chunk length")
        if length == 0:
            self._write_table(keep_dump_order=False)
            self.out.write(bytes(buf[pos : pos + self._width]))
            self._state = _BLOCK
            return pos + self._width
        if length > BIG_ROW:
            self._start_big(length)
            return pos + self._width
        return pos  # a piece that goes on in the next write

    def _switch_on_fallback(self) -> None:
        """A RunSort that met a surprise hands the table over to a TableSort."""
        if self._table is not None and self._table.fallback is not None:
            self._table = self._table.fallback

    def _start_big(self, length: int) -> None:
        assert self._table is not None
        big = self._table.spill.big_file()
        self._big_offset = big.seek(0, os.SEEK_END)
        self._left, self._state = length, _BIG
        self._big_start, self._big_newlines, self._big_last = b"", 0, b""

    def _big_bytes(self, buf: bytearray, pos: int) -> int:
        """A big row's bytes, straight to the big-row file."""
        assert self._table is not None
        take = min(self._left, len(buf) - pos)
        part = buf[pos : pos + take]
        self._table.spill.big_file().write(part)
        if len(self._big_start) < KEY_PREFIX:
            self._big_start += part[: KEY_PREFIX - len(self._big_start)]
        self._big_newlines += part.count(b"\n")
        self._big_last = part[-1:]
        self._left -= take
        if self._left == 0:
            self._table.spill.big_file().flush()  # read back with pread
            length = self._table.spill.big_file().tell() - self._big_offset
            is_row = self._big_newlines == 1 and self._big_last == b"\n"
            self._table.add_piece(BigRow(self._big_offset, length), self._big_start, is_row)
            self._switch_on_fallback()
            self._state = _SORTED
        return pos + take

    # -- output ----------------------------------------------------------------------------
    def _write_table(self, *, keep_dump_order: bool) -> None:
        """The held table's pieces, sorted, then its trailer."""
        table = self._table
        assert table is not None
        try:
            if isinstance(table, RunSort):
                spill = table.spill
                if keep_dump_order:
                    table._fall_back()
                else:
                    table.finish(self.out.write, lambda piece: self._copy_big(piece, spill))
                if table.fallback is not None:
                    table = self._table = table.fallback
            if isinstance(table, TableSort):
                if keep_dump_order and table.key is not None:
                    table._keep_dump_order()
                self._write_records(table.records(), table.spill)
            if table.trailer is not None:
                self.out.write(self._prefix.pack(0, len(table.trailer)) + table.trailer)
        finally:
            self._count(table)
            table.spill.close()
            self._table = None

    def _count(self, table: TableSort | RunSort) -> None:
        self.stats.sorted_tables += 1
        if table.spilled_runs:
            self.stats.spilled_tables += 1
            self.stats.runs += table.spilled_runs
        if table.fell_back:
            self.stats.kept_dump_order.append(self._table_name)

    def _write_records(self, records: Iterable[Record], spill: Spill) -> None:
        batch = bytearray()
        pack = self._prefix.pack
        for _key, _seq, piece in records:
            if isinstance(piece, BigRow):
                self.out.write(batch + pack(0, piece.length))
                batch = bytearray()
                self._copy_big(piece, spill)
                continue
            batch += pack(0, len(piece))
            batch += piece
            if len(batch) >= WRITE_BATCH:
                self.out.write(batch)
                batch = bytearray()
        if batch:
            self.out.write(batch)

    def _copy_big(self, piece: BigRow, spill: Spill) -> None:
        done = 0
        while done < piece.length:
            part = spill.read_big(piece.offset + done, min(WRITE_BATCH, piece.length - done))
            if not part:
                raise OperationFailed("a spilled row of the dump could not be read back")
            self.out.write(part)
            done += len(part)
