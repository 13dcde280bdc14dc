"""Snapshots of folder trees: what a faithful restore must reproduce."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def tree_snapshot(root: Path) -> dict[str, tuple]:
    """Every entry below `root`: links' targets, folders' modes, files' modes, times, digest."""
    result: dict[str, tuple] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            info = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                result[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                result[rel] = ("dir", stat.S_IMODE(info.st_mode), int(info.st_mtime))
            else:
                with path.open("rb") as handle:
                    digest = hashlib.file_digest(handle, "sha256").hexdigest()
                result[rel] = ("file", stat.S_IMODE(info.st_mode), int(info.st_mtime), digest)
    return result
