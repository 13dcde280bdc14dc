"""The backup root's chunk store as the operations use it: opened with the user's key,
and a format 2 backup's payload read back as a file, or checked chunk by chunk."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

from cosmic_backup.chunkstore.keys import wrap_fingerprints, write_wrap
from cosmic_backup.chunkstore.layout import StoreLayout
from cosmic_backup.chunkstore.store import ChunkStore
from cosmic_backup.chunkstore.writer import ChunkListRecord
from cosmic_backup.errors import IntegrityError, KeyProblem, NotFound
from cosmic_backup.format.keys import Key
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.operations.context import Runtime


def open_chunk_store(rt: Runtime, key: Key, *, create: bool = False) -> ChunkStore:
    """The store under the backup root, unwrapped with `key`; `create` makes a missing one
    with the `kdf_iterations` setting as its wrap's count."""
    wrap_iterations = rt.settings.kdf_iterations if create else None
    if not create and not (rt.catalog.root / "store" / "config").is_file():
        raise NotFound(
            f"The chunk store of {rt.catalog.root} is missing (store/config), so its chunked "
            "backups cannot be read; pull it from the off-site copy or restore another backup."
        )
    try:
        return ChunkStore.open(
            rt.catalog.root, key, wrap_iterations=wrap_iterations, clock=rt.clock
        )
    except KeyProblem:
        if not create:
            raise
        return _wrap_for_current_key(rt, key)


def _wrap_for_current_key(rt: Runtime, key: Key) -> ChunkStore:
    """After `key rotate`, the first backup wraps the data key for the new key too, opened
    with a retired key from the keyring: one small file, no chunk written again."""
    layout = StoreLayout(rt.catalog.root)
    for fingerprint in wrap_fingerprints(layout):
        retired = rt.keys.lookup(fingerprint)
        if retired is not None:
            store = ChunkStore.open(rt.catalog.root, retired, clock=rt.clock)
            write_wrap(layout, store.data_key, key, store.config.wrap_iterations)
            rt.log.info("the chunk store's data key is now wrapped for the key %s", key.fingerprint)
            return store
    raise KeyProblem(
        f"The chunk store of {rt.catalog.root} was made with the key(s) "
        f"{', '.join(wrap_fingerprints(layout)) or 'none'}, which are neither the current key "
        f"{key.fingerprint} nor in the keyring: put the old key in the keyring "
        "(BACKUP_KEYRING_DIR) or move the store aside."
    )


def chunk_list_record(manifest: Manifest) -> ChunkListRecord:
    """The record `finish` gave when the backup was written, from its (verified) manifest."""
    listed = manifest.chunk_list
    if not listed or manifest.plaintext_size is None:  # no SHA-256 when files were reused
        raise IntegrityError(
            f"The manifest of {manifest.id} is of a chunked backup but records no chunk list; "
            "it cannot be trusted."
        )
    try:
        return ChunkListRecord(
            plaintext_size=manifest.plaintext_size,
            plaintext_sha256=manifest.plaintext_sha256,
            added_bytes=manifest.stored_size or 0,
            **listed,
        )
    except TypeError:
        raise IntegrityError(
            f"The manifest of {manifest.id} has a chunk list record this version does not know."
        ) from None


def store_for(rt: Runtime, manifest: Manifest, key: Key) -> ChunkStore:
    store = open_chunk_store(rt, key)
    check_same_store(manifest, store)
    return store


def check_same_store(manifest: Manifest, store: ChunkStore) -> None:
    if manifest.data_key != store.data_key.fingerprint:
        raise IntegrityError(
            f"The backup {manifest.id} was written with the data key {manifest.data_key}, but "
            f"the chunk store of this root has {store.data_key.fingerprint}: it is another "
            "root's store. Restore it from its own backup root."
        )


class PayloadReader(io.RawIOBase):
    """A format 2 payload as a file: the chunks in order, each checked (see reader.py);
    the payload's size and SHA-256 are checked when its last byte is read."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        super().__init__()
        self._pieces = pieces
        self._pending = memoryview(b"")
        self.on_progress: Callable[[int], None] | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._pending = memoryview(piece)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        if self.on_progress is not None:
            self.on_progress(size)
        return size


def open_chunked(rt: Runtime, manifest: Manifest, key: Key) -> PayloadReader:
    """A reader of a format 2 backup's payload. The list's MAC is checked, and every pack
    it needs is checked to be there, before this returns: a missing pack is refused before
    a restore starts; a damaged one when reached, before any of its bytes are returned.

    Tars (files, config) are read ahead in a thread of their own; a database payload is
    not: pg_restore, psql and the server keep both cores busy, and side by side a read-ahead
    thread gained nothing there and raised the peak RSS by 56 MiB (f84ac7f)."""
    store = store_for(rt, manifest, key)
    pieces = store.read_payload(
        chunk_list_record(manifest), manifest.id, read_ahead=manifest.component != "database"
    )
    first = next(pieces, b"")  # runs the checks that come before the first byte

    def everything() -> Iterator[bytes]:
        yield first
        yield from pieces

    return PayloadReader(everything())
