"""Prune's sweep of the chunk store: mark, plan, repack, new index, delete (docs/format.md,
"Prune: mark and sweep").

Run it under the root's lock, after retention has deleted the manifests of the backups it
let go. The order makes a kill at any moment harmless: new packs first, then the new index
objects (the last one supersedes every old one), then the old index objects, then the old
packs. Whatever a kill leaves (new packs no index names, superseded index objects, packs
no index object in force names) is what the next sweep deletes.
"""

from __future__ import annotations

import contextlib
import heapq
import json
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cosmic_backup.catalog import COMPONENTS, MANIFEST_SUFFIX
from cosmic_backup.chunkstore.index import ChunkIndex
from cosmic_backup.chunkstore.index_objects import (
    INDEX_CHUNKS_PER_OBJECT,
    OBJECT_NAME,
    LoadedIndex,
    present_packs,
    read_index_object,
    write_index_object,
)
from cosmic_backup.chunkstore.keys import store_exists
from cosmic_backup.chunkstore.layout import CHUNK_LIST_SUFFIX, StoreLayout
from cosmic_backup.chunkstore.packs import PackWriter, read_pack
from cosmic_backup.chunkstore.reader import open_chunk_list
from cosmic_backup.chunkstore.store import ChunkStore
from cosmic_backup.chunkstore.writer import ChunkListRecord
from cosmic_backup.clock import FixedClock, iso
from cosmic_backup.errors import CosmicError, IntegrityError
from cosmic_backup.format.cipher import HEADER_LEN
from cosmic_backup.format.index_text import ChunkPlace, IndexText, PackRecord
from cosmic_backup.format.keys import Key
from cosmic_backup.progress import Advance, Progress, no_progress
from cosmic_backup.storage.local import fsync_dir

GRACE = timedelta(hours=24)
REPACK_DEAD_SHARE = 0.20  # a pack more dead than this is rewritten with its live chunks
PREFIX_BYTES = 8
MERGE_AT = 65_536  # new prefixes held in a set before they are merged into the array
CIPHER_BLOCK = 16
NOTHING_DELETED = "Nothing was deleted from the chunk store"
# The manifest's `chunk_list` field (ChunkListRecord.manifest_field).
LIST_FIELDS = ("name", "mac", "stored_size", "chunks", "new_chunks", "new_packs")

LiveList = tuple[str, ChunkListRecord]  # a backup's id and its manifest's chunk list record


class MarkSet:
    """The chunks in use, as a sorted array of their ids' first 8 bytes: 8 bytes a chunk
    whatever the number of backups that share it. A shared prefix keeps a dead chunk,
    never drops a live one."""

    def __init__(self) -> None:
        self._sorted = array("Q")
        self._pending: set[int] = set()

    @staticmethod
    def _prefix(chunk_id: bytes) -> int:
        return int.from_bytes(chunk_id[:PREFIX_BYTES], "big")

    def _in_sorted(self, prefix: int) -> bool:
        position = bisect_left(self._sorted, prefix)
        return position < len(self._sorted) and self._sorted[position] == prefix

    def add(self, chunk_id: bytes) -> None:
        prefix = self._prefix(chunk_id)
        if prefix in self._pending or self._in_sorted(prefix):
            return
        self._pending.add(prefix)
        # Merging when the set reaches a quarter of the array keeps the total work linear.
        if len(self._pending) >= max(MERGE_AT, len(self._sorted) // 4):
            self._merge()

    def _merge(self) -> None:
        # A streamed merge: the old and the new array at once (16 bytes a chunk), never a
        # list of a million int objects (44 bytes a chunk), for ~0.3 µs an element.
        merged = array("Q", heapq.merge(self._sorted, sorted(self._pending)))
        self._sorted = merged
        self._pending.clear()

    def __contains__(self, chunk_id: bytes) -> bool:
        prefix = self._prefix(chunk_id)
        return prefix in self._pending or self._in_sorted(prefix)

    def __len__(self) -> int:
        return len(self._sorted) + len(self._pending)


@dataclass
class PackPlan:
    """One indexed pack: its size, and the bytes of its live and dead members."""

    record: PackRecord  # without its chunks (they are read again when needed)
    live_bytes: int = 0
    dead_bytes: int = 0
    live_lengths: array = field(default_factory=lambda: array("I"))  # members, in order
    places: list[ChunkPlace] = field(default_factory=list)  # kept only if it may be repacked

    @property
    def mostly_dead(self) -> bool:
        return self.dead_bytes > REPACK_DEAD_SHARE * (self.live_bytes + self.dead_bytes)


@dataclass
class SweepResult:
    dry_run: bool
    live_backups: int = 0
    marked_chunks: int = 0
    freed_bytes: int = 0  # packs deleted, repacks' savings, dead lists
    deleted_packs: list[str] = field(default_factory=list)
    repacked_packs: list[str] = field(default_factory=list)
    new_packs: list[str] = field(default_factory=list)
    young_packs: list[str] = field(default_factory=list)  # kept: within the grace period
    deleted_lists: list[str] = field(default_factory=list)
    deleted_index_objects: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "freed_bytes": self.freed_bytes,
            "live_backups": self.live_backups,
            "marked_chunks": self.marked_chunks,
            "deleted_packs": len(self.deleted_packs),
            "repacked_packs": len(self.repacked_packs),
            "new_packs": len(self.new_packs),
            "young_packs": len(self.young_packs),
            "deleted_lists": len(self.deleted_lists),
        }

    def describe(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        return (
            f"chunk store: {verb} {self.freed_bytes} bytes ({len(self.deleted_packs)} packs "
            f"deleted, {len(self.repacked_packs)} repacked, {len(self.deleted_lists)} dead "
            f"chunk lists; {len(self.young_packs)} young packs kept)"
        )


def _manifest_record(path: Path) -> ChunkListRecord | None:
    """The chunk list record of a format 2 manifest, None for any other manifest."""
    try:
        body = json.loads(path.read_bytes())
        if not isinstance(body, dict) or body.get("format_version") != 2:
            return None
        chunk_list = body.get("chunk_list")
        if not chunk_list:
            return None  # a failure record: it names no chunks
        return ChunkListRecord(
            **{key: chunk_list[key] for key in LIST_FIELDS},
            plaintext_size=int(body["plaintext_size"]),
            plaintext_sha256=body.get("plaintext_sha256"),
            added_bytes=int(body.get("stored_size") or 0),
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise IntegrityError(
            f"The manifest {path} cannot be read ({exc.__class__.__name__}), so the chunks its "
            f"backup uses are unknown. {NOTHING_DELETED}; repair or delete that manifest "
            "(`cosmic-backup verify` names it) and prune again."
        ) from None


def live_lists(root: Path) -> list[LiveList]:
    """Every format 2 backup whose manifest exists, with its chunk list record."""
    found = []
    for component in COMPONENTS:
        folder = root / component
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(f"*{MANIFEST_SUFFIX}")):
            record = _manifest_record(path)
            if record is not None:
                found.append((path.name.removesuffix(MANIFEST_SUFFIX), record))
    return found


def _dead_lists(root: Path, older_than: float) -> Iterator[Path]:
    """Chunk lists no manifest names (a killed backup's, or a retired one's), past grace."""
    for component in COMPONENTS:
        folder = root / component
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(f"*{CHUNK_LIST_SUFFIX}")):
            backup_id = path.name.removesuffix(CHUNK_LIST_SUFFIX)
            manifest = folder / f"{backup_id}{MANIFEST_SUFFIX}"
            if not manifest.exists() and path.stat().st_mtime < older_than:
                yield path


def _unlistable(exc: CosmicError) -> IntegrityError:
    return IntegrityError(
        f"{exc.message} {NOTHING_DELETED}: a backup whose chunks cannot all be listed would "
        "lose more of them."
    )


def mark(
    store: ChunkStore, lives: Iterable[LiveList], advance: Advance = lambda _n: None
) -> tuple[MarkSet, int]:
    """The chunks every live backup needs (its entry text's parts and its payload's);
    `advance` is given each backup's payload size once its chunks are marked."""
    lives = list(lives)
    try:
        parts = {
            ref.chunk_id
            for backup_id, record in lives
            for ref in open_chunk_list(store, record, backup_id).parts
        }
    except CosmicError as exc:
        raise _unlistable(exc) from None
    store.loaded_index = parts_index(store, parts)
    marks = MarkSet()
    for backup_id, record in lives:
        try:
            for ref in store.chunks_of(record, backup_id):
                marks.add(ref.chunk_id)
        except CosmicError as exc:
            raise _unlistable(exc) from None
        advance(record.plaintext_size)
    return marks, len(lives)


def parts_index(store: ChunkStore, parts: set[bytes]) -> LoadedIndex:
    """An index of the entry texts' parts alone, for reading the entry texts: one part
    per ~850 entries, where the whole index would cost 67 bytes a chunk of the store."""
    present = present_packs(store.layout)
    index = ChunkIndex()
    for name in _index_names(store.layout):
        for pack in _read_index(store, name).packs:
            places = [place for place in pack.chunks if place.chunk_id in parts]
            if places and pack.name in present:  # any present copy is right: ids are checked
                index.add_pack(PackRecord(pack.name, pack.stored_size, pack.written_at, places))
    index.merge_fresh()
    return LoadedIndex(index, [], present)


def _index_names(layout: StoreLayout) -> list[str]:
    if not layout.index.is_dir():
        return []
    return sorted(p.name for p in layout.index.iterdir() if OBJECT_NAME.fullmatch(p.name))


@dataclass
class IndexState:
    """The index objects on disk, which of them are in force, and the packs they place."""

    names: list[str]
    in_force: list[str]
    packs: dict[str, PackPlan]  # of the objects in force, each pack once

    @property
    def superseded(self) -> list[str]:
        in_force = set(self.in_force)
        return [name for name in self.names if name not in in_force]


def _read_index(store: ChunkStore, name: str) -> IndexText:
    try:
        return read_index_object(store.layout, store.data_key, store.config, name)
    except (CosmicError, OSError) as exc:
        # Its packs would look unindexed and be deleted: refuse rather than guess.
        raise IntegrityError(
            f"The index object {name} cannot be read ({exc}). {NOTHING_DELETED}; run "
            "`cosmic-backup verify`, then prune again."
        ) from None


def plan_index(store: ChunkStore, marks: MarkSet) -> IndexState:
    names = _index_names(store.layout)
    superseded: set[str] = set()
    per_object: dict[str, list[PackPlan]] = {}
    for name in names:  # one object's text at a time; only per-pack sums are kept
        text = _read_index(store, name)
        superseded.update(text.supersedes)
        per_object[name] = [_pack_plan(pack, marks) for pack in text.packs]
    in_force = [name for name in names if name not in superseded]
    packs: dict[str, PackPlan] = {}
    for name in in_force:
        for plan in per_object[name]:
            packs.setdefault(plan.record.name, plan)
    return IndexState(names, in_force, packs)


def _pack_plan(pack: PackRecord, marks: MarkSet) -> PackPlan:
    plan = PackPlan(PackRecord(pack.name, pack.stored_size, pack.written_at))
    for place in pack.chunks:
        if place.chunk_id in marks:
            plan.live_bytes += place.length
            plan.live_lengths.append(place.length)
        else:
            plan.dead_bytes += place.length
    if plan.live_bytes and plan.mostly_dead:
        plan.places = pack.chunks  # the repack needs them: no second read of the index
    return plan


def stored_size(plaintext_size: int) -> int:
    """The size of a sealed object: openssl's header, then PKCS#7-padded ciphertext."""
    return HEADER_LEN + (plaintext_size // CIPHER_BLOCK + 1) * CIPHER_BLOCK


def repacked_sizes(plans: Iterable[PackPlan], pack_target: int) -> list[int]:
    """The stored sizes of the packs a repack writes, cut as PackWriter cuts them."""
    sizes, open_size = [], 0
    for plan in plans:
        for length in plan.live_lengths:
            open_size += length
            if open_size >= pack_target:
                sizes.append(stored_size(open_size))
                open_size = 0
    if open_size:
        sizes.append(stored_size(open_size))
    return sizes


@dataclass
class SweepPlan:
    delete: list[str]  # packs with nothing live (or no index), past grace
    repack: list[PackPlan]
    keep: list[PackPlan]  # indexed packs that stay as they are
    young: list[str]

    @property
    def changes_packs(self) -> bool:
        return bool(self.delete or self.repack)


def plan_packs(store: ChunkStore, state: IndexState, older_than: float) -> SweepPlan:
    plan = SweepPlan([], [], [], [])
    for name in sorted(present_packs(store.layout)):
        pack = state.packs.get(name)
        if store.layout.pack(name).stat().st_mtime >= older_than:
            plan.young.append(name)  # a backup may be writing it: left as it is
            if pack is not None:
                plan.keep.append(pack)
        elif pack is None or pack.live_bytes == 0:
            plan.delete.append(name)
        elif pack.mostly_dead:
            plan.repack.append(pack)
        else:
            plan.keep.append(pack)
    return plan


def _pack_bytes(store: ChunkStore, names: Iterable[str]) -> int:
    return sum(store.layout.pack(name).stat().st_size for name in names)


def sweep_store(
    root: Path,
    user_key: Key,
    lives: Iterable[LiveList],
    *,
    dry_run: bool,
    now: datetime,
    grace: timedelta = GRACE,
    progress: Progress = no_progress,
) -> SweepResult:
    """Free what no live backup uses. Call it under the root's lock; with `dry_run`,
    nothing is written or deleted and the result says what would be freed. `progress`
    shows the mark (the live backups' bytes) and the sweep (the bytes of the packs
    repacked and deleted)."""
    store = ChunkStore.open(root, user_key, clock=FixedClock(now))
    older_than = (now - grace).timestamp()
    result = SweepResult(dry_run)
    if not dry_run:
        store.remove_leftovers()  # killed writers' temporary files (we hold the lock)
    lives = list(lives)
    with progress("prune: marking chunks", sum(r.plaintext_size for _, r in lives)) as advance:
        marks, result.live_backups = mark(store, lives, advance)
    result.marked_chunks = len(marks)
    state = plan_index(store, marks)
    plan = plan_packs(store, state, older_than)
    dead_lists = list(_dead_lists(root, older_than))
    result.deleted_lists = [path.name for path in dead_lists]
    result.deleted_packs = list(plan.delete)
    result.repacked_packs = [pack.record.name for pack in plan.repack]
    result.young_packs = plan.young
    result.freed_bytes = (
        _pack_bytes(store, plan.delete + result.repacked_packs)
        - sum(repacked_sizes(plan.repack, store.config.pack_target))
        + sum(path.stat().st_size for path in dead_lists)
    )
    if dry_run:
        return result
    for path in dead_lists:  # the backups are retired first: their lists go before chunks
        path.unlink(missing_ok=True)
    if plan.changes_packs or state.superseded:
        # Each repacked pack is read, then deleted: its bytes count twice.
        work = _pack_bytes(store, plan.delete + 2 * result.repacked_packs)
        with progress("prune: sweeping packs", work) as advance:
            new_packs = repack(store, plan.repack, marks, advance)
            result.new_packs = [pack.name for pack in new_packs]
            write_new_index(store, plan.keep, new_packs, state, now)
            result.deleted_index_objects = _delete_all(store.layout.index, state.names)
            _delete_packs(store.layout, plan.delete + result.repacked_packs, advance)
    return result


def repack(
    store: ChunkStore, packs: list[PackPlan], marks: MarkSet, advance: Advance = lambda _n: None
) -> list[PackRecord]:
    """Copy the live members of `packs`, as they are, into new durable packs."""
    written: list[PackRecord] = []
    writer: PackWriter | None = None
    copied: set[bytes] = set()
    for pack in packs:
        plaintext = read_pack(store.layout, store.data_key, store.config, pack.record.name)
        for place in pack.places:
            if place.chunk_id not in marks or place.chunk_id in copied:
                continue
            if writer is None:
                writer = PackWriter(store.layout, store.data_key, store.config, store.clock)
            member = plaintext[place.offset : place.offset + place.length]
            writer.add_member(place.chunk_id, member, place.plain_length)
            copied.add(place.chunk_id)
            if writer.full:
                written.append(writer.commit())
                writer = None
        advance(pack.record.stored_size)
    if writer is not None:
        written.append(writer.commit())
    return written


def write_new_index(
    store: ChunkStore,
    keep: list[PackPlan],
    new_packs: list[PackRecord],
    state: IndexState,
    now: datetime,
) -> None:
    """Index objects for every kept and new pack; the last one supersedes every object
    that was on disk, so the old ones stay in force until the new ones are all durable."""
    kept = {plan.record.name for plan in keep}
    batch: list[PackRecord] = []
    chunks = 0
    for name in state.in_force:
        for pack in _read_index(store, name).packs:
            if pack.name in kept:
                kept.discard(pack.name)  # a pack named by two objects goes in once
                batch.append(pack)
                chunks += len(pack.chunks)
                if chunks >= INDEX_CHUNKS_PER_OBJECT:
                    _write_index(store, batch, [], now)
                    batch, chunks = [], 0
    _write_index(store, batch + new_packs, state.names, now)


def _write_index(
    store: ChunkStore, packs: list[PackRecord], supersedes: list[str], now: datetime
) -> None:
    text = IndexText(written_at=iso(now), packs=packs, supersedes=supersedes)
    write_index_object(store.layout, store.data_key, store.config, text)


def _delete_all(folder: Path, names: list[str]) -> list[str]:
    for name in names:
        (folder / name).unlink(missing_ok=True)
    if names:
        fsync_dir(folder)
    return names


def _delete_packs(
    layout: StoreLayout, names: list[str], advance: Advance = lambda _n: None
) -> None:
    for name in names:
        path = layout.pack(name)
        with contextlib.suppress(FileNotFoundError):  # a killed sweep's, or a manual rm
            size = path.stat().st_size
            path.unlink()
            advance(size)
    for folder in {layout.pack(name).parent for name in names}:
        fsync_dir(folder)


def sweep_if_store(
    root: Path,
    user_key: Key,
    *,
    dry_run: bool,
    now: datetime,
    retired: Iterable[str] = (),
    progress: Progress = no_progress,
) -> SweepResult | None:
    """The hook prune calls: no-op for a root without a store. `retired` names backups
    the (dry-run) retention plan removes, so they count as dead."""
    if not store_exists(StoreLayout(root)):
        return None
    gone = set(retired)
    lives = [live for live in live_lists(root) if live[0] not in gone]
    return sweep_store(root, user_key, lives, dry_run=dry_run, now=now, progress=progress)


__all__ = ["GRACE", "SweepResult", "live_lists", "sweep_if_store", "sweep_store"]
