"""Writing a payload into the store: chunks first, then index objects, then the chunk list
(docs/format.md, "Writing a backup: the order, and the commit point").

The manifest, written by the caller after `finish`, is the commit point. A kill at any
moment leaves durable packs (indexed every `index_every` packs, so the next backup reuses
them), perhaps a list that no manifest names, and `.partial-` files in `store/tmp`.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from cosmic_backup.chunkstore.index_objects import INDEX_CHUNKS_PER_OBJECT, write_index_object
from cosmic_backup.chunkstore.packs import PackWriter
from cosmic_backup.clock import iso
from cosmic_backup.format.chunk_list import ChunkList, ChunkRef, entry_line, render_chunk_list
from cosmic_backup.format.index_text import IndexText, PackRecord
from cosmic_backup.format.objects import seal_object
from cosmic_backup.format.store_config import LIST
from cosmic_backup.storage.local import LocalStore

if TYPE_CHECKING:
    from cosmic_backup.chunkstore.store import ChunkStore

LIST_MAC = "list-mac"
INDEX_EVERY_PACKS = 64
INDEX_EVERY_SECONDS = 600.0
ENTRY_SPOOL_MEMORY = 8 * 1024 * 1024  # entry text past this goes to a file in store/tmp
CUT_EVERY = 16 * 1024 * 1024  # a pushed stream is cut once this much is buffered
SEAL_AHEAD_BYTES = 8 * 1024 * 1024  # new chunks handed to the sealer, not yet sealed
SEAL_BATCH_BYTES = 1024 * 1024  # new chunks go to the sealer in batches of this much
SEAL_BATCH_CHUNKS = 256  # or of this many


@dataclass(frozen=True)
class ChunkListRecord:
    """What the format 2 manifest carries of a backup's chunks (its `chunk_list` field),
    with the payload's size and the bytes the backup added to the store."""

    name: str
    mac: str
    stored_size: int
    chunks: int  # entries of the payload
    new_chunks: int  # chunks this backup stored, the entry text's parts included
    new_packs: int
    plaintext_size: int
    # None for every backup written now: each chunk's keyed id, checked on every read, and
    # the MACed list's order and sizes bind every byte (docs/format.md). Earlier format 2
    # backups recorded the whole payload's SHA-256 when every byte was read; a reader
    # still checks it when it is there.
    plaintext_sha256: str | None
    added_bytes: int  # new packs, index objects and the list: the manifest's stored_size

    def manifest_field(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mac": self.mac,
            "stored_size": self.stored_size,
            "chunks": self.chunks,
            "new_chunks": self.new_chunks,
            "new_packs": self.new_packs,
        }


class ChunkSink:
    """Puts chunks into packs once each: a chunk already in a present pack is only named.

    A chunk's id is taken on the caller's thread, which decides what is new; the new
    chunks are compressed, encrypted and MACed by one thread of its own, at most
    SEAL_AHEAD_BYTES ahead of the caller (a files backup ran all of it on one core: gzip,
    AES and the pack MAC were half its CPU). The caller's thread writes what the sealer
    returns, in order, and commits and indexes the packs: every write, fsync and rename
    of the store happens on that one thread, in the same order as when all of it ran
    inline, and only that thread touches the index. A chunk counts as
    known from the moment it is handed over; a sealing error is raised by a later `put`
    or by `finish`."""

    def __init__(self, store: ChunkStore, index_every: int) -> None:
        self._store = store
        self._loaded = store.loaded_index
        self._index_every = index_every
        self._pack: PackWriter | None = None  # the one being filled (by the sealer)
        self._uncommitted: list[PackWriter] = []  # open or full, not committed yet
        self._unindexed: list[PackRecord] = []
        self._unindexed_chunks = 0
        self._last_index = time.monotonic()
        self._pool = ThreadPoolExecutor(1, "pack-sealer")
        self._in_flight: deque[tuple[int, Future[list[_Sealed]]]] = deque()
        self._in_flight_bytes = 0
        self._batch: list[tuple[bytes, bytes]] = []  # new chunks not handed over yet
        self._batch_bytes = 0
        self._sealing: set[bytes] = set()  # handed over, not in the index yet
        self.new_chunks = 0
        self.new_packs = 0
        self.added_bytes = 0

    def known(self, chunk_id: bytes) -> bool:
        """Is this chunk stored in a pack that is on disk (or one being filled)?"""
        if chunk_id in self._sealing:
            return True
        location = self._loaded.index.lookup(chunk_id)
        return location is not None and location.pack in self._loaded.present

    def put(self, data: bytes | memoryview) -> ChunkRef:
        ref = ChunkRef(self._store.data_key.chunk_id(data), len(data))
        if self.known(ref.chunk_id):
            return ref
        self.new_chunks += 1
        self._sealing.add(ref.chunk_id)
        # A copy: a view of the caller's buffer would change under the sealer. Small
        # chunks (a file each) go over in batches: a hand-over per 2 KiB file cost more
        # than sealing it.
        self._batch.append((ref.chunk_id, bytes(data)))
        self._batch_bytes += len(data)
        if self._batch_bytes >= SEAL_BATCH_BYTES or len(self._batch) >= SEAL_BATCH_CHUNKS:
            self._hand_over()
        return ref

    def _hand_over(self) -> None:
        batch, size = self._batch, self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        self._in_flight.append((size, self._pool.submit(self._seal_batch, batch)))
        self._in_flight_bytes += size
        while self._in_flight and (
            self._in_flight_bytes > SEAL_AHEAD_BYTES or self._in_flight[0][1].done()
        ):
            done, future = self._in_flight.popleft()
            self._in_flight_bytes -= done
            for sealed in future.result():
                self._write(sealed)

    def _seal_batch(self, batch: list[tuple[bytes, bytes]]) -> list[_Sealed]:
        return [self._seal(chunk_id, data) for chunk_id, data in batch]

    def _seal(self, chunk_id: bytes, data: bytes) -> _Sealed:
        """The sealer's part: no file is written here."""
        if self._pack is None:
            store = self._store
            self._pack = PackWriter(store.layout, store.data_key, store.config, store.clock)
            self._uncommitted.append(self._pack)
        pack = self._pack
        _place, stored = pack.seal(chunk_id, data)
        if pack.full:
            self._pack = None
        return _Sealed(pack, stored, pack.full)

    def _write(self, sealed: _Sealed) -> None:
        sealed.pack.write_sealed(sealed.stored)
        if sealed.full:
            self._commit(sealed.pack)

    def _commit(self, writer: PackWriter) -> None:
        pack = writer.commit()
        self._uncommitted.remove(writer)
        self._loaded.index.add_pack(pack)
        self._loaded.present.add(pack.name)
        self._sealing.difference_update(place.chunk_id for place in pack.chunks)
        self._unindexed.append(pack)
        self._unindexed_chunks += len(pack.chunks)
        self.new_packs += 1
        self.added_bytes += pack.stored_size
        overdue = time.monotonic() - self._last_index >= INDEX_EVERY_SECONDS
        full = self._unindexed_chunks >= INDEX_CHUNKS_PER_OBJECT  # bounded to parse, too
        if len(self._unindexed) >= self._index_every or full or overdue:
            self._write_index()

    def _write_index(self) -> None:
        if self._unindexed:
            text = IndexText(written_at=iso(self._store.clock.now()), packs=self._unindexed)
            store = self._store
            name, size = write_index_object(store.layout, store.data_key, store.config, text)
            self._loaded.objects.append(name)
            self.added_bytes += size
            self._unindexed, self._unindexed_chunks = [], 0
        self._loaded.index.merge_fresh()
        self._last_index = time.monotonic()

    def finish(self) -> None:
        """The open pack committed and every committed pack indexed: all durable."""
        if self._batch:
            self._hand_over()
        while self._in_flight:  # in order; the sealer is idle after the last
            for sealed in self._in_flight.popleft()[1].result():
                self._write(sealed)
        self._in_flight_bytes = 0
        if self._pack is not None:
            pack, self._pack = self._pack, None
            self._commit(pack)
        self._write_index()

    def abort(self) -> None:
        """Stop the sealer (what it is doing ends; nothing queued starts) and discard
        every pack not committed."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        for pack in self._uncommitted:
            pack.discard()
        self._uncommitted = []
        self._pack = None


@dataclass(frozen=True)
class _Sealed:
    pack: PackWriter
    stored: bytes
    full: bool  # the pack is to be committed once this is written


def default_payload(component: str) -> str:
    return "dump" if component == "database" else "tar"


class PayloadWriter:
    """One backup's payload: pieces in, chunked by their kind's chunker; `finish` writes
    the chunk list. Use it as a context manager, so a failure leaves no open pack."""

    def __init__(
        self,
        store: ChunkStore,
        component: str,
        backup_id: str,
        payload: str,
        *,
        index_every: int = INDEX_EVERY_PACKS,
    ) -> None:
        self._store = store
        self._component = component
        self._backup_id = backup_id
        self._payload = payload
        self._sink = ChunkSink(store, index_every)
        store.layout.private_folder(store.layout.tmp)
        self._entries: BinaryIO = tempfile.SpooledTemporaryFile(  # type: ignore[assignment]  # noqa: SIM115 - closed by __exit__
            ENTRY_SPOOL_MEMORY, dir=store.layout.tmp
        )
        self._entry_count = 0
        self._size = 0
        self._writers: list[ChunkingWriter] = []

    def __enter__(self) -> PayloadWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for writer in self._writers:
            writer.stop()  # no cut may still be running when the open pack is discarded
        self._sink.abort()
        self._entries.close()

    def _add_chunk(self, data: memoryview) -> ChunkRef:
        ref = self._sink.put(data)
        self._add_entry(ref)
        return ref

    def _add_entry(self, ref: ChunkRef) -> None:
        self._size += ref.plain_length
        self._entries.write(entry_line(ref))
        self._entry_count += 1

    def all_stored(self, refs: list[ChunkRef]) -> bool:
        return all(self._sink.known(ref.chunk_id) for ref in refs)

    def add_stored(self, refs: list[ChunkRef]) -> None:
        """Name chunks already stored (`all_stored`), without their bytes."""
        for ref in refs:
            self._add_entry(ref)

    def add_stream(self, stream: BinaryIO, kind: str) -> None:
        """Cut a stream as it comes (a dump: one stream; it is read to its end)."""
        for chunk in self._store.chunker(kind).cut_stream(stream):
            self._add_chunk(chunk.data)

    def stream_writer(
        self,
        kind: str,
        on_progress: Callable[[int], None] | None = None,
        *,
        background: bool = False,
    ) -> ChunkingWriter:
        """A file-like writer whose bytes are cut as `add_stream` cuts them: for a
        producer that writes (pg_dump's pipe, the tar writer) instead of being read.
        With `background`, the cutting, hashing, compressing and sealing run in a thread
        of their own, so the producer's pipe keeps being read meanwhile."""
        writer = ChunkingWriter(self, kind, on_progress, background=background)
        self._writers.append(writer)
        return writer

    def add_piece(self, data: bytes | memoryview, kind: str) -> None:
        """Cut one piece on its own (a file's tar record: its boundaries are kept)."""
        for chunk in self._store.chunker(kind).cut_buf(data):
            self._add_chunk(chunk.data)

    def _store_entry_text(self) -> tuple[list[ChunkRef], int]:
        entry_text_size = self._entries.tell()
        self._entries.seek(0)
        parts = [
            self._sink.put(chunk.data)
            for chunk in self._store.chunker(LIST).cut_stream(self._entries)
        ]
        return parts, entry_text_size

    def finish(self) -> ChunkListRecord:
        parts, entry_text_size = self._store_entry_text()
        self._sink.finish()  # every chunk durable and indexed before the list names them
        text = render_chunk_list(
            ChunkList(
                self._backup_id,
                self._payload,
                self._size,
                self._entry_count,
                entry_text_size,
                parts,
            )
        )
        store = self._store
        stored, mac = seal_object(text, store.data_key, LIST_MAC, store.config.object_iterations)
        name = store.layout.chunk_list(self._component, self._backup_id).name
        LocalStore(store.layout.root).write_bytes(f"{self._component}/{name}", stored)
        return ChunkListRecord(
            name=name,
            mac=mac,
            stored_size=len(stored),
            chunks=self._entry_count,
            new_chunks=self._sink.new_chunks,
            new_packs=self._sink.new_packs,
            plaintext_size=self._size,
            plaintext_sha256=None,  # each chunk's keyed id and the MACed list stand for it
            added_bytes=self._sink.added_bytes + len(stored),
        )


class ChunkingWriter(io.RawIOBase):
    """Bytes written are buffered and cut by the chunker; every chunk but the last of a
    buffer is final, since a FastCDC cut depends only on the bytes from the chunk's start
    to at most its `max` size. The last one, cut only by the buffer's end, is kept as
    the start of the next buffer, so the chunks equal those of reading the whole stream.

    With `background`, each full block is cut in one worker thread while the next block
    is written: at most one block is in flight (the writer waits for it before handing
    over the next), blocks are cut in order, and a cut's error is raised by the next
    `write`, `end_piece` or `finish`. A dump's producer (pg_dump's pipe) then never waits
    on the sealing of a block, which otherwise stalled it for the whole of our CPU time."""

    def __init__(
        self,
        payload: PayloadWriter,
        kind: str,
        on_progress: Callable[[int], None] | None,
        *,
        background: bool = False,
    ) -> None:
        super().__init__()
        self._payload = payload
        self._chunker = payload._store.chunker(kind)
        self._max = payload._store.config.chunker(kind).max
        self._cut_at = max(CUT_EVERY, 2 * self._max)
        self._incoming = bytearray()  # written, not yet handed to the cutter
        self._buffer = bytearray()  # the cutter's: the start of the next chunk
        self._on_progress = on_progress
        self._cut_refs: list[ChunkRef] = []  # the chunks cut since the last `end_piece`
        self._pool = ThreadPoolExecutor(1, "chunk-cutter") if background else None
        self._pending: Future[None] | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        size = len(data)
        self._incoming += data
        if len(self._incoming) >= self._cut_at:
            self._hand_over()
        if self._on_progress is not None:
            self._on_progress(size)
        return size

    def _hand_over(self) -> None:
        block, self._incoming = self._incoming, bytearray()
        if self._pool is None:
            self._absorb(block)
            return
        self._wait()
        self._pending = self._pool.submit(self._absorb, block)

    def _wait(self) -> None:
        """The block in flight cut; its error, if it had one, raised here."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _absorb(self, block: bytearray) -> None:
        start = self._cut_carried(block) if self._buffer else 0
        if start < 0:  # a block shorter than a chunk: joined as it is
            self._buffer += block
            start = 0
        else:
            self._buffer = block
        self._cut(final=False, start=start)

    def _cut_carried(self, block: bytearray) -> int:
        """Cut the carried-over chunk, which ends in `block`'s first `max` bytes (a chunk
        is at most `max` long, and no cut lies before the block: the carried bytes held
        none), from the two joined up to there, instead of copying all of `block` behind
        it. Returns where in `block` the next chunk starts, or -1 when `block` is too
        short to be sure of the cut."""
        carried = len(self._buffer)
        if len(block) <= self._max:
            return -1
        with memoryview(block) as view:
            head = self._buffer + view[: self._max]
        first = next(iter(self._chunker.cut_buf(head)))
        if first.length < carried:  # cannot happen (see above); the safe way if it did
            return -1
        with memoryview(head) as view:
            self._add(view[: first.length])
        self._buffer = bytearray()
        return first.length - carried

    def _cut(self, *, final: bool, start: int = 0) -> None:
        """Cut the buffer from `start` (what lies before it is already cut) and keep the
        rest, which the buffer's end cut, as the start of the next chunk."""
        with memoryview(self._buffer) as whole, whole[start:] as view:
            cuts = [(c.offset, c.length) for c in self._chunker.cut_buf(view)]
            if not final and cuts:
                cuts.pop()  # its end is the buffer's, not a boundary
            for offset, length in cuts:
                self._add(view[offset : offset + length])
        done = start + (cuts[-1][0] + cuts[-1][1] if cuts else 0)
        del self._buffer[:done]

    def _add(self, chunk: memoryview) -> None:
        self._cut_refs.append(self._payload._add_chunk(chunk))

    def end_piece(self) -> list[ChunkRef]:
        """A boundary here: what is buffered is cut now, so the next byte starts a chunk.
        Returns the chunks cut since the last boundary."""
        if self._incoming:
            self._hand_over()
        self._wait()
        if self._buffer:
            self._cut(final=True)
        refs, self._cut_refs = self._cut_refs, []
        return refs

    def finish(self) -> None:
        """Cut what is left: the payload's last chunks."""
        self.end_piece()
        self.stop()

    def stop(self) -> None:
        """Wait for the block in flight, whatever its outcome, and end the thread (the
        payload writer's exit calls it first, before the open pack is discarded)."""
        if self._pool is not None:
            if self._pending is not None:
                self._pending.exception()  # waits; a failure was or will be raised elsewhere
            self._pool.shutdown(wait=True)
