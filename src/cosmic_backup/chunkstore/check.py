"""Checking the store pack by pack (docs/format.md, "Reading: restore, verify, and what a
damaged chunk breaks"): which backups use each pack, whether every pack they use is there,
and, for the packs in a window of the pack names, each pack's MAC and each chunk's id.

`verify --read-data-subset` reads the packs of a window; the window of `N%` moves on by
N% after every clean run (its start is kept in store/cache), so successive runs cover
the store; `n/t` is the n-th of t fixed slices. A pack's place in the name space is its
name's first 8 hex digits over 16**8: names are MACs, so the packs spread evenly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from cosmic_backup.chunkstore.layout import StoreLayout
from cosmic_backup.chunkstore.reader import BrokenChunk, ChunkReader
from cosmic_backup.chunkstore.store import ChunkStore
from cosmic_backup.chunkstore.writer import ChunkListRecord
from cosmic_backup.errors import CosmicError, UsageError
from cosmic_backup.format.chunk_list import ChunkRef
from cosmic_backup.storage.local import replace_file

WINDOW_FILE = "verify-window.json"
NAME_SPACE = 16**8
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")
_SLICE = re.compile(r"(\d+)/(\d+)")
NOT_INDEXED = "is in no index object of the store"
SUBSET_HELP = "Give N% (0 < N <= 100), or n/t (the n-th of t slices, 1 <= n <= t)."

LiveList = tuple[str, ChunkListRecord]


@dataclass(frozen=True)
class Window:
    """A slice of the pack names: `share` of them, from `start` (fractions of the space),
    wrapping around at 1."""

    start: float
    share: float
    rotating: bool  # N%: the next run starts where this one ends

    def holds(self, pack: str) -> bool:
        place = int(pack[:8], 16) / NAME_SPACE
        return (place - self.start) % 1.0 < self.share

    @property
    def end(self) -> float:
        return (self.start + self.share) % 1.0

    def describe(self) -> str:
        return f"{self.start:.0%} to {self.start + self.share:.0%} of the pack names"


def parse_subset(text: str, layout: StoreLayout) -> Window:
    """`N%` (from where the last clean run ended) or `n/t`; one sentence when malformed."""
    if match := _PERCENT.fullmatch(text.strip()):
        share = float(match.group(1)) / 100
        if 0 < share <= 1:
            return Window(read_window_start(layout), share, rotating=True)
    elif match := _SLICE.fullmatch(text.strip()):
        slot, slices = int(match.group(1)), int(match.group(2))
        if 1 <= slot <= slices:
            return Window((slot - 1) / slices, 1 / slices, rotating=False)
    raise UsageError(f"--read-data-subset {text!r} is not a subset. {SUBSET_HELP}")


def read_window_start(layout: StoreLayout) -> float:
    """Where the next N% window starts; 0 when there is no record (or a lost cache)."""
    try:
        start = float(json.loads((layout.cache / WINDOW_FILE).read_text())["next"])
    except (OSError, ValueError, TypeError, KeyError):
        return 0.0
    return start % 1.0


def save_window_end(layout: StoreLayout, window: Window, now: str) -> None:
    layout.private_folder(layout.cache)
    body = {"next": window.end, "last": {"start": window.start, "share": window.share, "at": now}}
    replace_file(layout.cache / WINDOW_FILE, json.dumps(body, indent=1).encode())


@dataclass
class PackUse:
    # Bit i: the i-th backup mapped uses it. One int a pack, where a set of ids would
    # cost ~2 KB a pack at thirty backups (130 MB for the 65 k packs of 1 TB).
    backups: int = 0
    chunks: dict[bytes, ChunkRef] | None = None  # kept only for a pack to read


@dataclass
class StoreCheck:
    """What a check found: per pack, the backups that use it; the packs read; and per
    broken backup, the sentences that say why (the first names the pack)."""

    backup_ids: list[str]  # in the order mapped: bit i of PackUse.backups
    uses: dict[str, PackUse] = field(default_factory=dict)
    packs_read: list[str] = field(default_factory=list)
    bad_packs: dict[str, str] = field(default_factory=dict)  # pack -> what is wrong
    broken: dict[str, list[str]] = field(default_factory=dict)
    first_bad_pack: dict[str, str] = field(default_factory=dict)  # backup -> pack

    def _users(self, use: PackUse) -> list[str]:
        return [backup for bit, backup in enumerate(self.backup_ids) if use.backups >> bit & 1]

    def packs_of(self, backup_id: str) -> list[str]:
        bit = 1 << self.backup_ids.index(backup_id) if backup_id in self.backup_ids else 0
        return sorted(name for name, use in self.uses.items() if use.backups & bit)

    def breaks(self, pack: str) -> list[str]:
        use = self.uses.get(pack)
        return sorted(self._users(use)) if use else []

    def _broke(self, backup_id: str, sentence: str, pack: str | None) -> None:
        self.broken.setdefault(backup_id, []).append(sentence)
        if pack is not None:
            self.first_bad_pack.setdefault(backup_id, pack)


def map_packs(store: ChunkStore, lives: Iterable[LiveList], window: Window | None) -> StoreCheck:
    """Which backups use each pack (each backup's list and entry text are read; its
    payload's packs are not). The chunks of the packs in `window` are kept, to be read."""
    lives = list(lives)
    check = StoreCheck([backup_id for backup_id, _ in lives])
    index = store.loaded_index.index
    for bit, (backup_id, record) in enumerate(lives):
        try:
            for ref in store.chunks_of(record, backup_id):
                location = index.lookup(ref.chunk_id)
                if location is None:
                    missing = BrokenChunk(backup_id, ref.chunk_id, NOT_INDEXED, None)
                    check._broke(backup_id, missing.message, None)
                    continue
                use = check.uses.setdefault(location.pack, PackUse())
                use.backups |= 1 << bit
                if window is not None and window.holds(location.pack):
                    use.chunks = use.chunks if use.chunks is not None else {}
                    use.chunks[ref.chunk_id] = ref
        except BrokenChunk as exc:  # its entry text's pack: the list cannot be read
            check._broke(backup_id, exc.message, exc.pack)
        except CosmicError as exc:
            check._broke(backup_id, exc.message, None)
    return check


def check_packs(store: ChunkStore, check: StoreCheck) -> StoreCheck:
    """Every pack used must be there; each pack whose chunks were kept is read: its MAC,
    then each chunk's id and length. Every backup that uses a bad pack is named."""
    for pack in sorted(check.uses):
        use = check.uses[pack]
        if not store.layout.pack(pack).is_file():
            _bad_pack(check, pack, "is missing")
        elif use.chunks is not None:
            check.packs_read.append(pack)
            _read_chunks(store, check, pack, use.chunks)
    return check


def _bad_pack(check: StoreCheck, pack: str, what: str) -> None:
    check.bad_packs[pack] = what
    for backup_id in check.breaks(pack):
        check._broke(backup_id, f"Backup {backup_id} cannot be read: its pack {pack} {what}.", pack)


def _read_chunks(
    store: ChunkStore, check: StoreCheck, pack: str, chunks: dict[bytes, ChunkRef]
) -> None:
    reader = ChunkReader(store, f"using the pack {pack}")
    whole = f"is in the pack {pack}, which "
    for ref in chunks.values():
        try:
            reader.read(ref)  # the pack's MAC once (kept), then this chunk's id and length
        except BrokenChunk as exc:
            if exc.why.startswith(whole):  # missing, or its MAC fails
                _bad_pack(check, pack, exc.why.removeprefix(whole))
            else:  # the MAC held, but a chunk is not what its index object says
                _bad_pack(check, pack, f"gives a wrong chunk {ref.chunk_id.hex()} ({exc.why})")
            return


def check_store(store: ChunkStore, lives: Iterable[LiveList], window: Window | None) -> StoreCheck:
    return check_packs(store, map_packs(store, lives, window))


def finish_window(layout: StoreLayout, window: Window, check: StoreCheck, now: str) -> bool:
    """Move an N% window on after a clean run; a run that found a problem keeps it, so the
    run after a repair checks the same packs again. True when it moved."""
    if not window.rotating or check.broken:
        return False
    save_window_end(layout, window, now)
    return True


__all__ = ["SUBSET_HELP", "StoreCheck", "Window", "check_store", "finish_window", "parse_subset"]
