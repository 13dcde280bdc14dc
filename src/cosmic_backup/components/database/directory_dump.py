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
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from cosmic_backup.components.archive import check_member, safe_extract
from cosmic_backup.components.database.tools import Tool
from cosmic_backup.errors import IntegrityError, OperationFailed
from cosmic_backup.process import Child, mark_alive, process_mark, run_captured, running
from cosmic_backup.sizes import free_space, human_size

FOLDER_PREFIX = ".dump-"
OWNER_FILE = "owner.json"
ARCHIVE_ROOT = "dump"  # the tar's one folder: `tar -x` gives ./dump/toc.dat, ./dump/3546.dat...
TOC = "toc.dat"
TOC_MEMBER = f"{ARCHIVE_ROOT}/{TOC}"
# The end of every table's data file: a line holding a backslash and a dot, two empty ones.
TRAILER = b"\\.\n\n\n"
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
def _write_owner(folder: Path, child: int | None = None) -> None:
    owner = {"run": process_mark(), "child": process_mark(child) if child else None}
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
        owner = owner if isinstance(owner, dict) else {}
        if mark_alive(owner.get("run")):
            continue
        child = owner.get("child")
        if mark_alive(child):
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


# pg_dump's words (strerror) for a full disk or an exhausted quota.
DISK_FULL = ("no space left on device", "disk quota exceeded")


def filled_the_disk(stderr: str) -> bool:
    """Did pg_dump stop because the dump's folder's disk (or quota) is full?"""
    text = stderr.lower()
    return any(words in text for words in DISK_FULL)


def disk_full_message(parent: Path, written: int, database_bytes: int | None) -> str:
    """The sentence for a --jobs dump whose temporary folder filled the disk of `parent`."""
    needed = (
        f"about {human_size(database_bytes)}, the database's size on the server"
        if database_bytes is not None
        else "the whole uncompressed dump"
    )
    return (
        f"The disk of {parent} is full: pg_dump --jobs wrote {human_size(written)} of its "
        f"temporary dump folder there before it filled up ({free_space(parent)} free), and "
        f"needs room for {needed}. Free some space there (prune old backups), set BACKUP_DIR "
        "to a larger disk, or back up without --jobs (it streams, with no temporary "
        "folder), then run the backup again; nothing partial was kept."
    )


def folder_bytes(folder: Path) -> int:
    """What the files under `folder` hold, in bytes (what pg_dump had written)."""
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


def write_dump_tar(out: BinaryIO, dump: Path, counted: Mapping[str, str]) -> dict[str, int]:
    """Write the dump folder as a tar stream into `out`, ``toc.dat`` first (a restore
    test reads the table of contents from the start of the stream).

    The rows of each table in `counted` (data file name -> "schema.table") are counted
    while its file passes through (see `RowCounter`): no second scan of the data. A
    table whose count cannot be trusted is left out of the result.
    """
    names = sorted(path.name for path in dump.iterdir())
    if TOC not in names:
        raise OperationFailed(f"pg_dump wrote no table of contents ({TOC}) into {dump}.")
    names.remove(TOC)
    rows: dict[str, int] = {}
    tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
    try:
        for name in (TOC, *names):
            counter = _add_file(tar, dump / name, name in counted)
            if counter is not None and counter.rows is not None:
                rows[counted[name]] = counter.rows
        tar.close()  # the end-of-archive blocks; `out` stays open
    except BaseException:
        # Nothing more may be written into a broken output: without this, tarfile's
        # finaliser would flush its buffer into it later.
        tar.closed = True
        tar.fileobj.closed = True  # type: ignore[union-attr]
        raise
    return rows


def _add_file(tar: tarfile.TarFile, path: Path, count: bool) -> RowCounter | None:
    """One regular file of the dump, read once; its counter when `count`."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb", buffering=0) as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            # Only pg_dump writes there, in a folder nobody else may enter.
            raise OperationFailed(
                f"The dump's temporary folder holds {path.name}, which is not a file; run "
                "the backup again."
            )
        member = tarfile.TarInfo(f"{ARCHIVE_ROOT}/{path.name}")
        member.size, member.mode, member.mtime = info.st_size, 0o600, int(info.st_mtime)
        counter = RowCounter(handle) if count else None
        tar.addfile(member, counter or handle)  # type: ignore[arg-type]
        tar.members.clear()
        if os.fstat(fd).st_size != info.st_size:
            raise OperationFailed(
                f"The dump's file {path.name} changed while it was sealed; run the backup again."
            )
    return counter


class RowCounter:
    """Reads a table's data file (COPY text, as pg_dump -Z0 writes it) and counts its rows.

    COPY text escapes a newline inside a value as the two characters backslash and n, so
    every raw newline ends one row, except those of pg_dump's trailer: each file ends with
    a line holding a backslash and a dot, then two empty lines. A file that does not end
    so is not what we think it is: `rows` is then None and the caller counts otherwise.
    """

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._newlines = 0
        self._size = 0
        self._tail = b""  # the last bytes read: the trailer and the newline before it

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._newlines += data.count(b"\n")
        self._size += len(data)
        keep = len(TRAILER) + 1
        self._tail = (self._tail + data[-keep:])[-keep:]
        return data

    @property
    def rows(self) -> int | None:
        trailer_newlines = TRAILER.count(b"\n")
        if self._size == len(TRAILER) and self._tail == TRAILER:
            return 0  # an empty table: the trailer alone
        if self._tail != b"\n" + TRAILER:  # the trailer must begin a line of its own
            return None
        return self._newlines - trailer_newlines


def counted_files(
    dump: Path, pg_dump: Tool, tables: list[tuple[str, str]], timeout: float, log: logging.Logger
) -> dict[str, str]:
    """Data file name -> "schema.table" of the tables whose rows `write_dump_tar` counts,
    read from ``pg_restore --list`` of the folder (the pg_restore beside pg_dump). Empty,
    and logged, when that cannot be had: the rows are then counted with count(*)."""
    pg_restore = Path(pg_dump.path).with_name("pg_restore")
    try:
        result = run_captured([str(pg_restore), "--list", str(dump)], timeout=timeout)
    except OperationFailed as exc:
        log.info("row counts: %s; counting with count(*) instead", exc.message)
        return {}
    if result.returncode != 0:
        log.info("row counts: pg_restore --list failed; counting with count(*) instead")
        return {}
    return table_data_files(result.stdout, tables)


def table_data_files(listing: str, tables: list[tuple[str, str]]) -> dict[str, str]:
    """Data file name -> "schema.table", from a directory dump's ``pg_restore --list``.

    A TABLE DATA line reads ``ID; 0 OID TABLE DATA SCHEMA NAME OWNER``, unquoted, so a
    name holding spaces could be read two ways: a line is only taken when exactly one of
    `tables` fits it, and a table only when exactly one line names it. Linear in the
    lines and tables: each line looks up only the "SCHEMA NAME" prefixes it has (one per
    space in it), never every table (20,000 tables took a minute that way).
    """
    by_words: dict[str, list[str]] = {}
    for schema, table in tables:
        by_words.setdefault(f"{schema} {table}", []).append(f"{schema}.{table}")
    found: dict[str, list[str]] = {}
    named: dict[str, int] = {}
    for line in listing.splitlines():
        described = _table_data_described(line)
        if described is None:
            continue
        fits = [name for prefix in _space_prefixes(described) for name in by_words.get(prefix, [])]
        found[f"{line.partition(';')[0].strip()}.dat"] = fits
        for name in fits:
            named[name] = named.get(name, 0) + 1
    return {file: fits[0] for file, fits in found.items() if len(fits) == 1 and named[fits[0]] == 1}


def _table_data_described(line: str) -> str | None:
    """ "SCHEMA NAME OWNER" of a TABLE DATA line of ``pg_restore --list``, else None."""
    head, sep, rest = line.partition("; ")
    if not (sep and head.strip().isdigit()):
        return None
    words = rest.split(" ", 2)
    if len(words) < 3 or not words[2].startswith("TABLE DATA "):
        return None
    return words[2].removeprefix("TABLE DATA ")


def _space_prefixes(text: str) -> Iterator[str]:
    """Every start of `text` that a space follows: where "SCHEMA NAME" may end."""
    at = text.find(" ")
    while at >= 0:
        yield text[:at]
        at = text.find(" ", at + 1)


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
