"""Proving an extraction faithful: every member's size, mode and SHA-256, from the archive
itself, compared with what is on disk after the extraction (restore tests).

The archive is read once. While the real extraction reads it, a tee copies the same
bytes through a pipe to a second tar reader in a thread, which records each member as
the archive has it (ArchiveDigests); then every recorded member is looked up on disk.
Memory stays bounded: the pipe holds 64 KiB, and the members are kept in a temporary
file (one JSON line each), not in memory, so a million files cost no more than ten.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import BinaryIO

from cosmic_backup.components.archive import (
    COPY_CHUNK,
    FOLDER_MODE_BITS,
    SAFE_MODE_BITS,
    check_member,
    kept_mode,
)
from cosmic_backup.errors import IntegrityError


@dataclass(frozen=True)
class Member:
    kind: str  # "file", "folder", "link"
    size: int
    mode: int
    sha256: str  # files only
    linkname: str  # links only


@dataclass
class Members:
    """The archive's members, spooled to a temporary file, with their totals."""

    spool: BinaryIO
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, member: Member) -> None:
        self.spool.write(json.dumps([name, *astuple(member)]).encode() + b"\n")
        self.by_kind[member.kind] = self.by_kind.get(member.kind, 0) + 1

    def __iter__(self) -> Iterator[tuple[str, Member]]:
        self.spool.seek(0)
        for line in self.spool:
            name, *values = json.loads(line)
            yield name, Member(*values)


class ArchiveDigests(io.RawIOBase):
    """A reader that hands on `source` and records each tar member it carries."""

    def __init__(self, source: BinaryIO) -> None:
        super().__init__()
        self._source = source
        read_end, write_end = os.pipe()
        self._sink = os.fdopen(write_end, "wb", buffering=0)
        self._pipe = os.fdopen(read_end, "rb")
        self.members = Members(tempfile.TemporaryFile())  # noqa: SIM115 - closed by close()
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._record, daemon=True, name="tar-digests")
        self._thread.start()

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        count = self._source.readinto(target)  # type: ignore[attr-defined]
        if count and not self._sink.closed:
            try:
                self._sink.write(memoryview(target)[:count])
            except BrokenPipeError:
                self._sink.close()  # the recorder stopped: its error says why
        return count

    def _record(self) -> None:
        try:
            with tarfile.open(fileobj=self._pipe, mode="r|") as tar:
                for member in tar:
                    self.members.add(str(check_member(member)), _describe(tar, member))
                    tar.members.clear()
        except Exception as exc:  # reported by finish(): the extraction has its own checks
            self.error = exc
        finally:
            with contextlib.suppress(OSError):
                while self._pipe.read(COPY_CHUNK):  # drain, so the writer never blocks
                    pass
            self._pipe.close()

    def finish(self) -> Members:
        """Every member, once the whole archive has been read through this reader."""
        self.close()
        self._thread.join()
        if self.error is not None:
            raise IntegrityError(f"The archive could not be read back ({self.error}).")
        return self.members

    def close(self) -> None:
        if not self._sink.closed:
            self._sink.close()
        super().close()

    def discard(self) -> None:
        """Remove the spooled members (after the comparison)."""
        self._thread.join()
        self.members.spool.close()


def _describe(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Member:
    mode = kept_mode(member)
    if member.isdir():
        return Member("folder", 0, mode, "", "")
    if member.issym():
        return Member("link", 0, 0, "", member.linkname)
    digest = hashlib.sha256()
    content = tar.extractfile(member)
    if content is not None:
        while chunk := content.read(COPY_CHUNK):
            digest.update(chunk)
    return Member("file", member.size, mode, digest.hexdigest(), "")


def compare_with_disk(members: Members, root: Path, limit: int = 11) -> list[str]:
    """What differs between the archive's members and the tree extracted into `root`:
    one short phrase per member (missing, size, mode, SHA-256, link target), at most
    `limit` of them."""
    problems: list[str] = []
    for name, expected in members:
        if len(problems) >= limit:
            break
        path = root / name
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            problems.append(f"{name} is missing")
            continue
        try:
            found = _differences(expected, path, info)
        except OSError as exc:
            found = [f"cannot be read ({exc.strerror})"]
        problems += [f"{name}: {what}" for what in found]
    return problems


def _differences(expected: Member, path: Path, info: os.stat_result) -> list[str]:
    if expected.kind == "link":
        if not stat.S_ISLNK(info.st_mode):
            return ["not a link"]
        target = os.readlink(path)
        return (
            [] if target == expected.linkname else [f"links to {target}, not {expected.linkname}"]
        )
    wanted_kind = stat.S_ISDIR if expected.kind == "folder" else stat.S_ISREG
    if not wanted_kind(info.st_mode):
        return [f"not a {expected.kind}"]
    found: list[str] = []
    kept = FOLDER_MODE_BITS if expected.kind == "folder" else SAFE_MODE_BITS
    mode = stat.S_IMODE(info.st_mode) & kept
    if mode != expected.mode:
        found.append(f"mode {mode:o}, archive {expected.mode:o}")
    if expected.kind == "file":
        if info.st_size != expected.size:
            found.append(f"{info.st_size} bytes, archive {expected.size}")
        elif _sha256(path) != expected.sha256:
            found.append("SHA-256 differs from the archive's")
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()
