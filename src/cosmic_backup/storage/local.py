"""A local folder as a `Store`: private modes, atomic writes (temp name, fsync, rename)."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cosmic_backup.errors import OperationFailed
from cosmic_backup.sizes import free_space, human_size
from cosmic_backup.storage.base import ObjectInfo, StoreNotFound, Transferred, check_name

PARTIAL_MARK = ".partial-"
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
COPY_CHUNK = 1024 * 1024


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Replace `path` in one step: a temporary file beside it (never through a link),
    fsynced, renamed over it, and the folder fsynced. Readers see the old or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)  # a leftover of a killed run with the same pid
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)  # whatever the umask
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _disk_error(path: Path, exc: OSError, partial: Path | None = None) -> OperationFailed:
    """The sentence for a failed write of `path`; `partial`, the temporary file being
    written, is measured before it is removed (what was written, and the free space then)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        written = _size_or_none(partial) if partial is not None else None
        so_far = f"after {human_size(written)}" if written else "at its start"
        return OperationFailed(
            f"The disk of {path.parent} is full ({exc.strerror}): writing {path.name} there "
            f"stopped {so_far} with {free_space(path.parent)} free, and the backup needs "
            "more than that. Free some space there (prune old backups) or set BACKUP_DIR to "
            "a larger disk, then run the backup again; nothing partial was kept."
        )
    return OperationFailed(
        f"Could not write {path}: {exc.strerror or exc}. Free some space or fix the folder's "
        "permissions, then run the backup again; nothing partial was kept."
    )


def _size_or_none(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


class LocalStore:
    """The `Store` contract on a folder; the extras (`path`, `ensure_folder`, leftovers)
    serve the local catalog's own concerns: its layout, its lock and its clean-up."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"the backup folder {self.root}"

    def path(self, name: str) -> Path:
        return self.root / check_name(name)

    def ensure_folder(self, relative: str = "") -> Path:
        folder = self.root / relative if relative else self.root
        folder.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        os.chmod(folder, PRIVATE_DIR)
        return folder

    @contextlib.contextmanager
    def open_write(self, name: str) -> Iterator[BinaryIO]:
        final = self.path(name)
        self.ensure_folder(str(Path(name).parent) if "/" in name else "")
        temp = final.with_name(f".{final.name}{PARTIAL_MARK}{os.getpid()}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, PRIVATE_FILE)
        except OSError as exc:
            raise _disk_error(temp, exc) from exc
        try:
            with os.fdopen(fd, "wb", buffering=1024 * 1024) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)
            fsync_dir(final.parent)
        except OSError as exc:
            error = _disk_error(final, exc, temp)
            temp.unlink(missing_ok=True)
            raise error from exc
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def put(
        self, name: str, source: BinaryIO, on_progress: Transferred | None = None
    ) -> ObjectInfo:
        with self.open_write(name) as sink:
            while chunk := source.read(COPY_CHUNK):
                sink.write(chunk)
                if on_progress is not None:
                    on_progress(len(chunk))
        return self.stat(name)

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.open_write(name) as handle:
            handle.write(data)

    def open_read(self, name: str, on_progress: Transferred | None = None) -> BinaryIO:
        # A local file is opened, not copied: nothing moves that `on_progress` could show.
        try:
            return open(self.path(name), "rb")
        except FileNotFoundError as exc:
            raise StoreNotFound(name) from exc

    def read_bytes(self, name: str) -> bytes:
        with self.open_read(name) as handle:
            return handle.read()

    def list(self, prefix: str) -> list[ObjectInfo]:
        folder_name, _, stem = prefix.rpartition("/")
        folder = self.root / folder_name if folder_name else self.root
        if not folder.is_dir():
            return []
        found = []
        for entry in os.scandir(folder):
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            if entry.name.startswith(stem):
                name = f"{folder_name}/{entry.name}" if folder_name else entry.name
                found.append(ObjectInfo(name, entry.stat(follow_symlinks=False).st_size))
        return sorted(found, key=lambda info: info.name)

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def stat(self, name: str) -> ObjectInfo:
        try:
            return ObjectInfo(name, self.path(name).stat().st_size)
        except FileNotFoundError as exc:
            raise StoreNotFound(name) from exc

    def partial_leftovers(self, folder: str) -> list[Path]:
        """Temporary files of writes that never finished (a crash, a kill, a full disk)."""
        base = self.root / folder
        if not base.is_dir():
            return []
        return sorted(
            p for p in base.iterdir() if p.name.startswith(".") and PARTIAL_MARK in p.name
        )
