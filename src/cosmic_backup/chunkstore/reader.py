"""Reading a payload back (docs/format.md, "Reading: restore, verify, and what a damaged
chunk breaks").

The list's MAC first, then its `backup` line; then every chunk is placed and every pack it
needs is checked to be there before the first payload byte is returned; each pack's MAC is
checked in full before any of its members is decompressed, every chunk against its id and
length, and the payload's size and SHA-256 at the end.
"""

from __future__ import annotations

import hashlib
import hmac
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, BinaryIO

from cosmic_backup.catalog import COMPONENTS
from cosmic_backup.chunkstore.packs import PackProblem, cut_member, read_pack
from cosmic_backup.chunkstore.writer import LIST_MAC, ChunkListRecord
from cosmic_backup.errors import IntegrityError
from cosmic_backup.format.chunk_list import ChunkList, ChunkRef, parse_chunk_list, parse_entries
from cosmic_backup.format.objects import open_object

if TYPE_CHECKING:
    from cosmic_backup.chunkstore.index import Location
    from cosmic_backup.chunkstore.store import ChunkStore

READ_STEP = 1024 * 1024
MiB = 1024 * 1024
# Read ahead by the chunk-reading thread: chunks are handed over in batches of about
# BATCH_BYTES (or BATCH_CHUNKS small ones), at most AHEAD_BYTES of plaintext in flight.
BATCH_BYTES = 1 * MiB
BATCH_CHUNKS = 256
AHEAD_BYTES = 8 * MiB
WHAT_TO_DO = (
    "Run `cosmic-backup verify` to see every backup it breaks, then restore another backup "
    "or pull the store from the off-site copy."
)


def component_of(backup_id: str) -> str:
    component = backup_id.split("-", 1)[0]
    if component not in COMPONENTS:
        raise IntegrityError(f"{backup_id!r} is not the id of a backup.")
    return component


class BrokenChunk(IntegrityError):
    """A chunk a backup needs cannot be read: `why` says so, `pack` is where it should be
    (None when no index object places it). `verify` groups them by pack."""

    def __init__(self, backup_id: str, chunk_id: bytes, why: str, pack: str | None) -> None:
        super().__init__(
            f"Backup {backup_id} cannot be read: its chunk {chunk_id.hex()} {why}. " + WHAT_TO_DO
        )
        self.chunk_id = chunk_id
        self.why = why
        self.pack = pack


class ChunkReader:
    """Chunks by id, through the loaded index, keeping the last pack's plaintext."""

    def __init__(self, store: ChunkStore, backup_id: str) -> None:
        self._store = store
        self._backup_id = backup_id
        self._pack_name: str | None = None
        self._pack_plaintext = b""

    def _refused(self, ref: ChunkRef, why: str, pack: str | None = None) -> BrokenChunk:
        return BrokenChunk(self._backup_id, ref.chunk_id, why, pack)

    def locate(self, ref: ChunkRef) -> Location:
        location = self._store.loaded_index.index.lookup(ref.chunk_id)
        if location is None:
            problems = self._store.loaded_index.problems
            damaged = f" (damaged index objects: {', '.join(sorted(problems))})" if problems else ""
            raise self._refused(ref, f"is in no index object of the store{damaged}")
        return location

    def check_present(self, ref: ChunkRef, checked: set[str]) -> None:
        pack = self.locate(ref).pack
        if pack not in checked:
            if not self._store.layout.pack(pack).is_file():
                raise self._refused(ref, f"is in the pack {pack}, which is missing", pack)
            checked.add(pack)

    def read(self, ref: ChunkRef) -> bytes:
        return self.check_id(ref, *self.cut(ref))

    def cut(self, ref: ChunkRef) -> tuple[bytes, Location]:
        """A chunk cut from its pack (whose MAC is checked first) and gunzipped; its id is
        not checked yet: `check_id` does that before it is used."""
        location = self.locate(ref)
        if location.pack != self._pack_name:
            self._pack_name, self._pack_plaintext = None, b""
            store = self._store
            try:
                plaintext = read_pack(store.layout, store.data_key, store.config, location.pack)
            except PackProblem as exc:
                raise self._refused(
                    ref, f"is in the pack {exc.pack}, which {exc.what}", exc.pack
                ) from None
            self._pack_name, self._pack_plaintext = location.pack, plaintext
        try:
            data = cut_member(self._pack_plaintext, location.offset, location.length)
        except IntegrityError as exc:  # the pack's MAC held: its index object is wrong
            raise self._refused(
                ref, f"cannot be cut from the pack {location.pack} ({exc.message})", location.pack
            ) from None
        return data, location

    def check_id(self, ref: ChunkRef, data: bytes, location: Location) -> bytes:
        if len(data) != ref.plain_length or len(data) != location.plain_length:
            raise self._refused(
                ref, f"read from the pack {location.pack} has the wrong length", location.pack
            )
        actual = self._store.data_key.chunk_id(data)
        if not hmac.compare_digest(actual, ref.chunk_id):
            raise self._refused(
                ref, f"read from the pack {location.pack} does not match its id", location.pack
            )
        return data


def open_chunk_list(store: ChunkStore, record: ChunkListRecord, backup_id: str) -> ChunkList:
    path = store.layout.root / component_of(backup_id) / record.name
    try:
        stored = path.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(
            f"Backup {backup_id} cannot be read: its chunk list {path} is missing. "
            "Restore another backup, or pull this one from the off-site copy."
        ) from None
    try:
        if len(stored) != record.stored_size:
            raise IntegrityError("wrong size")
        text = open_object(
            stored, store.data_key, LIST_MAC, record.mac, store.config.object_iterations
        )
    except IntegrityError:
        raise IntegrityError(
            f"Backup {backup_id} cannot be read: its chunk list {path} fails its integrity "
            "check (MAC mismatch): it is damaged or was replaced. Restore another backup."
        ) from None
    chunk_list = parse_chunk_list(text, str(path))
    if chunk_list.backup != backup_id:
        raise IntegrityError(
            f"The chunk list {path} is the list of backup {chunk_list.backup}, not of "
            f"{backup_id}: it was copied or renamed. Do not trust it; restore another backup."
        )
    if chunk_list.size != record.plaintext_size:
        raise IntegrityError(
            f"The chunk list {path} gives a payload size that its manifest does not: it is "
            "not the list the manifest describes. Restore another backup."
        )
    return chunk_list


class _EntryText:
    """A backup's entry text, rebuilt from its parts into a private temporary file, so a
    million-chunk backup's 76 MB of entries never sit in memory."""

    def __init__(self, store: ChunkStore, chunk_list: ChunkList, reader: ChunkReader) -> None:
        store.layout.private_folder(store.layout.tmp)
        self._file: BinaryIO = tempfile.TemporaryFile(dir=store.layout.tmp)  # noqa: SIM115 - closed by close()
        for part in chunk_list.parts:
            self._file.write(reader.read(part))
        self._name = f"the chunk list of {chunk_list.backup}"
        self._count = chunk_list.entries

    def entries(self) -> Iterator[ChunkRef]:
        self._file.seek(0)
        count = 0
        for entry in parse_entries(iter(lambda: self._file.read(READ_STEP), b""), self._name):
            count += 1
            yield entry
        if count != self._count:
            raise IntegrityError(f"{self._name} has {count} entries where it says {self._count}.")

    def close(self) -> None:
        self._file.close()


def read_payload(
    store: ChunkStore, record: ChunkListRecord, backup_id: str, *, read_ahead: bool = False
) -> Iterator[bytes]:
    """The payload's chunks in order, each checked. With `read_ahead`, one thread of its
    own reads, checks and gunzips the packs and chunks while the caller uses the ones
    before (a files restore: the tar is parsed and written while the next pack is MACed)."""
    chunk_list = open_chunk_list(store, record, backup_id)
    reader = ChunkReader(store, backup_id)
    entry_text = _EntryText(store, chunk_list, reader)
    try:
        checked: set[str] = set()
        for entry in entry_text.entries():  # nothing is returned unless every pack is there
            reader.check_present(entry, checked)
        entries = entry_text.entries()
        chunks = _read_ahead(reader, entries) if read_ahead else map(reader.read, entries)
        yield from _checked_payload(chunks, record, backup_id)
    finally:
        entry_text.close()


def _cut_batch(reader: ChunkReader, batch: list[ChunkRef]) -> list[tuple[bytes, Location]]:
    return [reader.cut(entry) for entry in batch]


def _batches(entries: Iterable[ChunkRef]) -> Iterator[tuple[int, list[ChunkRef]]]:
    batch: list[ChunkRef] = []
    size = 0
    for entry in entries:
        batch.append(entry)
        size += entry.plain_length
        if size >= BATCH_BYTES or len(batch) >= BATCH_CHUNKS:
            yield size, batch
            batch, size = [], 0
    if batch:
        yield size, batch


def _read_ahead(reader: ChunkReader, entries: Iterable[ChunkRef]) -> Iterator[bytes]:
    """Chunks in order, cut from their packs by one worker thread at most AHEAD_BYTES
    ahead of the caller, and checked against their ids here.

    The checks are the reader's own and happen in the same order; a broken chunk is
    raised here after every chunk before it and before any after it. The file reads,
    HMACs and gunzip release the GIL, so the threads overlap on two cores: the worker
    MACs, decrypts and gunzips the packs, this thread checks each chunk's id (and the
    caller takes the payload's SHA-256), which balances the two."""
    pool = ThreadPoolExecutor(1, "chunk-reader")
    pending: deque[tuple[int, list[ChunkRef], Future[list[tuple[bytes, Location]]]]] = deque()
    ahead = 0

    def handed_over() -> Iterator[bytes]:
        nonlocal ahead
        size, batch, future = pending.popleft()
        ahead -= size
        for ref, (data, location) in zip(batch, future.result(), strict=True):
            yield reader.check_id(ref, data, location)

    try:
        for size, batch in _batches(entries):
            pending.append((size, batch, pool.submit(_cut_batch, reader, batch)))
            ahead += size
            while ahead > AHEAD_BYTES:
                yield from handed_over()
        while pending:
            yield from handed_over()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _checked_payload(
    chunks: Iterable[bytes], record: ChunkListRecord, backup_id: str
) -> Iterator[bytes]:
    # No SHA-256 is recorded when the writer named unchanged files' chunks unread; each
    # chunk's id was checked above, and the MACed list gives their order. Then only the
    # size is checked, and no hash is taken that nothing would compare.
    expected = record.plaintext_sha256
    size, sha256 = 0, hashlib.sha256() if expected is not None else None
    for data in chunks:
        size += len(data)
        if sha256 is not None:
            sha256.update(data)
        yield data
    if size != record.plaintext_size or (sha256 is not None and sha256.hexdigest() != expected):
        raise IntegrityError(
            f"Backup {backup_id}'s payload does not have the size and SHA-256 its manifest "
            "records. Do not use what was read; restore another backup."
        )


def chunks_of(store: ChunkStore, record: ChunkListRecord, backup_id: str) -> Iterator[ChunkRef]:
    """Every chunk a backup needs: its entry text's parts, then its payload's entries."""
    chunk_list = open_chunk_list(store, record, backup_id)
    yield from chunk_list.parts
    entry_text = _EntryText(store, chunk_list, ChunkReader(store, backup_id))
    try:
        yield from entry_text.entries()
    finally:
        entry_text.close()
