"""The loaded index: where each chunk is, in bounded memory (docs/format.md, "Index objects").

A sorted array of fixed 48-byte records (chunk id 32 bytes, then pack number, offset,
length and plain length, 4 bytes each, big-endian), searched by bisection: 48 MB at a
million chunks, where a dict of tuples costs about five times that. Chunks of packs
committed during a run wait in a small dict and are merged in at each index flush, so the
dict never grows past the chunks of 64 packs.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from cosmic_backup.format.index_text import ChunkPlace, IndexText, PackRecord

RECORD = struct.Struct(">32sIIII")
ID_BYTES = 32


@dataclass(frozen=True)
class Location:
    pack: str
    offset: int
    length: int
    plain_length: int


class _Ids:
    """The ids of a record array as a sequence, for `bisect`, without copying them out."""

    def __init__(self, records: bytes | bytearray) -> None:
        self._records = records

    def __len__(self) -> int:
        return len(self._records) // RECORD.size

    def __getitem__(self, position: int) -> bytes | bytearray:
        start = position * RECORD.size
        return self._records[start : start + ID_BYTES]


def _record_runs(records: bytes | bytearray) -> Iterator[bytes | bytearray]:
    for start in range(0, len(records), RECORD.size):
        yield records[start : start + RECORD.size]


class ChunkIndex:
    def __init__(self) -> None:
        self._records = bytearray()
        self._fresh: dict[bytes, bytes] = {}
        self._pack_names: list[str] = []
        self._pack_numbers: dict[str, int] = {}
        self.pack_sizes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._records) // RECORD.size + len(self._fresh)

    @property
    def nbytes(self) -> int:
        """The bytes of the sorted records (the figure the memory budget is about)."""
        return len(self._records)

    @property
    def packs(self) -> list[str]:
        return list(self._pack_names)

    def _pack_number(self, pack: PackRecord) -> int:
        number = self._pack_numbers.get(pack.name)
        if number is None:
            number = self._pack_numbers[pack.name] = len(self._pack_names)
            self._pack_names.append(pack.name)
            self.pack_sizes[pack.name] = pack.stored_size
        return number

    def _record(self, number: int, place: ChunkPlace) -> bytes:
        return RECORD.pack(place.chunk_id, number, place.offset, place.length, place.plain_length)

    def _location(self, record: bytes | bytearray) -> Location:
        _, number, offset, length, plain_length = RECORD.unpack(record)
        return Location(self._pack_names[number], offset, length, plain_length)

    def lookup(self, chunk_id: bytes) -> Location | None:
        if (fresh := self._fresh.get(chunk_id)) is not None:
            return self._location(fresh)
        ids = _Ids(self._records)
        position = bisect.bisect_left(ids, chunk_id)
        if position < len(ids) and ids[position] == chunk_id:
            start = position * RECORD.size
            return self._location(self._records[start : start + RECORD.size])
        return None

    def add_pack(self, pack: PackRecord) -> None:
        """A pack committed by this run: its chunks are found at once, merged in later."""
        number = self._pack_number(pack)
        for place in pack.chunks:
            self._fresh[place.chunk_id] = self._record(number, place)

    def merge_fresh(self) -> None:
        """Insert the waiting records into the sorted array: one copy, k bisections."""
        if not self._fresh:
            return
        ids = _Ids(self._records)
        pieces: list[bytes | bytearray] = []
        done = 0  # records of the old array already copied
        for chunk_id in sorted(self._fresh):
            position = bisect.bisect_left(ids, chunk_id, lo=done)
            pieces.append(self._records[done * RECORD.size : position * RECORD.size])
            pieces.append(self._fresh[chunk_id])
            done = position
            if position < len(ids) and ids[position] == chunk_id:
                done += 1  # the new record replaces the old one (its pack may be gone)
        pieces.append(self._records[done * RECORD.size :])
        self._records = bytearray(b"".join(pieces))
        self._fresh.clear()

    def places_by_pack(self, packs: set[str]) -> dict[str, list[ChunkPlace]]:
        """Every chunk of the named packs, by pack: one pass over the records (an index
        object written for another location must name all of a pack's chunks)."""
        numbers = {self._pack_numbers[name] for name in packs if name in self._pack_numbers}
        found: dict[str, list[ChunkPlace]] = {name: [] for name in packs}
        fresh = RECORD.iter_unpack(b"".join(self._fresh.values()))
        for chunk_id, number, offset, length, plain_length in itertools.chain(
            RECORD.iter_unpack(self._records), fresh
        ):
            if number in numbers:
                place = ChunkPlace(chunk_id, offset, length, plain_length)
                found[self._pack_names[number]].append(place)
        return found

    def sorted_run(self, index_text: IndexText) -> bytes:
        """One index object's records, sorted: 48 bytes a chunk, no object per chunk kept."""
        records = [
            self._record(self._pack_number(pack), place)
            for pack in index_text.packs
            for place in pack.chunks
        ]
        records.sort()
        return b"".join(records)

    def load(self, runs: Iterable[bytes], pack_present: Callable[[str], bool]) -> None:
        """Replace the contents with the union of sorted runs (`sorted_run`), merged in one
        pass: memory is the records twice at most, never a Python object per chunk."""
        merged = bytearray()
        last: bytes | bytearray = b""
        for record in heapq.merge(*(_record_runs(run) for run in runs)):
            if record[:ID_BYTES] == last[:ID_BYTES]:
                # The same chunk in two packs (an interrupted repack): either is right if
                # its pack is there, so keep one whose pack is.
                if not pack_present(self._location(last).pack) and pack_present(
                    self._location(record).pack
                ):
                    merged[-RECORD.size :] = record
                    last = record
                continue
            merged += record
            last = record
        self._records = merged
        self._fresh.clear()
