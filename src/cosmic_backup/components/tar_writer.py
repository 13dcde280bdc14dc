"""Writing tar streams of folders, shared by the files and config components.

Folders are walked in sorted order and streamed (``tarfile`` mode ``w|``), so memory
stays bounded whatever the tree's size. Every entry is opened relative to its already
opened parent and never through a link, so a folder swapped for a symlink while the
backup runs is not followed; symlinks are stored as links. Files that vanish, change or
cannot be read are reported, not fatal. Excluded paths (the backup folder, the key, the
keyring, the logs) are left out by identity: device and inode, whatever path leads there.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol, runtime_checkable

from cosmic_backup.chunkstore.files_cache import FileState, tar_record_size

OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: FIFOs
COPY_CHUNK = 1024 * 1024  # a file's content is read and handed on in pieces of this size


class _Content(Protocol):
    def read(self, count: int, /) -> bytes: ...


@runtime_checkable
class RecordSink(Protocol):
    """An `out` that wants the tar's records marked (the chunk store's RecordWriter cuts
    chunks there) and may name an unchanged file's stored record instead of its bytes."""

    caching: bool

    def write(self, data: bytes, /) -> int: ...
    def begin_record(self) -> None: ...
    def end_header(self, size: int) -> None: ...
    def end_record(self) -> None: ...
    def reuse_file(self, path: str, info: os.stat_result, header: bytes) -> bool: ...
    def file_read(self, path: str, info: os.stat_result, header: bytes, trusted: bool) -> None: ...


class _PlainOut:
    """A plain stream (an artifact, a test's BytesIO): no records, nothing reused."""

    caching = False

    def __init__(self, out: BinaryIO) -> None:
        self.write = out.write

    def begin_record(self) -> None:
        pass

    def end_header(self, size: int) -> None:
        pass

    def end_record(self) -> None:
        pass

    def reuse_file(self, path: str, info: os.stat_result, header: bytes) -> bool:
        return False

    def file_read(self, path: str, info: os.stat_result, header: bytes, trusted: bool) -> None:
        pass


@dataclass
class TreeStats:
    files: int = 0
    folders: int = 0
    links: int = 0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # skipped: could not be opened
    read_errors: list[str] = field(default_factory=list)  # stored cut short: a read failed
    excluded: list[str] = field(default_factory=list)  # the backup folder, key, logs...


def link_leaves_root(name: PurePosixPath, target: str) -> bool:
    """Does the link `name` -> `target` point at or above the archive root, on its own?"""
    if not target or PurePosixPath(target).is_absolute():
        return True
    depth = len(name.parent.parts)
    for part in PurePosixPath(target).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part != ".":
            depth += 1
    return False


# -- writing ------------------------------------------------------------------------------
class _ExactReader:
    """Feeds tarfile exactly `size` bytes of a file that may change while it is read.

    A file that shrank is padded with zeros and one that grew is cut, so the tar stream
    stays well-formed; `changed` tells the caller to report it.
    """

    def __init__(self, handle: io.FileIO, size: int) -> None:
        self._handle = handle
        self._left = size
        self.done = 0  # bytes read from the file itself
        self.changed = False
        # A read that failed (EIO from a bad disk): the rest is zeros, the caller reports it.
        self.error: OSError | None = None

    def read(self, count: int = -1) -> bytes:
        if count < 0 or count > self._left:
            count = self._left
        data = self._read_fully(count) if self.error is None else b""
        self.done += len(data)
        if len(data) < count:
            self.changed = self.error is None
            data += b"\0" * (count - len(data))
        self._left -= count
        return data

    def _read_fully(self, count: int) -> bytes:
        """Up to `count` bytes (a short read is not yet the end of the file)."""
        data = b""
        try:
            while len(data) < count:
                more = self._handle.read(count - len(data))
                if not more:
                    break
                data += more
        except OSError as exc:  # the source's fault, never the backup folder's
            self.error = exc
        return data


@dataclass
class _Folder:
    """A folder being walked: its open descriptor and the children still to add."""

    fd: int
    arcname: str
    children: list[str]  # sorted, reversed: pop() yields the next one


class TarWriter:
    """Writes a tar stream of trees and small in-memory files into a binary stream.

    Headers come from tarfile (`TarInfo.tobuf`, PAX format, as `tarfile.open("w|")`
    writes them); the bytes go straight to `out`, file contents in reads of COPY_CHUNK:
    tarfile's own stream copies each file through a 10 KiB buffer in 16 KiB reads, which
    cost more CPU than hashing the data. The output is byte for byte what tarfile writes.
    """

    def __init__(self, out: BinaryIO, log: logging.Logger, exclude: Iterable[Path] = ()) -> None:
        self._excluded = identities(exclude)
        self._out: RecordSink = out if isinstance(out, RecordSink) else _PlainOut(out)
        self._offset = 0  # bytes written so far: the end is padded to a whole record
        self._log = log
        self.stats = TreeStats()

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:  # the end-of-archive blocks; `out` stays open
            self._write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
            remainder = self._offset % tarfile.RECORDSIZE
            if remainder:
                self._write(tarfile.NUL * (tarfile.RECORDSIZE - remainder))

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._offset += len(data)

    @staticmethod
    def _header(member: tarfile.TarInfo) -> bytes:
        return member.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")

    def _addfile(self, member: tarfile.TarInfo, content: _Content | None = None) -> bytes:
        """Write one record (header, content, padding); returns its header."""
        header = self._header(member)
        self._out.begin_record()
        self._write(header)
        self._out.end_header(member.size)
        if content is not None and member.size:
            self._copy(member, content)
        self._out.end_record()
        return header

    def _copy(self, member: tarfile.TarInfo, content: _Content) -> None:
        left = member.size
        while left:
            data = content.read(min(COPY_CHUNK, left))
            if not data:  # _ExactReader pads, so only a short in-memory file gets here
                raise OSError(f"{member.name}: ended {left} bytes early")
            self._write(data)
            left -= len(data)
        remainder = member.size % tarfile.BLOCKSIZE
        if remainder:
            self._write(tarfile.NUL * (tarfile.BLOCKSIZE - remainder))

    def add_bytes(self, arcname: str, data: bytes, mode: int = 0o600) -> None:
        info = tarfile.TarInfo(arcname)
        info.size = len(data)
        info.mode = mode
        info.mtime = int(time.time())
        self._addfile(info, io.BytesIO(data))

    def add_tree(self, source: Path, arcname: str) -> None:
        """Add a file, a link or a whole folder (sorted, depth first) under `arcname`."""
        walk: list[_Folder] = []
        try:
            self._add_entry(walk, None, os.fspath(source), arcname)
            while walk:
                folder = walk[-1]
                if not folder.children:
                    os.close(walk.pop().fd)
                    continue
                child = folder.children.pop()
                self._add_entry(walk, folder.fd, child, f"{folder.arcname}/{child}")
        finally:
            for folder in walk:
                os.close(folder.fd)

    def _warn(self, message: str) -> None:
        self.stats.warnings.append(message)
        self._log.warning("%s", message)

    def _unreadable(self, name: str, exc: OSError | None = None) -> None:
        self.stats.unreadable.append(name)
        why = f" ({exc.strerror})" if exc is not None and exc.strerror else ""
        self._log.warning("%s cannot be read%s; skipped", name, why)

    def _add_entry(self, walk: list[_Folder], parent: int | None, name: str, arcname: str) -> None:
        try:
            info = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            self._warn(f"{arcname} vanished before it was read")
            return
        except OSError as exc:  # EIO, EACCES...: this entry's problem, not the backup's
            self._unreadable(arcname, exc)
            return
        if (info.st_dev, info.st_ino) in self._excluded:
            self.stats.excluded.append(arcname)
            self._log.info("%s left out: the backup folder, key, keyring or logs", arcname)
            return
        if stat.S_ISLNK(info.st_mode):
            self._add_link(parent, name, arcname, info)
        elif stat.S_ISDIR(info.st_mode):
            self._add_folder(walk, parent, name, arcname, info)
        elif stat.S_ISREG(info.st_mode):
            self._add_file(parent, name, arcname, info)
        else:
            self._warn(f"{arcname} is a socket, device or FIFO; skipped")

    def _open(self, parent: int | None, name: str, arcname: str, flags: int = 0) -> int | None:
        """Open an entry without following a link; None (reported) when it cannot be."""
        try:
            return os.open(name, OPEN_FLAGS | flags, dir_fd=parent)
        except FileNotFoundError:
            self._warn(f"{arcname} vanished before it was read")
        except OSError as exc:
            # ELOOP/ENOTDIR: replaced by a link or a file since it was looked at.
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
                self._warn(f"{arcname} changed while it was read; skipped")
            else:  # EACCES, EIO...
                self._unreadable(arcname, exc)
        return None

    def _tarinfo(self, name: str, info: os.stat_result, kind: bytes) -> tarfile.TarInfo:
        member = tarfile.TarInfo(name)
        member.type = kind
        member.mode = stat.S_IMODE(info.st_mode)
        member.mtime = int(info.st_mtime)
        member.uid, member.gid = info.st_uid, info.st_gid
        return member

    def _add_link(self, parent: int | None, name: str, arcname: str, info: os.stat_result) -> None:
        try:
            target = os.readlink(name, dir_fd=parent)
        except FileNotFoundError:
            self._warn(f"{arcname} vanished before it was read")
            return
        if link_leaves_root(PurePosixPath(arcname), target):
            # A restore refuses such a link, so storing it would make the backup useless.
            self._warn(
                f"{arcname} is a link to '{target}', outside the backed-up folders; "
                "not stored (recreate it by hand after a restore)"
            )
            return
        member = self._tarinfo(arcname, info, tarfile.SYMTYPE)
        member.linkname = target
        self._addfile(member)
        self.stats.links += 1

    def _add_folder(
        self,
        walk: list[_Folder],
        parent: int | None,
        name: str,
        arcname: str,
        info: os.stat_result,
    ) -> None:
        self._addfile(self._tarinfo(arcname, info, tarfile.DIRTYPE))
        self.stats.folders += 1
        fd = self._open(parent, name, arcname, os.O_DIRECTORY)
        if fd is None:
            return
        try:
            with os.scandir(fd) as entries:
                children = sorted((entry.name for entry in entries), reverse=True)
        except OSError as exc:
            os.close(fd)
            self._warn(f"{arcname} could not be listed ({exc.strerror}); its content skipped")
            return
        walk.append(_Folder(fd, arcname, children))

    def _file_member(self, arcname: str, info: os.stat_result) -> tarfile.TarInfo:
        member = self._tarinfo(arcname, info, tarfile.REGTYPE)
        member.size = info.st_size
        return member

    def _count_file(self, size: int) -> None:
        self.stats.files += 1
        self.stats.bytes += size

    def _add_file(self, parent: int | None, name: str, arcname: str, info: os.stat_result) -> None:
        # The header rebuilt from the stat must match the cached one too: a new owner,
        # mode or name is a new header even where the cache's stat fields would agree.
        if self._out.caching:
            header = self._header(self._file_member(arcname, info))
            if self._out.reuse_file(arcname, info, header):
                # Unchanged since the last backup: not opened, its stored record named.
                self._offset += tar_record_size(len(header), info.st_size)
                self._count_file(info.st_size)
                return
        fd = self._open(parent, name, arcname)
        if fd is None:
            return
        with os.fdopen(fd, "rb", buffering=0) as handle:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                self._warn(f"{arcname} changed while it was read; skipped")
                return
            reader = _ExactReader(handle, before.st_size)
            header = self._addfile(self._file_member(arcname, before), reader)
            after = os.fstat(fd)
        # ctime too: a write whose mtime was set back while it was read still shows there.
        changed = reader.changed or FileState.of(after) != FileState.of(before)
        trusted = reader.error is None and not changed  # only then may the cache keep it
        if reader.error is not None:
            # The header is already in the stream: the member stays, cut short and
            # padded, and the warning says so (a streamed tar cannot take it back).
            self.stats.read_errors.append(arcname)
            self._warn(
                f"{arcname} could not be read ({reader.error.strerror or reader.error}) after "
                f"{reader.done} of {before.st_size} bytes; its copy in this backup is cut short "
                "(padded with zeros): check that disk and back it up again"
            )
        elif changed:
            self._warn(f"{arcname} changed while it was read; the copy may be inconsistent")
        self._out.file_read(arcname, before, header, trusted)
        self._count_file(before.st_size)


def identities(paths: Iterable[Path]) -> frozenset[tuple[int, int]]:
    """(device, inode) of each existing path, and of what it links to."""
    found = set()
    for path in paths:
        for follow in (False, True):
            try:
                info = path.stat(follow_symlinks=follow)
            except OSError:
                continue
            found.add((info.st_dev, info.st_ino))
    return frozenset(found)
