"""Safe tar streams, shared by the files and config components: reading and extracting.

Writing is in tar_writer.py (re-exported here). Reading: members are streamed (mode
``r|``) and each is checked before anything is written: no absolute paths, no ``..``,
nothing written through a symlink or over another member, no hard links to anything but
a file extracted before them, no devices, FIFOs or other special members. Symlinks are
created last, once the whole archive has been read and every link, followed through any
chain of other links, is known to stay inside the target. The first unsafe member stops
the extraction and is named in the error. Members at places a restore must never write
(the backup folder, the key, the keyring, the logs, in an archive made before they were
excluded) are skipped.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import BinaryIO, NamedTuple

from cosmic_backup.components.file_writes import Finish, ParallelWrites
from cosmic_backup.components.tar_writer import (
    TarWriter,
    TreeStats,
    _ExactReader,
    identities,
    link_leaves_root,
)
from cosmic_backup.errors import IntegrityError, OperationFailed

__all__ = [
    "ExtractStats",
    "TarWriter",
    "TreeStats",
    "UnsafeArchive",
    "_ExactReader",
    "check_member",
    "identities",
    "link_leaves_root",
    "list_members",
    "safe_extract",
]

COPY_CHUNK = 64 * 1024  # measured: tarfile reads records one by one, so bigger is slower
SAFE_MODE_BITS = 0o1777  # a file's permission bits and sticky; never setuid/setgid
# A folder's keep setgid too: on a shared upload folder it gives new files the folder's
# group, and on a folder it makes no program privileged.
FOLDER_MODE_BITS = SAFE_MODE_BITS | stat.S_ISGID
PRIVATE_DIR = 0o700
# A new file: never over an existing one, never through a link. The parents are folders
# this extraction made (0700) and no symlink exists until finish(), so a writer thread
# creating the file later than this thread checked it still lands where it was checked.
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
LINK_HOPS = 40  # the kernel's own limit: a longer chain is a loop nobody can follow


class UnsafeArchive(IntegrityError):
    """An archive member that would write outside the target or create a special file."""


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
    # Files whose setuid or setgid bit was dropped, and the first one's name.
    privileges_dropped: int = field(default=0, compare=False)
    first_privileged: str = field(default="", compare=False)


def kept_mode(member: tarfile.TarInfo) -> int:
    """The mode a restore gives `member`: a file loses setuid and setgid, a folder keeps
    setgid."""
    return member.mode & (FOLDER_MODE_BITS if member.isdir() else SAFE_MODE_BITS)


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
    if member.size < 0:  # base-256 allows it; tarfile would step back into the headers
        raise _refuse(member.name, "its size is negative")
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
    return tarfile.open(fileobj=_ForwardReader(source), mode="r:")  # type: ignore[call-overload]


class _ForwardReader:
    """A tar stream as tarfile's "r:" mode reads it: `read(n)` returns all `n` bytes unless
    the stream ends, and `seek` only goes forward, by reading.

    tarfile's stream mode ("r|") reads its input in 10 KiB records that it joins and
    slices, which cost the extracting thread 1 s per GiB (a third of a restore's thread);
    "r:" reads each file's content in one call. Seeking back is a bug, never skipped over.
    """

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._position = 0

    def tell(self) -> int:
        return self._position

    def seekable(self) -> bool:
        return False

    def seek(self, position: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET or position < self._position:
            raise tarfile.ReadError("the archive reader tried to go back in the stream")
        while self._position < position and self.read(min(COPY_CHUNK, position - self._position)):
            pass
        return self._position

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            return b"".join(iter(partial(self.read, COPY_CHUNK), b""))
        buffer = bytearray(size)
        with memoryview(buffer) as view:
            filled = 0
            # Every source here is an io object with readinto (BinaryIO does not say so).
            while filled < size and (count := self._source.readinto(view[filled:])):  # type: ignore[attr-defined]
                filled += count
        self._position += filled
        del buffer[filled:]
        return bytes(buffer)


def _read_past_the_end(source: BinaryIO) -> None:
    """Read the stream to its end, so that its own checks run, and refuse anything but the
    zeros that pad a tar. tarfile ends its iteration without a word at a header it cannot
    parse, so data there is an archive whose members were not all read, not padding."""
    while block := source.read(COPY_CHUNK):
        if block.count(0) != len(block):
            raise tarfile.ReadError("there is data after its end marker")


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
        _read_past_the_end(source)
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
        # Every file written and closed before anything else happens: folders get their
        # modes after their content, and a caller cleaning up after an error never races
        # a write. After an error, the error in hand is the one raised.
        try:
            with _read_stream(source) as tar:
                for member in tar:
                    extractor.extract(tar, member)
                    tar.members.clear()  # streamed: do not keep every member in memory
        except BaseException:
            extractor.writes.drain(raise_errors=False)
            raise
        extractor.writes.drain()
        extractor.finish()
        _read_past_the_end(source)
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
        self.writes = ParallelWrites()  # file contents are written by a few threads

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
            self.writes.settle()  # its source may still be being created by a writer
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
        create = partial(os.open, target, CREATE_FLAGS, 0o600)
        self.writes.write_file(target, create, content.read, member.size, self._finisher(member))

    def _finisher(self, member: tarfile.TarInfo) -> Finish:
        """Owner, mode and times of a file, set by its writer once its content is in."""
        owner = (member.uid, member.gid) if self.restore_owner else None
        mode, mtime = self._file_mode(member), member.mtime

        def finish(fd: int) -> None:
            if owner is not None:
                os.fchown(fd, *owner)  # before chmod: chown drops setuid
            os.fchmod(fd, mode)
            os.utime(fd, (mtime, mtime))

        return finish

    def _file_mode(self, member: tarfile.TarInfo) -> int:
        # Owners are restored by default as root now: a setuid bit would make any file
        # of the archive a root program, so it is dropped even then (and counted, so the
        # restore can say so).
        if member.mode & (stat.S_ISUID | stat.S_ISGID):
            if not self.stats.privileges_dropped:
                self.stats.first_privileged = member.name
            self.stats.privileges_dropped += 1
        return kept_mode(member)

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
            os.chmod(folder.path, folder.mode & FOLDER_MODE_BITS)
            os.utime(folder.path, (folder.mtime, folder.mtime))
