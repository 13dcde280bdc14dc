"""Safe tar streams, shared by the files and config components.

Writing: folders are walked in sorted order and streamed (``tarfile`` mode ``w|``), so
memory stays bounded whatever the tree's size; symlinks are stored as links, never
followed; files that vanish, change or cannot be read are reported, not fatal.

Reading: members are streamed (mode ``r|``) and each is checked before anything is
written: no absolute paths, no ``..``, no links leaving the folder, nothing written
through a symlink, no hard links to anything but an already extracted file, no devices,
FIFOs or other special members. The first unsafe member stops the extraction and is
named in the error.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from cosmic_backup.errors import CosmicError, ExitCode, OperationFailed

COPY_CHUNK = 1024 * 1024
SAFE_MODE_BITS = 0o1777  # permission bits and sticky; setuid/setgid only when asked
PRIVATE_DIR = 0o700


class UnsafeArchive(CosmicError):
    """An archive member that would write outside the target or create a special file."""

    exit_code = ExitCode.INTEGRITY


@dataclass
class TreeStats:
    files: int = 0
    folders: int = 0
    links: int = 0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


@dataclass
class ExtractStats:
    files: int = 0
    folders: int = 0
    links: int = 0
    bytes: int = 0


# -- writing ------------------------------------------------------------------------------
class _ExactReader:
    """Feeds tarfile exactly `size` bytes of a file that may change while it is read.

    A file that shrank is padded with zeros and one that grew is cut, so the tar stream
    stays well-formed; `changed` tells the caller to report it.
    """

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self._handle = handle
        self._left = size
        self.changed = False

    def read(self, count: int = -1) -> bytes:
        if count < 0 or count > self._left:
            count = self._left
        data = self._handle.read(count)
        if len(data) < count:
            self.changed = True
            data += b"\0" * (count - len(data))
        self._left -= count
        return data


class TarWriter:
    """Writes a tar stream of trees and small in-memory files into a binary stream."""

    def __init__(self, out: BinaryIO, log: logging.Logger) -> None:
        self._tar = tarfile.open(  # noqa: SIM115 - closed by __exit__, after the last member
            fileobj=out, mode="w|", format=tarfile.PAX_FORMAT
        )
        self._log = log
        self.stats = TreeStats()

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._tar.close()  # writes the end-of-archive blocks; leaves `out` open
        else:
            # After an error nothing more may be written: mark the stream closed, or
            # tarfile's finaliser would try to flush it into the broken output later.
            self._tar.closed = True
            self._tar.fileobj.closed = True  # type: ignore[union-attr]

    def _addfile(self, member: tarfile.TarInfo, content: object = None) -> None:
        self._tar.addfile(member, content)  # type: ignore[arg-type]
        self._tar.members.clear()  # tarfile keeps every member otherwise: memory per file

    def add_bytes(self, arcname: str, data: bytes, mode: int = 0o600) -> None:
        import io
        import time

        info = tarfile.TarInfo(arcname)
        info.size = len(data)
        info.mode = mode
        info.mtime = int(time.time())
        self._addfile(info, io.BytesIO(data))

    def add_tree(self, source: Path, arcname: str) -> None:
        """Add a file, a link or a whole folder (sorted, depth first) under `arcname`."""
        stack = [(source, arcname)]
        while stack:
            path, name = stack.pop()
            children = self._add_entry(path, name)
            # Reversed so that popping yields the sorted order.
            stack.extend(reversed(children))

    def _warn(self, message: str) -> None:
        self.stats.warnings.append(message)
        self._log.warning("%s", message)

    def _add_entry(self, path: Path, name: str) -> list[tuple[Path, str]]:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            self._warn(f"{name} vanished before it was read")
            return []
        if stat.S_ISLNK(info.st_mode):
            self._add_link(path, name, info)
        elif stat.S_ISDIR(info.st_mode):
            return self._add_folder(path, name, info)
        elif stat.S_ISREG(info.st_mode):
            self._add_file(path, name)
        else:
            self._warn(f"{name} is a socket, device or FIFO; skipped")
        return []

    def _tarinfo(self, name: str, info: os.stat_result, kind: bytes) -> tarfile.TarInfo:
        member = tarfile.TarInfo(name)
        member.type = kind
        member.mode = stat.S_IMODE(info.st_mode)
        member.mtime = int(info.st_mtime)
        member.uid, member.gid = info.st_uid, info.st_gid
        return member

    def _add_link(self, path: Path, name: str, info: os.stat_result) -> None:
        member = self._tarinfo(name, info, tarfile.SYMTYPE)
        member.linkname = os.readlink(path)
        self._addfile(member)
        self.stats.links += 1

    def _add_folder(self, path: Path, name: str, info: os.stat_result) -> list[tuple[Path, str]]:
        self._addfile(self._tarinfo(name, info, tarfile.DIRTYPE))
        self.stats.folders += 1
        try:
            with os.scandir(path) as entries:
                names = sorted(entry.name for entry in entries)
        except PermissionError:
            self._unreadable(name)
            return []
        except FileNotFoundError:
            self._warn(f"{name} vanished while it was read")
            return []
        return [(path / child, f"{name}/{child}") for child in names]

    def _unreadable(self, name: str) -> None:
        self.stats.unreadable.append(name)
        self._log.warning("%s cannot be read; skipped", name)

    def _add_file(self, path: Path, name: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            self._warn(f"{name} vanished before it was read")
            return
        except PermissionError:
            self._unreadable(name)
            return
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # replaced by a symlink since we looked
                self._warn(f"{name} changed while it was read")
                return
            raise
        with os.fdopen(fd, "rb") as handle:
            before = os.fstat(fd)
            member = self._tarinfo(name, before, tarfile.REGTYPE)
            member.size = before.st_size
            reader = _ExactReader(handle, before.st_size)
            self._addfile(member, reader)
            after = os.fstat(fd)
        if reader.changed or (after.st_size, after.st_mtime_ns) != (
            before.st_size,
            before.st_mtime_ns,
        ):
            self._warn(f"{name} changed while it was read; the copy may be inconsistent")
        self.stats.files += 1
        self.stats.bytes += before.st_size


# -- reading ------------------------------------------------------------------------------
def _refuse(member: tarfile.TarInfo, why: str) -> UnsafeArchive:
    return UnsafeArchive(
        f"The archive member '{member.name}' was refused: {why}. Nothing was written outside "
        "the staging folder; this backup may have been crafted or damaged."
    )


def _safe_relative(member: tarfile.TarInfo) -> PurePosixPath:
    """The member's path inside the target, or an UnsafeArchive error."""
    name = member.name
    if not name or "\0" in name:
        raise _refuse(member, "it has no usable name")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")):
        raise _refuse(member, "it has an absolute path")
    if ".." in path.parts:
        raise _refuse(member, "its path contains '..'")
    parts = [part for part in path.parts if part != "."]
    if not parts:
        raise _refuse(member, "it names the target folder itself")
    return PurePosixPath(*parts)


def _check_link_target(member: tarfile.TarInfo, relative: PurePosixPath) -> None:
    target = member.linkname
    if not target or PurePosixPath(target).is_absolute():
        raise _refuse(member, f"it is a link to the absolute path '{target}'")
    resolved: list[str] = list(relative.parent.parts)
    for part in PurePosixPath(target).parts:
        if part == "..":
            if not resolved:
                raise _refuse(member, f"its link target '{target}' leaves the folder")
            resolved.pop()
        elif part != ".":
            resolved.append(part)


def _check_kind(member: tarfile.TarInfo) -> None:
    if member.isreg() or member.isdir() or member.issym() or member.islnk():
        return
    kinds = {
        tarfile.CHRTYPE: "a character device",
        tarfile.BLKTYPE: "a block device",
        tarfile.FIFOTYPE: "a FIFO",
    }
    raise _refuse(member, f"it is {kinds.get(member.type, 'a special file')}")


def check_member(member: tarfile.TarInfo) -> PurePosixPath:
    """Everything that can be said of a member without the target: path, kind, link."""
    relative = _safe_relative(member)
    _check_kind(member)
    if member.issym():
        _check_link_target(member, relative)
    return relative


def list_members(source: BinaryIO) -> ExtractStats:
    """Read the whole archive, checking every member is safe (for verify)."""
    stats = ExtractStats()
    files: set[str] = set()  # names of regular files so far, for hard links
    with tarfile.open(fileobj=source, mode="r|") as tar:
        for member in tar:
            relative = check_member(member)
            if member.islnk():
                _hard_link_source(member, files)
            elif member.isreg():
                files.add(str(relative))
            _count(stats, member)
            tar.members.clear()  # streamed: do not keep every member in memory
    return stats


def _hard_link_source(member: tarfile.TarInfo, files: set[str]) -> PurePosixPath:
    """A hard link may only point at a regular file extracted before it."""
    try:
        source = _safe_relative(tarfile.TarInfo(member.linkname))
    except UnsafeArchive:
        source = None
    if source is None or str(source) not in files:
        raise _refuse(
            member,
            f"it is a hard link to '{member.linkname}', which is not a file extracted before it",
        )
    return source


def _count(stats: ExtractStats, member: tarfile.TarInfo) -> None:
    if member.isdir():
        stats.folders += 1
    elif member.issym() or member.islnk():
        stats.links += 1
    else:
        stats.files += 1
        stats.bytes += member.size


def safe_extract(source: BinaryIO, dest: Path, *, restore_owner: bool = False) -> ExtractStats:
    """Extract a tar stream into `dest` (new or empty), refusing any unsafe member."""
    dest.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise OperationFailed(f"The folder {dest} is not empty; extraction needs an empty one.")
    extractor = _Extractor(dest, restore_owner and os.geteuid() == 0)
    with tarfile.open(fileobj=source, mode="r|") as tar:
        for member in tar:
            extractor.extract(tar, member)
            tar.members.clear()  # streamed: do not keep every member in memory
    extractor.finish()
    while source.read(COPY_CHUNK):  # read to the end, so the stream's checks run
        pass
    return extractor.stats


class _Extractor:
    def __init__(self, dest: Path, restore_owner: bool) -> None:
        self.dest = dest
        self.restore_owner = restore_owner
        self.stats = ExtractStats()
        self._folders: list[tuple[Path, tarfile.TarInfo]] = []
        self._files: set[str] = set()

    def extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        relative = check_member(member)
        target = self.dest.joinpath(*relative.parts)
        self._prepare_parents(member, relative)
        if os.path.lexists(target) and not (member.isdir() and target.is_dir()):
            raise _refuse(member, "it would overwrite another member of the archive")
        if member.isdir():
            if not target.is_dir():
                target.mkdir(mode=PRIVATE_DIR)
            self._folders.append((target, member))
        elif member.issym():
            target.symlink_to(member.linkname)
            self._set_times_and_owner(target, member, follow=False)
        elif member.islnk():
            self._hard_link(member, target)
        else:
            self._write_file(tar, member, target)
            self._files.add(str(relative))
        _count(self.stats, member)

    def _prepare_parents(self, member: tarfile.TarInfo, relative: PurePosixPath) -> None:
        """Create missing parent folders; refuse to go through a symlink or a file."""
        current = self.dest
        for part in relative.parts[:-1]:
            current = current / part
            try:
                info = os.lstat(current)
            except FileNotFoundError:
                current.mkdir(mode=PRIVATE_DIR)
                continue
            if stat.S_ISLNK(info.st_mode):
                raise _refuse(member, f"it would be written through the symlink '{part}'")
            if not stat.S_ISDIR(info.st_mode):
                raise _refuse(member, f"its parent '{part}' is not a folder")

    def _hard_link(self, member: tarfile.TarInfo, target: Path) -> None:
        source = _hard_link_source(member, self._files)
        os.link(self.dest.joinpath(*source.parts), target, follow_symlinks=False)

    def _write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
        content = tar.extractfile(member)
        assert content is not None
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            while chunk := content.read(COPY_CHUNK):
                handle.write(chunk)
        os.chmod(target, self._mode(member))
        self._set_times_and_owner(target, member, follow=True)

    def _mode(self, member: tarfile.TarInfo) -> int:
        return member.mode & (0o7777 if self.restore_owner else SAFE_MODE_BITS)

    def _set_times_and_owner(self, target: Path, member: tarfile.TarInfo, *, follow: bool) -> None:
        if self.restore_owner:
            os.chown(target, member.uid, member.gid, follow_symlinks=follow)
        os.utime(target, (member.mtime, member.mtime), follow_symlinks=follow)

    def finish(self) -> None:
        """Folders' modes and times last, deepest first, once their content is in place."""
        for target, member in sorted(self._folders, key=lambda item: -len(item[0].parts)):
            os.chmod(target, self._mode(member))
            self._set_times_and_owner(target, member, follow=True)
