"""The chunk store's figures for `status`, `--json`, the metrics and the report: its size,
its deduplication ratio, and what the last prune freed (docs/format.md, "The store's
figures")."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cosmic_backup.catalog import COMPONENTS
from cosmic_backup.chunkstore.layout import CHUNK_LIST_SUFFIX, StoreLayout
from cosmic_backup.storage.local import replace_file

LAST_PRUNE = "last-prune.json"
# What the store holds for good: store/cache and store/tmp are local scratch, not backups.
STORED_FOLDERS = ("packs", "index", "keys")


@dataclass
class LastPrune:
    at: str
    freed_bytes: int  # retention's deleted artifacts and lists, plus the sweep's
    swept_bytes: int  # of which the chunk store's sweep
    deleted_packs: int
    repacked_packs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # deleted since the listing (a sweep without our lock)
        return 0


def _bytes_under(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(_size(path) for path in folder.rglob("*") if path.is_file())


def store_bytes(layout: StoreLayout) -> int:
    """Every byte the store keeps: packs, index objects, key wraps, its config, and the
    backups' chunk lists beside their manifests."""
    total = sum(_bytes_under(layout.store / name) for name in STORED_FOLDERS)
    total += _size(layout.config)
    for component in COMPONENTS:
        total += sum(_size(p) for p in (layout.root / component).glob(f"*{CHUNK_LIST_SUFFIX}"))
    return total


def dedup_ratio(plaintext_sizes: Iterable[int], stored: int) -> float | None:
    """The backups' payloads, summed, over the bytes the store keeps for them: what a full
    copy of each would take, uncompressed, against what the store takes. None when empty."""
    total = sum(plaintext_sizes)
    if not stored or not total:
        return None
    return total / stored


def record_last_prune(layout: StoreLayout, last: LastPrune) -> None:
    layout.private_folder(layout.cache)
    body = json.dumps(last.to_dict(), indent=1, sort_keys=True).encode()
    replace_file(layout.cache / LAST_PRUNE, body)  # 0600, whatever the umask


def read_last_prune(layout: StoreLayout) -> LastPrune | None:
    """The last prune's record; None when there was none or it cannot be read (a lost
    cache only loses this figure)."""
    try:
        body = json.loads((layout.cache / LAST_PRUNE).read_text())
        return LastPrune(**{name: body[name] for name in LastPrune.__dataclass_fields__})
    except (OSError, ValueError, TypeError, KeyError):
        return None
