"""Directory-format dumps (``--jobs N``): a private temporary folder, sealed as one tar.

``pg_dump -Fd -j N`` writes one file per table (and ``toc.dat``, the table of contents)
into a folder, with N connections that all read the exported snapshot. The folder is
made private (0700) inside the backup folder's ``database/`` (so it costs space on the
disk the backups are on, about the size of the uncompressed dump), then written as ONE
tar stream into the sealing pipeline, ``toc.dat`` first. The artifact is therefore
``openssl enc -d | gunzip | tar -x`` away from a folder that ``pg_restore -j N`` reads.

Every temporary folder here (a dump's, a restore's unpacked copy) is named ``.dump-*``
and removed when its run ends, however it ends. A run killed with SIGKILL cannot, so
each folder records the pid (and start time) of its run and of its pg_dump: the next
command that takes the root's lock removes the folders whose run is gone, after
stopping a pg_dump that outlived its run. A folder whose run still lives (a restore test
runs without the lock) is left alone.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from cosmic_backup.components.archive import TarWriter, check_member, safe_extract
from cosmic_backup.components.database.tools import Tool
from cosmic_backup.errors import IntegrityError, OperationFailed
from cosmic_backup.process import Child, run_captured, running

FOLDER_PREFIX = ".dump-"
OWNER_FILE = "owner.json"
ARCHIVE_ROOT = "dump"  # the tar's one folder: `tar -x` gives ./dump/toc.dat, ./dump/3546.dat...
TOC = "toc.dat"
TOC_MEMBER = f"{ARCHIVE_ROOT}/{TOC}"
# A folder with no owner yet is being created right now, unless it is older than this.
YOUNG_SECONDS = 60
# The table of contents of tens of thousands of tables fits easily; past this, the
# start of the archive is not what we wrote.
MAX_TOC = 256 * 1024 * 1024


@dataclass(frozen=True)
class DirectoryDump:
    """How to take a directory-format dump: pg_dump's jobs, and where its folder goes."""

    jobs: int
    parent: Path  # the backup folder's database/ folder


# -- private folders ---------------------------------------------------------------------
def _process_start(pid: int) -> str | None:
    """The start time of `pid` (field 22 of /proc/PID/stat), since a pid may be reused;
    None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def _mark(pid: int) -> dict[str, object]:
    return {"pid": pid, "started": _process_start(pid)}


def _alive(mark: object) -> bool:
    if not isinstance(mark, dict) or not isinstance(mark.get("pid"), int):
        return False
    started = _process_start(mark["pid"])
    return started is not None and started == mark.get("started")


def _write_owner(folder: Path, child: int | None = None) -> None:
    owner = {"run": _mark(os.getpid()), "child": _mark(child) if child else None}
    temp = folder / f".{OWNER_FILE}.tmp"
    temp.write_text(json.dumps(owner))
    temp.replace(folder / OWNER_FILE)  # never a half-written owner for the next run


@contextlib.contextmanager
def private_dump_folder(parent: Path) -> Iterator[Path]:
    """A new 0700 folder ``parent/.dump-*``, removed when the block ends (also on error
    and interrupt), and by the next locked run if this one is killed."""
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir=parent))  # mode 0700
    except OSError as exc:
        raise OperationFailed(
            f"No temporary folder for the dump could be made in {parent} "
            f"({exc.strerror or exc}); check the backup folder's free space and permissions."
        ) from None
    try:
        _write_owner(folder)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_leftover_folders(parent: Path) -> list[str]:
    """Remove the ``.dump-*`` folders of runs that are gone, stopping a pg_dump that
    outlived its run first; what was removed. Cheap when there is nothing to do."""
    removed: list[str] = []
    try:
        found = [p for p in parent.iterdir() if p.name.startswith(FOLDER_PREFIX)]
    except OSError:
        return removed
    for folder in found:
        if folder.is_symlink() or not folder.is_dir():
            continue
        try:
            owner = json.loads((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            if time.time() - folder.lstat().st_mtime < YOUNG_SECONDS:
                continue  # being created by a run right now
            owner = {}
        if not isinstance(owner, dict) or _alive(owner.get("run")):
            continue
        child = owner.get("child")
        if _alive(child):
            assert isinstance(child, dict)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child["pid"], signal.SIGKILL)  # its own group: pg_dump's workers too
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    return removed


# -- dumping -------------------------------------------------------------------------------
def run_pg_dump_into(
    argv: list[str], folder: Path, *, env: dict[str, str], timeout: float, log: logging.Logger
) -> tuple[Child, Path]:
    """Run pg_dump (its argv without --file) into `folder`/dump; the ended child and the
    dump's folder. The caller judges the exit code."""
    dump = folder / ARCHIVE_ROOT
    child = Child(
        [*argv, f"--file={dump}"],
        env=env,
        timeout=timeout,
        log=log,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    with running(child):
        _write_owner(folder, child.process.pid)  # so a SIGKILLed run's pg_dump is stopped
        child.wait()
    return child, dump


def write_dump_tar(out: BinaryIO, dump: Path, log: logging.Logger) -> int:
    """Write the dump folder as a tar stream into `out`, ``toc.dat`` first (a restore
    test reads the table of contents from the start of the stream); the bytes of files."""
    names = sorted(path.name for path in dump.iterdir())
    if TOC not in names:
        raise OperationFailed(f"pg_dump wrote no table of contents ({TOC}) into {dump}.")
    names.remove(TOC)
    with TarWriter(out, log) as writer:
        for name in (TOC, *names):
            writer.add_tree(dump / name, f"{ARCHIVE_ROOT}/{name}")
    stats = writer.stats
    problems = stats.warnings + stats.unreadable + stats.read_errors
    if problems or stats.folders or stats.links:
        # Only pg_dump writes there, in a folder nobody else may enter: anything odd
        # means the dump cannot be trusted.
        why = problems[0] if problems else "it holds more than files"
        raise OperationFailed(
            f"The dump's temporary folder changed while it was sealed ({why}); run the "
            "backup again."
        )
    return stats.bytes


# -- reading -------------------------------------------------------------------------------
def unpack_directory_dump(payload: BinaryIO, into: Path) -> Path:
    """Extract a directory-format backup's tar (the verified plaintext) into `into` (new
    or empty), with the archive checks of every restore; the dump's folder, for
    ``pg_restore [-j N] FOLDER``. Reads `payload` to its end, so its SHA-256 is checked
    before this returns."""
    safe_extract(payload, into)
    dump = into / ARCHIVE_ROOT
    if not (dump / TOC).is_file():
        raise IntegrityError(
            f"The backup's archive holds no {TOC_MEMBER}, so it is not a directory-format "
            "dump; pick another backup."
        )
    return dump


@contextlib.contextmanager
def unpacked_dump(payload: BinaryIO, parent: Path) -> Iterator[Path]:
    """`unpack_directory_dump` into a private folder under `parent`, removed after."""
    with private_dump_folder(parent) as folder:
        yield unpack_directory_dump(payload, folder / "unpacked")


def list_toc(toc: bytes, pg_restore: Tool, timeout: float) -> str:
    """``pg_restore --list`` of a directory dump's table of contents (it reads only
    ``toc.dat``, so the data files need not be there)."""
    with tempfile.TemporaryDirectory(prefix="cosmic-backup-toc-") as folder:
        Path(folder, TOC).write_bytes(toc)
        result = run_captured([pg_restore.path, "--list", folder], timeout=timeout)
    if result.returncode != 0:
        tail = " | ".join(result.stderr.strip().splitlines()[-3:]) or "no error output"
        raise OperationFailed(f"pg_restore --list cannot read the dump: {tail}.")
    return result.stdout


def check_directory_payload(payload: BinaryIO, pg_restore: Tool, timeout: float) -> dict[str, int]:
    """For verify: every member of the tar is a plain file of the dump's folder (checked
    as a restore checks it), pg_restore can read its table of contents, and every
    table's data file that the table of contents names is in the archive."""
    files: set[str] = set()
    toc: bytes | None = None
    try:
        with tarfile.open(fileobj=payload, mode="r|") as tar:
            for member in tar:
                name = _dump_member(member)
                if name is not None and name in files:
                    raise _bad(f"{member.name} is in the archive twice")
                if name == TOC:
                    toc = _read_member(tar, member)
                if name is not None:
                    files.add(name)
                tar.members.clear()
    except tarfile.TarError as exc:
        raise IntegrityError(f"The archive is damaged ({exc}); pick another backup.") from exc
    if toc is None:
        raise _bad(f"it holds no {TOC_MEMBER}")
    listing = list_toc(toc, pg_restore, timeout)
    missing = [name for name in data_files(listing) if name not in files]
    if missing:
        raise _bad(f"the table of contents names data files it lacks: {', '.join(missing[:5])}")
    entries = sum(1 for line in listing.splitlines() if line.strip() and not line.startswith(";"))
    return {"toc_entries": entries, "dump_files": len(files)}


def _bad(why: str) -> IntegrityError:
    return IntegrityError(f"The directory-format dump is not intact: {why}; pick another backup.")


def _dump_member(member: tarfile.TarInfo) -> str | None:
    """The file name of a member of the dump's folder (None for the folder itself)."""
    path = check_member(member)
    if path == PurePosixPath(ARCHIVE_ROOT) and member.isdir():
        return None
    if len(path.parts) != 2 or path.parts[0] != ARCHIVE_ROOT or not member.isreg():
        raise _bad(f"'{member.name}' is not a file of the dump's folder")
    return path.parts[1]


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > MAX_TOC:
        raise _bad(f"its {TOC} is {member.size} bytes")
    content = tar.extractfile(member)
    assert content is not None  # a regular file always has content
    return content.read()


def data_files(listing: str) -> list[str]:
    """The data files a directory dump's ``pg_restore --list`` names: ``ID.dat`` for
    each TABLE DATA entry (with -Z0; pg_dump adds no suffix)."""
    found = []
    for line in listing.splitlines():
        head, sep, rest = line.partition("; ")
        if sep and head.strip().isdigit() and " TABLE DATA " in f" {rest}":
            found.append(f"{head.strip()}.dat")
    return found


class DirectoryTocTee(io.RawIOBase):
    """For a restore test: hands on a directory-format backup's tar and keeps its first
    member, ``dump/toc.dat``, for ``pg_restore --list`` (as TocTee does for a custom
    dump). Only the start of the stream is buffered, up to the end of that member."""

    def __init__(self, source: BinaryIO, pg_restore: Tool, timeout: int, log: logging.Logger):
        super().__init__()
        self._source = source
        self._pg_restore = pg_restore
        self._timeout = timeout
        self._log = log
        self._head = bytearray()
        self._next_try = 64 * 1024
        self._toc: bytes | None = None
        self._failure: str | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        count: int = self._source.readinto(target)  # type: ignore[attr-defined]
        if self._toc is None and self._failure is None:
            self._head += memoryview(target)[:count]
            if len(self._head) >= self._next_try or not count:
                self._try_parse(ended=not count)
        return count

    def _try_parse(self, *, ended: bool) -> None:
        try:
            self._toc = first_member_toc(bytes(self._head))
        except IntegrityError as exc:
            self._failure = exc.message
        if self._toc is None and self._failure is None:
            self._next_try = 2 * len(self._head)
            if ended:
                self._failure = f"the archive ends before its {TOC_MEMBER} does"
            elif len(self._head) > MAX_TOC:
                self._failure = f"its first member is not a {TOC_MEMBER} of a sane size"
        if self._toc is not None or self._failure is not None:
            self._head = bytearray()

    def listing(self) -> str:
        if self._toc is None and self._failure is None:
            self._try_parse(ended=True)
        if self._toc is None:
            raise OperationFailed(f"pg_restore --list cannot read the dump: {self._failure}.")
        return list_toc(self._toc, self._pg_restore, self._timeout)


def first_member_toc(head: bytes) -> bytes | None:
    """The content of ``dump/toc.dat`` when it is the first member and `head` holds all of
    it; None when more bytes are needed; IntegrityError when the first member is another."""
    try:
        with tarfile.open(fileobj=io.BytesIO(head), mode="r|") as tar:
            member = tar.next()
            if member is None:
                return None
            if member.name != TOC_MEMBER or not member.isreg():
                raise _bad(f"its first member is '{member.name}', not {TOC_MEMBER}")
            content = tar.extractfile(member)
            assert content is not None
            data = content.read()
    except tarfile.TarError:
        return None  # cut short: wait for more
    return data if len(data) == member.size else None
