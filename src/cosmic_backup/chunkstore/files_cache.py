"""The files cache (docs/format.md, "The files cache"): what each file of the last backup
was, so that an unchanged file is named by its chunks instead of being read.

`store/cache/files-<component>.sqlite`, mode 0600, local only. A backup reads the old
cache and writes a new one beside it (`.new`), which takes its place only once the
backup's manifest is written; a failed or killed backup leaves the old one. Losing or
damaging it costs one full read, nothing else, so a cache that cannot be read is ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

from cosmic_backup.chunkstore.layout import StoreLayout
from cosmic_backup.format.chunk_list import ChunkRef
from cosmic_backup.storage.local import PRIVATE_FILE, fsync_dir

NEW_SUFFIX = ".new"
# Keyed by the path in the archive, as its folder and its name: the walk asks for one
# folder's files in a row, so one query per folder answers them (not one per file).
SCHEMA = (
    "CREATE TABLE files (folder BLOB, name BLOB, size INTEGER, mtime_ns INTEGER, "
    "ctime_ns INTEGER, inode INTEGER, device INTEGER, header_sha256 BLOB, chunks BLOB, "
    "PRIMARY KEY (folder, name)) WITHOUT ROWID"
)
FOLDERS_KEPT = 16  # folders' rows held at once: those the walk is inside, and a few more
INSERT_EVERY = 1000  # rows written to the new cache in one statement
_REF = struct.Struct(">32sI")  # a chunk id and its plain length, as the `chunks` column packs them


@dataclass(frozen=True)
class FileState:
    """What the cache compares: a file whose stat gives the same is taken as unchanged."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, info: os.stat_result) -> FileState:
        return cls(info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev)


def tar_record_size(header_length: int, size: int) -> int:
    """A file's tar record: its header, then its content padded to whole 512-byte blocks."""
    return header_length + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def cache_path(layout: StoreLayout, component: str) -> Path:
    return layout.cache / f"files-{component}.sqlite"


def header_digest(header: bytes) -> bytes:
    return hashlib.sha256(header).digest()


def _path_key(path: str) -> tuple[bytes, bytes]:
    """(folder, name) as bytes; names that are not UTF-8 stay exact."""
    folder, _, name = path.encode("utf-8", "surrogateescape").rpartition(b"/")
    return folder, name


def _pack_refs(refs: list[ChunkRef]) -> bytes:
    return b"".join(_REF.pack(ref.chunk_id, ref.plain_length) for ref in refs)


def _unpack_refs(blob: bytes) -> list[ChunkRef]:
    return [ChunkRef(chunk_id, length) for chunk_id, length in _REF.iter_unpack(blob)]


class FilesCache:
    """The old cache, read; the new one, written as the backup goes."""

    def __init__(self, layout: StoreLayout, component: str, log: logging.Logger) -> None:
        self._log = log
        self.path = cache_path(layout, component)
        self._new_path = self.path.with_name(self.path.name + NEW_SUFFIX)
        layout.private_folder(layout.cache)
        self._old = self._open_old()
        self._folders: dict[bytes, dict[bytes, tuple]] = {}
        self._new = self._create_new()
        self._pending: list[tuple] = []

    def _open_old(self) -> sqlite3.Connection | None:
        if not self.path.is_file():
            return None
        try:
            old = sqlite3.connect(f"{self.path.as_uri()}?mode=ro&immutable=1", uri=True)
            old.execute("SELECT folder, name, chunks FROM files LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            self._unreadable(exc)
            return None
        return old

    def _unreadable(self, exc: sqlite3.Error) -> None:
        self._log.warning(
            "the files cache %s cannot be read (%s); the files are read instead", self.path, exc
        )

    def _create_new(self) -> sqlite3.Connection:
        # Under the root's lock, a `.new` cache is a killed backup's: it is never used.
        self._new_path.unlink(missing_ok=True)
        os.close(os.open(self._new_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
        new = sqlite3.connect(self._new_path, isolation_level="DEFERRED")
        # No journal: an interrupted new cache is deleted, never read.
        new.execute("PRAGMA journal_mode=OFF")
        new.execute("PRAGMA synchronous=OFF")
        new.execute(SCHEMA)
        return new

    def _folder_rows(self, folder: bytes) -> dict[bytes, tuple]:
        """The cached rows of one folder's files, by name, from one query."""
        rows = self._folders.pop(folder, None)
        if rows is None and self._old is not None:
            query = (
                "SELECT name, size, mtime_ns, ctime_ns, inode, device, header_sha256, chunks "
                "FROM files WHERE folder = ?"
            )
            rows = {row[0]: row[1:] for row in self._old.execute(query, (folder,))}
        rows = rows or {}
        self._folders[folder] = rows  # the most recently used last
        while len(self._folders) > FOLDERS_KEPT:
            del self._folders[next(iter(self._folders))]
        return rows

    def lookup(self, path: str, state: FileState, header: bytes) -> list[ChunkRef] | None:
        """The chunks of the file's record, if it was cached with this stat and header."""
        if self._old is None:
            return None
        folder, name = _path_key(path)
        try:
            row = self._folder_rows(folder).pop(name, None)  # each file is asked for once
        except sqlite3.DatabaseError as exc:
            self._unreadable(exc)
            self._old = None
            return None
        if row is None or FileState(*row[:5]) != state or row[5] != header_digest(header):
            return None
        return _unpack_refs(row[6])

    def remember(self, path: str, state: FileState, header: bytes, refs: list[ChunkRef]) -> None:
        self._pending.append(
            (
                *_path_key(path),
                state.size,
                state.mtime_ns,
                state.ctime_ns,
                state.inode,
                state.device,
                header_digest(header),
                _pack_refs(refs),
            )
        )
        if len(self._pending) >= INSERT_EVERY:
            self._write_pending()

    def _write_pending(self) -> None:
        self._new.executemany(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", self._pending
        )
        self._pending = []

    def _close_old(self) -> None:
        if self._old is not None:
            self._old.close()
            self._old = None

    def commit(self) -> None:
        """After the manifest: the new cache replaces the old one, durably."""
        self._close_old()
        self._write_pending()
        self._new.commit()
        self._new.close()
        with open(self._new_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(self._new_path, self.path)
        fsync_dir(self.path.parent)

    def discard(self) -> None:
        """The backup failed: the old cache stays as it was."""
        self._close_old()
        with contextlib.suppress(sqlite3.Error):
            self._new.close()
        self._new_path.unlink(missing_ok=True)
