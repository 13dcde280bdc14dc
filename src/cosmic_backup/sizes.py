"""Sizes as an operator reads them (1.5 MiB), for tables and for sentences alike."""

from __future__ import annotations

import shutil
from pathlib import Path


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def free_space(folder: Path) -> str:
    """The free space of `folder`'s file system, for a sentence ("unknown" if unreadable)."""
    try:
        return human_size(shutil.disk_usage(folder).free)
    except OSError:
        return "unknown"
