"""Where each file of the chunk store lives (docs/format.md, "Layout on disk"), and the one
way an object gets there: a private temporary file in `store/tmp`, fsynced, renamed into
place, its folder fsynced."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cosmic_backup.errors import OperationFailed
from cosmic_backup.sizes import free_space
from cosmic_backup.storage.local import PARTIAL_MARK, PRIVATE_DIR, PRIVATE_FILE, fsync_dir

CHUNK_LIST_SUFFIX = ".chunks"
_partial_numbers = itertools.count()


@dataclass(frozen=True)
class StoreLayout:
    root: Path  # the backup root (BACKUP_DIR); the store is its `store/` folder

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def config(self) -> Path:
        return self.store / "config"

    @property
    def keys(self) -> Path:
        return self.store / "keys"

    @property
    def packs(self) -> Path:
        return self.store / "packs"

    @property
    def index(self) -> Path:
        return self.store / "index"

    @property
    def tmp(self) -> Path:
        return self.store / "tmp"

    @property
    def cache(self) -> Path:
        """Local records, never uploaded, rebuilt or forgotten if lost."""
        return self.store / "cache"

    def pack(self, name: str) -> Path:
        return self.packs / name[:2] / name

    def index_object(self, name: str) -> Path:
        return self.index / name

    def chunk_list(self, component: str, backup_id: str) -> Path:
        return self.root / component / f"{backup_id}{CHUNK_LIST_SUFFIX}"

    def private_folder(self, folder: Path) -> Path:
        """Create `folder` and the missing folders above it, mode 0700 whatever the umask."""
        missing = []
        path = folder
        while not path.is_dir():
            missing.append(path)
            path = path.parent
        for path in reversed(missing):
            path.mkdir(mode=PRIVATE_DIR, exist_ok=True)
            os.chmod(path, PRIVATE_DIR)
            fsync_dir(path.parent)  # a new folder's entry is durable once its parent is synced
        return folder


def disk_failure(path: Path, exc: OSError) -> OperationFailed:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OperationFailed(
            f"The disk of {path.parent} is full ({exc.strerror}): writing the chunk store's "
            f"{path.name} there stopped with {free_space(path.parent)} free, and the backup "
            "needs more than that. Free some space there (prune old backups) or set "
            "BACKUP_DIR to a larger disk, then run the backup again; the chunks already "
            "written are kept and reused."
        )
    return OperationFailed(
        f"Could not write {path}: {exc.strerror or exc}. Free some space or fix the folder's "
        "permissions, then run the backup again; what was written before stays usable."
    )


class PartialFile:
    """A store object being written: `store/tmp/.partial-<pid>-<n>`, then `commit(final)`."""

    def __init__(self, layout: StoreLayout) -> None:
        self._layout = layout
        folder = layout.private_folder(layout.tmp)
        self.path = folder / f"{PARTIAL_MARK}{os.getpid()}-{next(_partial_numbers)}"
        try:
            fd = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE
            )
        except OSError as exc:
            raise disk_failure(self.path, exc) from exc
        self._handle: BinaryIO = os.fdopen(fd, "wb", buffering=1024 * 1024)

    def write(self, data: bytes) -> None:
        try:
            self._handle.write(data)
        except OSError as exc:
            self.discard()
            raise disk_failure(self.path, exc) from exc

    def commit(self, final: Path) -> None:
        """fsync, rename to `final`, fsync its folder: after this the object is durable."""
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._layout.private_folder(final.parent)
            os.replace(self.path, final)
            fsync_dir(final.parent)
        except OSError as exc:
            self.discard()
            raise disk_failure(final, exc) from exc

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._handle.close()
        self.path.unlink(missing_ok=True)


def write_object(layout: StoreLayout, final: Path, data: bytes) -> None:
    partial = PartialFile(layout)
    try:
        partial.write(data)
        partial.commit(final)
    except BaseException:
        partial.discard()
        raise


def remove_leftovers(layout: StoreLayout) -> list[Path]:
    """Delete what killed writers left in `store/tmp` (call it under the root's lock)."""
    if not layout.tmp.is_dir():
        return []
    leftovers = sorted(p for p in layout.tmp.iterdir() if p.name.startswith(PARTIAL_MARK))
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers
