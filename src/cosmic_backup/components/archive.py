"""Safe tar streams, shared by the files and config components.

Writing: folders are walked in sorted order and streamed (``tarfile`` mode ``w|``), so
memory stays bounded whatever the tree's size. Every entry is opened relative to its
already opened parent and never through a link, so a folder swapped for a symlink while
the backup runs is not followed; symlinks are stored as links. Files that vanish, change
or cannot be read are reported, not fatal.

Reading: members are streamed (mode ``r|``) and each is checked before anything is
written: no absolute paths, no ``..``, nothing written through a symlink or over another
member, no hard links to anything but a file extracted before them, no devices, FIFOs or
other special members. Symlinks are created last, once the whole archive has been read
and every link, followed through any chain of other links, is known to stay inside the
target. The first unsafe member stops the extraction and is named in the error.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import stat
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, NamedTuple

from cosmic_backup.errors import IntegrityError, OperationFailed

COPY_CHUNK = 64 * 1024  # measured: tarfile reads records one by one, so bigger is slower
SAFE_MODE_BITS = 0o1777  # permission bits and sticky; never setuid/setgid
PRIVATE_DIR = 0o700
LINK_HOPS = 40  # the kernel's own limit: a longer chain is a loop nobody can follow
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: FIFOs


class UnsafeArchive(IntegrityError):
    """An archive member that would write outside the target or create a special file."""


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


@dataclass
class ExtractStats:
    files: int = 0
    folders: int = 0
    links: int = 0
    bytes: int = 0
    # Members whose owner in the archive could not be given back (not running as root).
    owners_not_kept: int = field(default=0, compare=False)
    # Top-level folders the archive has a member for (with an owner and a mode).
    tops: set[str] = field(default_factory=set, compare=False)


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
    """Writes a tar stream of trees and small in-memory files into a binary stream."""

    def __init__(self, out: BinaryIO, log: logging.Logger, exclude: Iterable[Path] = ()) -> None:
        self._excluded = identities(exclude)
        self._tar = tarfile.open(  # noqa: SIM115 - closed by __exit__, after the last member
            fileobj=out,
            mode="w|",
            format=tarfile.PAX_FORMAT,  # tarfile's own buffer sizes: larger ones are slower
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
            self._add_file(parent, name, arcname)
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

    def _add_file(self, parent: int | None, name: str, arcname: str) -> None:
        fd = self._open(parent, name, arcname)
        if fd is None:
            return
        with os.fdopen(fd, "rb", buffering=0) as handle:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                self._warn(f"{arcname} changed while it was read; skipped")
                return
            member = self._tarinfo(arcname, before, tarfile.REGTYPE)
            member.size = before.st_size
            reader = _ExactReader(handle, before.st_size)
            self._addfile(member, reader)
            after = os.fstat(fd)
        if reader.error is not None:
            # The header is already in the stream: the member stays, cut short and
            # padded, and the warning says so (a streamed tar cannot take it back).
            self.stats.read_errors.append(arcname)
            self._warn(
                f"{arcname} could not be read ({reader.error.strerror or reader.error}) after "
                f"{reader.done} of {before.st_size} bytes; its copy in this backup is cut short "
                "(padded with zeros): check that disk and back it up again"
            )
        elif reader.changed or (after.st_size, after.st_mtime_ns) != (
            before.st_size,
            before.st_mtime_ns,
        ):
            self._warn(f"{arcname} changed while it was read; the copy may be inconsistent")
        self.stats.files += 1
        self.stats.bytes += before.st_size


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


# -- checking -----------------------------------------------------------------------------
def _shown(name: str) -> str:
    """A member's name as it may be printed: no terminal escapes from a crafted archive."""
    printable = "".join(c if c.isprintable() else repr(c)[1:-1] for c in name[:300])
    return printable.encode("utf-8", "backslashreplace").decode("utf-8")


def _refuse(name: str, why: str) -> UnsafeArchive:
    return UnsafeArchive(
        f"The archive member '{_shown(name)}' was refused: {why}. Nothing was written outside "
        "the target folder; this backup may have been crafted or damaged."
    )


def _safe_relative(name: str) -> PurePosixPath:
    """The member's path inside the target, or an UnsafeArchive error."""
    if not name or "\0" in name:
        raise _refuse(name, "it has no usable name")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise _refuse(name, "it has an absolute path")
    if ".." in path.parts:
        raise _refuse(name, "its path contains '..'")
    if not path.parts:
        raise _refuse(name, "it names the target folder itself")
    return path


def check_member(member: tarfile.TarInfo) -> PurePosixPath:
    """Everything that can be said of a member on its own: path, kind, link target."""
    relative = _safe_relative(member.name)
    if member.issym():
        if link_leaves_root(relative, member.linkname):
            raise _refuse(member.name, f"it is a link to '{_shown(member.linkname)}', outside")
    elif not (member.isreg() or member.isdir() or member.islnk()):
        kinds = {
            tarfile.CHRTYPE: "a character device",
            tarfile.BLKTYPE: "a block device",
            tarfile.FIFOTYPE: "a FIFO",
        }
        raise _refuse(member.name, f"it is {kinds.get(member.type, 'a special file')}")
    return relative


def _digest(path: str) -> int:
    data = path.encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class _Namespace:
    """What the archive has created so far, as far as its safety depends on it.

    Folders and files are kept as 64-bit digests of their names (a million files cost
    tens of MB, not hundreds); symlinks are kept whole, to follow their chains at the end.
    The same checks run for verify (no disk) and for extraction.
    """

    def __init__(self) -> None:
        self.folders: set[int] = set()
        self.files: set[int] = set()
        self.links: dict[str, str] = {}
        self._checked_parent = ""

    def admit(self, member: tarfile.TarInfo) -> PurePosixPath:
        relative = check_member(member)
        self._admit_parents(member.name, relative.parent)
        name = str(relative)
        digest = _digest(name)
        taken = digest in self.files or (digest in self.folders and not member.isdir())
        if taken or name in self.links:
            raise _refuse(member.name, "it would overwrite another member of the archive")
        if member.isdir():
            self.folders.add(digest)
        elif member.issym():
            self.links[name] = member.linkname
        else:
            if member.islnk():
                self.hard_link_source(member)
            self.files.add(digest)
        return relative

    def _admit_parents(self, shown: str, parent: PurePosixPath) -> None:
        """Every parent is a folder: never a file, never a link to write through."""
        if str(parent) == self._checked_parent:  # as for the previous member
            return
        for index in range(1, len(parent.parts) + 1):
            prefix = "/".join(parent.parts[:index])
            if prefix in self.links:
                raise _refuse(shown, f"it would be written through the symlink '{prefix}'")
            digest = _digest(prefix)
            if digest in self.files:
                raise _refuse(shown, f"its parent '{prefix}' is not a folder")
            self.folders.add(digest)
        self._checked_parent = str(parent)

    def hard_link_source(self, member: tarfile.TarInfo) -> PurePosixPath:
        """A hard link may only point at a regular file extracted before it."""
        try:
            source: PurePosixPath | None = _safe_relative(member.linkname)
        except UnsafeArchive:
            source = None
        if source is None or _digest(str(source)) not in self.files:
            raise _refuse(
                member.name,
                f"it is a hard link to '{_shown(member.linkname)}', which is not a file "
                "extracted before it",
            )
        return source

    def check_links(self) -> None:
        """Follow every link through the others: none may lead outside the target."""
        for name, target in self.links.items():
            if self._escapes(name):
                raise _refuse(name, f"its link target '{_shown(target)}' leads outside, via links")

    def _escapes(self, name: str) -> bool:
        current = list(PurePosixPath(name).parent.parts)
        pending = list(reversed(PurePosixPath(self.links[name]).parts))
        hops = 0
        while pending:
            part = pending.pop()
            if part == "..":
                if not current:
                    return True
                current.pop()
            elif part != ".":
                candidate = "/".join([*current, part])
                if candidate not in self.links:
                    current.append(part)
                    continue
                hops += 1
                if hops > LINK_HOPS:
                    return False  # a loop: the kernel refuses to follow it
                pending.extend(reversed(PurePosixPath(self.links[candidate]).parts))
        return False


def _count(stats: ExtractStats, member: tarfile.TarInfo) -> None:
    if member.isdir():
        stats.folders += 1
    elif member.issym() or member.islnk():
        stats.links += 1
    else:
        stats.files += 1
        stats.bytes += member.size


def _read_stream(source: BinaryIO) -> tarfile.TarFile:
    return tarfile.open(fileobj=source, mode="r|")


def _damaged(exc: tarfile.TarError) -> IntegrityError:
    return IntegrityError(f"The archive is damaged ({exc}); pick another backup.")


def list_members(source: BinaryIO) -> ExtractStats:
    """Read the whole archive, checking every member is safe (for verify)."""
    stats = ExtractStats()
    names = _Namespace()
    try:
        with _read_stream(source) as tar:
            for member in tar:
                names.admit(member)
                _count(stats, member)
                tar.members.clear()  # streamed: do not keep every member in memory
    except tarfile.TarError as exc:
        raise _damaged(exc) from exc
    names.check_links()
    return stats


# -- extracting ---------------------------------------------------------------------------
def safe_extract(
    source: BinaryIO,
    dest: Path,
    *,
    restore_owner: bool = False,
    skip: Iterable[PurePosixPath] = (),
) -> ExtractStats:
    """Extract a tar stream into `dest` (new or empty), refusing any unsafe member.

    `restore_owner`: give files their owners from the archive (only root can; otherwise
    the stats count the members whose owner could not be kept). Members at or under a
    path of `skip` are checked but not written.
    """
    dest.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise OperationFailed(f"The folder {dest} is not empty; extraction needs an empty one.")
    extractor = _Extractor(dest, restore_owner, frozenset(skip))
    try:
        with _read_stream(source) as tar:
            for member in tar:
                extractor.extract(tar, member)
                tar.members.clear()  # streamed: do not keep every member in memory
        extractor.finish()
        while source.read(COPY_CHUNK):  # read to the end, so the stream's checks run
            pass
    except tarfile.TarError as exc:
        raise _damaged(exc) from exc
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        raise OperationFailed(
            f"Extracting the backup into {dest} failed ({exc.strerror or exc}{where}); "
            "check the free space and permissions there."
        ) from exc
    return extractor.stats


class _Later(NamedTuple):
    """What a folder or a link still needs once the whole archive is in place."""

    path: Path
    linkname: str
    mode: int
    mtime: float
    uid: int
    gid: int


def _later(path: Path, member: tarfile.TarInfo) -> _Later:
    return _Later(path, member.linkname, member.mode, member.mtime, member.uid, member.gid)


class _Extractor:
    def __init__(self, dest: Path, restore_owner: bool, skip: frozenset[PurePosixPath]) -> None:
        self.dest = dest
        self.restore_owner = restore_owner and os.geteuid() == 0
        self._count_owners = restore_owner and not self.restore_owner
        self._me = (os.geteuid(), os.getegid())
        self._skip = skip
        self.names = _Namespace()
        self.stats = ExtractStats()
        self._folders: list[_Later] = []
        self._links: list[_Later] = []  # created last, once all of them are known safe
        self._made_parent = ""

    def _skipped(self, relative: PurePosixPath) -> bool:
        return bool(self._skip) and any(
            relative == place or place in relative.parents for place in self._skip
        )

    def extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        relative = self.names.admit(member)
        if self._skipped(relative) or (
            member.islnk() and self._skipped(self.names.hard_link_source(member))
        ):
            return  # e.g. an old backup's copy of the backup folder: never restored
        if self._count_owners and (member.uid, member.gid) != self._me:
            self.stats.owners_not_kept += 1
        target = self.dest.joinpath(*relative.parts)
        self._make_parents(member.name, relative.parent)
        if member.isdir():
            self._make_folder(member.name, target)
            self._folders.append(_later(target, member))
            if len(relative.parts) == 1:
                self.stats.tops.add(relative.name)
        elif member.issym():
            self._links.append(_later(target, member))
        elif member.islnk():
            source = self.dest.joinpath(*self.names.hard_link_source(member).parts)
            os.link(source, target, follow_symlinks=False)
        else:
            self._write_file(tar, member, target)
        _count(self.stats, member)

    def _make_parents(self, shown: str, parent: PurePosixPath) -> None:
        if str(parent) == self._made_parent:  # as for the previous member
            return
        current = self.dest
        for part in parent.parts:
            current = current / part
            self._make_folder(shown, current)
        self._made_parent = str(parent)

    def _make_folder(self, shown: str, path: Path) -> None:
        try:
            path.mkdir(mode=PRIVATE_DIR)  # opened up by finish(), once its content is in
        except FileExistsError:
            # The namespace allows only folders here; anything else was put there by
            # someone else while we extract, so stop.
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise _refuse(shown, f"'{path.name}' is not a folder on disk") from None

    def _write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
        content = tar.extractfile(member)
        assert content is not None  # a regular file always has content
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(target, flags, 0o600), "wb") as handle:
            while chunk := content.read(COPY_CHUNK):
                handle.write(chunk)
            handle.flush()
            fd = handle.fileno()
            if self.restore_owner:
                os.fchown(fd, member.uid, member.gid)  # before chmod: chown drops setuid
            os.fchmod(fd, self._mode(member.mode))
            os.utime(fd, (member.mtime, member.mtime))

    def _mode(self, mode: int) -> int:
        # Owners are restored by default as root now: a setuid bit would make any file
        # of the archive a root program, so it is dropped even then.
        return mode & SAFE_MODE_BITS

    def finish(self) -> None:
        """Links once all are known safe, then folders' modes and times, deepest first."""
        self.names.check_links()
        for link in self._links:
            link.path.symlink_to(link.linkname)
            if self.restore_owner:
                os.chown(link.path, link.uid, link.gid, follow_symlinks=False)
            os.utime(link.path, (link.mtime, link.mtime), follow_symlinks=False)
        for folder in sorted(self._folders, key=lambda item: -len(item.path.parts)):
            if self.restore_owner:
                os.chown(folder.path, folder.uid, folder.gid)
            os.chmod(folder.path, self._mode(folder.mode))
            os.utime(folder.path, (folder.mtime, folder.mtime))
