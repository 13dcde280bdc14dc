"""Off-site copies of chunked (format 2) backups (docs/format.md, "Off-site").

The remote mirrors the local store under the host's prefix: `store/config`, the data key's
wraps `store/keys/…`, packs `store/packs/xx/<mac>` and index objects `store/index/<mac>`,
and each backup's `<component>/<id>.chunks` beside its manifest. An upload sends, in
order: the wraps and config the remote lacks, the packs the backup needs that the remote
lacks, one index object naming the packs sent since the last one (written for the remote:
it names only packs the remote holds), then the list; the caller sends the manifest last.

What the remote holds comes from a local record, `store/cache/remote-<16 hex>.record`,
appended and fsynced as each PUT is confirmed, not from a listing of millions of objects.
A missing or unreadable record is rebuilt from one paged listing of `store/`, and so is
every `sync`'s (a sync is where a pack deleted off-site behind our back must be found).
Every byte sent is checked against the MAC the local store records (a pack's name, the
list's MAC), so a local object damaged since the backup is never copied as good.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from cosmic_backup.chunkstore.index_objects import INDEX_MAC, OBJECT_NAME
from cosmic_backup.chunkstore.keys import WRAP_NAME, store_exists
from cosmic_backup.chunkstore.layout import StoreLayout, write_object
from cosmic_backup.chunkstore.packs import PACK_MAC
from cosmic_backup.chunkstore.reader import ChunkReader, _EntryText, open_chunk_list
from cosmic_backup.chunkstore.store import ChunkStore
from cosmic_backup.chunkstore.writer import LIST_MAC
from cosmic_backup.clock import iso, parse_iso
from cosmic_backup.errors import CosmicError, IntegrityError, UsageError
from cosmic_backup.format.chunk_list import ChunkRef
from cosmic_backup.format.index_text import IndexText, PackRecord, parse_index, render_index
from cosmic_backup.format.keys import Key
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.format.objects import mac_of, open_object, seal_object
from cosmic_backup.operations.store import chunk_list_record, store_for
from cosmic_backup.storage.base import StoreNotFound
from cosmic_backup.storage.local import replace_file

if TYPE_CHECKING:
    from cosmic_backup.catalog import StoreCatalog
    from cosmic_backup.operations.context import Runtime

RECORD_HEADER = "cosmic-backup remote record 1"
CONFIG = "store/config"
KEYS = "store/keys/"
PACKS = "store/packs/"
INDEX = "store/index/"
NO_LOCK = "none"  # written without Object Lock retention
UNKNOWN = "-"  # a record rebuilt from a listing: the retention is asked when it matters
EXTENSION = timedelta(days=7)  # a reused object's retention is extended past the need


def remote_pack(name: str) -> str:
    return f"{PACKS}{name[:2]}/{name}"


def remote_index(name: str) -> str:
    return f"{INDEX}{name}"


def _leaf(name: str) -> str:
    return name.rsplit("/", 1)[-1]


class MacReader(io.RawIOBase):
    """A reader that computes the HMAC-SHA256 (under `mac_key`) of every byte it hands on."""

    def __init__(self, source: BinaryIO, mac_key: bytes) -> None:
        self._source = source
        self._mac = hmac.new(mac_key, digestmod=hashlib.sha256)
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._mac.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def hexdigest(self) -> str:
        return self._mac.hexdigest()


# -- the record of what the remote holds ----------------------------------------------------
@dataclass
class RemoteRecord:
    """`store/cache/remote-<16 hex>.record`: one line per object confirmed off-site.

    ``pack|index|object <remote name> <size> <retain until>`` as each PUT is confirmed
    (a pack line rebuilt from a listing ends in `` named`` when an index object off-site
    names the pack), ``named <pack remote name>`` once an index object naming the pack is
    confirmed, ``retain <remote name> <retain until>`` as a retention is extended. Each
    pack is named explicitly, so two processes appending (an upload after a backup runs
    outside the root's lock) never mark another's pack as indexed.
    """

    path: Path
    sizes: dict[str, int] = field(default_factory=dict)
    until: dict[str, str] = field(default_factory=dict)
    unindexed: dict[str, None] = field(default_factory=dict)  # packs no index names yet

    @property
    def packs(self) -> set[str]:
        return {_leaf(name) for name in self.sizes if name.startswith(PACKS)}

    def _append(self, lines: list[str]) -> None:
        with open(self.path, "a", encoding="ascii") as handle:
            handle.write("".join(line + "\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())
        for line in lines:
            self.note(line)

    def note(self, line: str) -> None:
        """Take one line into memory (reading or writing); ValueError if it is not one."""
        kind, name, *rest = line.split(" ")
        if kind == "named" and not rest:
            self.unindexed.pop(name, None)
        elif kind == "retain" and len(rest) == 1:
            self.until[name] = rest[0]
        elif kind in ("pack", "index", "object") and len(rest) in (2, 3):
            if rest[2:] not in ([], ["named"]) or (len(rest) == 3 and kind != "pack"):
                raise ValueError(line)
            self.sizes[name] = int(rest[0])
            self.until[name] = rest[1]
            if kind == "pack" and len(rest) == 2:
                self.unindexed[name] = None
        else:
            raise ValueError(line)

    def add(self, name: str, size: int, until: str) -> None:
        kind = "pack" if name.startswith(PACKS) else "index" if name.startswith(INDEX) else "object"
        self._append([f"{kind} {name} {size} {until}"])

    def name_packs(self, packs: list[str]) -> None:
        self._append([f"named {name}" for name in packs])

    def retain(self, name: str, until: str) -> None:
        self._append([f"retain {name} {until}"])


def record_path(layout: StoreLayout, url: str) -> Path:
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return layout.store / "cache" / f"remote-{digest}.record"


def _load_record(path: Path, url: str) -> RemoteRecord | None:
    """The record, or None when it is missing or suspect (unreadable, another remote's)."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if not lines or lines[0] != f"{RECORD_HEADER} {url}":
        return None
    record = RemoteRecord(path)
    try:
        for line in lines[1:]:
            record.note(line)
    except ValueError:
        return None
    return record


def _rebuild_record(
    rt: Runtime,
    remote: StoreCatalog,
    store: ChunkStore,
    path: Path,
    previous: RemoteRecord | None = None,
) -> RemoteRecord:
    """One paged listing of the remote's `store/`; which packs its index objects name is
    taken from the previous record where it still holds, else learnt by reading them (a
    pack no index object names gets one with the next upload)."""
    listed = {info.name: info.size for info in remote.store.list("store/")}
    if CONFIG in listed and (previous is None or CONFIG not in previous.sizes):
        _check_same_store(remote, store)
    indexes = sorted(n for n in listed if n.startswith(INDEX) and OBJECT_NAME.fullmatch(_leaf(n)))
    indexed, good_indexes = _indexed_packs(rt, remote, store, indexes, previous)
    packs = sorted(n for n in listed if n.startswith(PACKS) and OBJECT_NAME.fullmatch(_leaf(n)))
    others = sorted(n for n in listed if n == CONFIG or n.startswith(KEYS))
    known = previous.until if previous is not None else {}

    def line(kind: str, name: str) -> str:
        return f"{kind} {name} {listed[name]} {known.get(name, UNKNOWN)}"

    lines = [f"{RECORD_HEADER} {remote.store.describe()}"]
    lines += [line("object", n) for n in others]
    lines += [line("index", n) for n in good_indexes]
    lines += [line("pack", n) + (" named" if _leaf(n) in indexed else "") for n in packs]
    store.layout.private_folder(path.parent)
    replace_file(path, ("\n".join(lines) + "\n").encode("ascii"))
    rt.log.info("off-site record rebuilt from a listing: %d packs there", len(packs))
    record = _load_record(path, remote.store.describe())
    assert record is not None  # just written
    return record


def _check_same_store(remote: StoreCatalog, store: ChunkStore) -> None:
    """The chunk store off-site is this root's (its config, written once, is the same
    file): another root's packs, under another data key, must never mix with ours."""
    with remote.store.open_read(CONFIG) as handle:
        theirs = handle.read()
    if theirs != store.layout.config.read_bytes():
        raise UsageError(
            f"The off-site folder {remote.store.describe()} holds another chunk store than "
            "this backup root's (its store/config differs), so this root's chunked backups "
            "cannot go there: bring that folder's backups here first with 'cosmic-backup "
            "sync --pull' into an empty backup folder, or set BACKUP_REMOTE_HOST to a name "
            "of this root's own."
        )


def _indexed_packs(
    rt: Runtime,
    remote: StoreCatalog,
    store: ChunkStore,
    indexes: list[str],
    previous: RemoteRecord | None,
) -> tuple[set[str], list[str]]:
    """The packs the remote's index objects name, and the index objects that count. The
    previous record answers when every index object it knows is still there (the usual
    `sync`: no read); otherwise every index object is read."""
    if previous is not None:
        known = {n for n in previous.sizes if n.startswith(INDEX)}
        if known <= set(indexes):
            unread = [n for n in indexes if n not in known]
            named = previous.packs - {_leaf(n) for n in previous.unindexed}
            more, good = _read_indexes(rt, remote, store, unread)
            return named | more, sorted(known) + good
    return _read_indexes(rt, remote, store, indexes)


def _read_indexes(
    rt: Runtime, remote: StoreCatalog, store: ChunkStore, names: list[str]
) -> tuple[set[str], list[str]]:
    indexed: set[str] = set()
    good: list[str] = []
    for name in names:
        try:
            indexed |= {pack.name for pack in _read_remote_index(remote, store, name).packs}
            good.append(name)
        except (CosmicError, StoreNotFound) as exc:  # its packs count as not named
            rt.log.warning("off-site index object %s is not used: %s", name, exc)
    return indexed, good


def _read_remote_index(remote: StoreCatalog, store: ChunkStore, name: str) -> IndexText:
    with remote.store.open_read(name) as handle:
        stored = handle.read()
    text = open_object(
        stored, store.data_key, INDEX_MAC, _leaf(name), store.config.object_iterations
    )
    return parse_index(text, name)


# One record per remote catalog and run: `sync` rebuilds it first, then every upload of
# that run shares it; an upload after a backup reads it from its file.
_records: weakref.WeakKeyDictionary[StoreCatalog, RemoteRecord] = weakref.WeakKeyDictionary()


def remote_record(
    rt: Runtime, remote: StoreCatalog, store: ChunkStore, *, fresh: bool = False
) -> RemoteRecord:
    if (known := _records.get(remote)) is not None:
        return known
    path = record_path(store.layout, remote.store.describe())
    record = _load_record(path, remote.store.describe())
    if record is None or fresh:
        record = _rebuild_record(rt, remote, store, path, record)
    _records[remote] = record
    return record


# -- upload ---------------------------------------------------------------------------------
def _lock_end(rt: Runtime) -> datetime | None:
    """When a backup uploaded now stops being locked (None: no Object Lock)."""
    days = rt.settings.remote_lock_days
    return datetime.now(UTC).replace(microsecond=0) + timedelta(days=days) if days else None


def _until_text(end: datetime | None) -> str:
    return iso(end) if end is not None else NO_LOCK


def upload_store_objects(rt: Runtime, remote: StoreCatalog, manifest: Manifest, key: Key) -> None:
    """Everything a format 2 backup needs off-site before its manifest: wraps and config,
    missing packs, an index object for them, Object Lock extensions, the list."""
    store = _store(rt, manifest, key)
    record = remote_record(rt, remote, store)
    end = _lock_end(rt)
    _send_wraps_and_config(remote, store, record, end)
    needed = packs_needed(store, manifest)
    for name in sorted(needed - record.packs):
        _send_pack(remote, store, record, name, manifest.id, end)
    _send_index(rt, remote, store, record, end)
    if (end_now := _lock_end(rt)) is not None:  # what the list and manifest will get
        _extend_retention(remote, record, needed, end_now)
    _send_list(rt, remote, store, manifest)


_stores: dict[tuple[Path, str], ChunkStore] = {}  # by root and user key, for this process


def _store(rt: Runtime, manifest: Manifest, key: Key) -> ChunkStore:
    """The local store, unwrapped once per run and key; its index read afresh each time
    (a `backup all` adds packs between two uploads)."""
    known = (rt.catalog.root, key.fingerprint)
    store = _stores.get(known)
    if store is None or store.data_key.fingerprint != manifest.data_key:
        store = _stores[known] = store_for(rt, manifest, key)
    store.__dict__.pop("loaded_index", None)  # functools.cached_property: read again
    return store


def packs_needed(store: ChunkStore, manifest: Manifest) -> set[str]:
    """Every pack a backup's chunks are in, its list's parts included."""
    reader = ChunkReader(store, manifest.id)
    chunks = store.chunks_of(chunk_list_record(manifest), manifest.id)
    return {reader.locate(ref).pack for ref in chunks}


def _send_wraps_and_config(
    remote: StoreCatalog, store: ChunkStore, record: RemoteRecord, end: datetime | None
) -> None:
    """The wraps first, then the config (as the store is created): after a key rotation,
    the new key's wrap is the one missing."""
    layout = store.layout
    wraps = sorted(p for p in layout.keys.iterdir() if WRAP_NAME.fullmatch(p.name))
    for local, name in [*((p, KEYS + p.name) for p in wraps), (layout.config, CONFIG)]:
        if name not in record.sizes:
            with open(local, "rb") as source:
                info = remote.store.put(name, source)
            record.add(name, info.size, _until_text(end))


def _send_pack(
    remote: StoreCatalog,
    store: ChunkStore,
    record: RemoteRecord,
    name: str,
    backup_id: str,
    end: datetime | None,
) -> None:
    there = remote_pack(name)
    try:
        source = open(store.layout.pack(name), "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise IntegrityError(
            f"The pack {name} that backup {backup_id} needs is missing from the local store, "
            "so the backup cannot go off-site; run 'cosmic-backup verify' and take a new backup."
        ) from None
    with source:
        tee = MacReader(source, store.data_key.derive(PACK_MAC))
        remote.store.put(there, tee)  # type: ignore[arg-type]
    if not hmac.compare_digest(tee.hexdigest(), name):
        remote.store.delete(there)  # no index object names it: never part of a backup
        raise IntegrityError(
            f"The local pack {name} of backup {backup_id} no longer matches its MAC, so it was "
            "not copied off-site; run 'cosmic-backup verify' and take a new backup."
        )
    record.add(there, tee.size, _until_text(end))


def _send_index(
    rt: Runtime, remote: StoreCatalog, store: ChunkStore, record: RemoteRecord, end: datetime | None
) -> None:
    """One index object for the packs sent since the last one (this run's and those of an
    interrupted run), naming every chunk of each: a later backup may use any of them."""
    if not record.unindexed:
        return
    sent = list(record.unindexed)
    names = {_leaf(name) for name in sent}
    places = store.loaded_index.index.places_by_pack(names)
    packs = [
        PackRecord(name, record.sizes[remote_pack(name)], _written(store, name), places[name])
        for name in sorted(names)
        if places.get(name)
    ]
    if packs:
        text = IndexText(iso(datetime.now(UTC)), packs)
        stored, mac = seal_object(
            render_index(text), store.data_key, INDEX_MAC, store.config.object_iterations
        )
        remote.store.put(remote_index(mac), io.BytesIO(stored))
        record.add(remote_index(mac), len(stored), _until_text(end))
    if len(packs) < len(names):  # gone from here since: no local backup can need them
        gone = len(names) - len(packs)
        rt.log.info("off-site: %d pack(s) there are not in the local store", gone)
    record.name_packs(sent)


def _written(store: ChunkStore, name: str) -> str:
    """When the pack was written (informative: now, for one gone from here since)."""
    try:
        return iso(datetime.fromtimestamp(store.layout.pack(name).stat().st_mtime, UTC))
    except FileNotFoundError:
        return iso(datetime.now(UTC))


def _extend_retention(
    remote: StoreCatalog, record: RemoteRecord, needed: set[str], end: datetime
) -> None:
    """Every object a locked backup needs stays locked at least as long as its manifest:
    one whose retention ends sooner is extended to this backup's end plus 7 days, so a
    pack shared by daily backups is extended about once a week (COMPLIANCE retention can
    only grow)."""
    names = [remote_pack(pack) for pack in sorted(needed)]
    names += sorted(n for n in record.sizes if n == CONFIG or n.startswith((KEYS, INDEX)))
    # `end` is taken just before the list and the manifest are sent: what each was sent
    # with ends sooner (it went earlier), so it is extended once; the margin covers the
    # seconds the list and the manifest take.
    needs_until = end + timedelta(minutes=10)
    for name in names:
        until = record.until.get(name, UNKNOWN)
        if until == UNKNOWN:
            locked = remote.store.locked_until(name)  # type: ignore[attr-defined]
            until = iso(locked.astimezone(UTC)) if locked else NO_LOCK
            record.retain(name, until)
        if until == NO_LOCK or parse_iso(until) < needs_until:
            extended = end + EXTENSION
            remote.store.extend_retention(name, extended)  # type: ignore[attr-defined]
            record.retain(name, iso(extended))


def _send_list(rt: Runtime, remote: StoreCatalog, store: ChunkStore, manifest: Manifest) -> None:
    listed = manifest.chunk_list or {}
    name = f"{manifest.component}/{listed.get('name')}"
    with rt.catalog.store.open_read(name) as source:
        tee = MacReader(source, store.data_key.derive(LIST_MAC))
        remote.store.put(name, tee)  # type: ignore[arg-type]
    if tee.size != listed.get("stored_size") or not hmac.compare_digest(
        tee.hexdigest(), str(listed.get("mac"))
    ):
        remote.store.delete(name)  # no manifest points to it: never a backup
        raise IntegrityError(
            f"The local chunk list of {manifest.id} no longer matches its MAC, so it was not "
            "copied off-site; run 'cosmic-backup verify' and take a new backup."
        )


# -- what `sync` checks -----------------------------------------------------------------------
def start_sync(rt: Runtime, remote: StoreCatalog) -> RemoteRecord | None:
    """The record rebuilt from a listing, for this sync's uploads and checks (None: this
    root has no chunk store, or its key cannot open it)."""
    _records.pop(remote, None)
    key = rt.keys.current_if_any()
    if key is None or not store_exists(StoreLayout(rt.catalog.root)):
        return None
    from cosmic_backup.operations.store import open_chunk_store

    try:
        store = open_chunk_store(rt, key)
    except CosmicError as exc:  # the uploads say why, one backup at a time
        rt.log.warning("the chunk store cannot be opened for the off-site check: %s", exc)
        return None
    _stores[(rt.catalog.root, key.fingerprint)] = store  # unwrapped once for the run
    return remote_record(rt, remote, store, fresh=True)


def packs_there(rt: Runtime, remote: StoreCatalog, manifest: Manifest) -> bool:
    """Every pack a format 2 backup needs is off-site, with the config (per the record
    that `start_sync` rebuilt from a listing)."""
    record = _records.get(remote)
    if record is None:
        return True  # no record to check against: the upload rebuilds and completes it
    if CONFIG not in record.sizes:
        return False
    layout = StoreLayout(rt.catalog.root)
    from cosmic_backup.chunkstore.index_objects import present_packs

    if present_packs(layout) <= record.packs:  # the common case: no list need be read
        return True
    key = rt.keys.for_backup(manifest.id, manifest.key_fingerprint)
    try:
        return packs_needed(_store(rt, manifest, key), manifest) <= record.packs
    except CosmicError:
        return True  # it cannot be read here: re-uploading it would fail the same way


# -- pull -----------------------------------------------------------------------------------
def pull_store_objects(rt: Runtime, remote: StoreCatalog, manifest: Manifest, key: Key) -> None:
    """Bring a format 2 backup's list and the packs it needs that the local store lacks
    (the config and wraps first into an empty root); each checked before it is kept. The
    caller writes the manifest last."""
    layout = StoreLayout(rt.catalog.root)
    if not store_exists(layout):
        _pull_wraps_and_config(remote, layout)
    store = store_for(rt, manifest, key)
    record = chunk_list_record(manifest)
    _pull_list(rt, remote, store, manifest)
    fetcher = _PackFetcher(rt, remote, store, manifest.id)
    chunk_list = open_chunk_list(store, record, manifest.id)
    fetcher.fetch_for(chunk_list.parts)
    entry_text = _EntryText(store, chunk_list, ChunkReader(store, manifest.id))
    try:
        fetcher.fetch_for(entry_text.entries())
    finally:
        entry_text.close()


def _pull_wraps_and_config(remote: StoreCatalog, layout: StoreLayout) -> None:
    wraps = [info.name for info in remote.store.list(KEYS) if WRAP_NAME.fullmatch(_leaf(info.name))]
    try:
        for name in [*wraps, CONFIG]:  # the config last: a store exists when it does
            with remote.store.open_read(name) as source:
                target = layout.config if name == CONFIG else layout.keys / _leaf(name)
                write_object(layout, target, source.read())
    except StoreNotFound:
        raise IntegrityError(
            f"The off-site folder {remote.store.describe()} has chunked backups but no chunk "
            "store (store/config or its key wraps are missing), so they cannot be pulled; "
            "upload them again with 'cosmic-backup sync' from the root that made them."
        ) from None


def _pull_list(rt: Runtime, remote: StoreCatalog, store: ChunkStore, manifest: Manifest) -> None:
    listed = manifest.chunk_list or {}
    name = f"{manifest.component}/{listed.get('name')}"
    try:
        with remote.store.open_read(name) as source:
            stored = source.read()
    except StoreNotFound:
        raise IntegrityError(
            f"The chunk list of {manifest.id} is missing off-site, so it cannot be pulled; "
            "restore another backup."
        ) from None
    if len(stored) != listed.get("stored_size") or not hmac.compare_digest(
        mac_of(stored, store.data_key.derive(LIST_MAC)), str(listed.get("mac"))
    ):
        raise IntegrityError(
            f"The off-site chunk list of {manifest.id} is damaged (its MAC does not match "
            "its manifest), so it was not copied here; restore another backup."
        )
    rt.catalog.store.put(name, io.BytesIO(stored))


class _PackFetcher:
    """Finds where each chunk is and downloads the packs the local store lacks; the remote's
    index objects come too, once, when the local index does not place a chunk."""

    def __init__(
        self, rt: Runtime, remote: StoreCatalog, store: ChunkStore, backup_id: str
    ) -> None:
        self._rt = rt
        self._remote = remote
        self._store = store
        self._backup_id = backup_id
        self._reader = ChunkReader(store, backup_id)
        self._indexes_pulled = False

    def fetch_for(self, refs: Iterable[ChunkRef]) -> None:
        missing: set[str] = set()
        for ref in refs:
            pack = self._locate(ref)
            if pack not in self._store.loaded_index.present:
                missing.add(pack)
        for name in sorted(missing):
            self._fetch_pack(name)
        self._store.loaded_index.present.update(missing)

    def _locate(self, ref: ChunkRef) -> str:
        if self._store.loaded_index.index.lookup(ref.chunk_id) is None and not self._indexes_pulled:
            self._pull_indexes()
        return self._reader.locate(ref).pack  # names the chunk when no index places it

    def _pull_indexes(self) -> None:
        self._indexes_pulled = True
        store, remote = self._store, self._remote
        for info in remote.store.list(INDEX):
            name = _leaf(info.name)
            if not OBJECT_NAME.fullmatch(name) or store.layout.index_object(name).is_file():
                continue
            try:
                with remote.store.open_read(info.name) as source:
                    stored = source.read()
                open_object(stored, store.data_key, INDEX_MAC, name, store.config.object_iterations)
            except (CosmicError, StoreNotFound) as exc:
                message = f"the off-site index object {name} is damaged or gone; it is skipped"
                self._rt.log.warning("%s: %s", message, exc)
                self._rt.say(f"warning: {message}.")
                continue
            write_object(store.layout, store.layout.index_object(name), stored)
        store.__dict__.pop("loaded_index", None)  # read again, with what came

    def _fetch_pack(self, name: str) -> None:
        store, there = self._store, remote_pack(name)
        try:
            with self._remote.store.open_read(there) as source:
                stored = source.read()
        except StoreNotFound:
            raise IntegrityError(
                f"The off-site pack {there} that backup {self._backup_id} needs is missing "
                f"from {self._remote.store.describe()}, so the backup was not copied here; "
                "restore another backup, or run 'cosmic-backup sync' on the root that made it."
            ) from None
        if not hmac.compare_digest(mac_of(stored, store.data_key.derive(PACK_MAC)), name):
            raise IntegrityError(
                f"The off-site pack {there} that backup {self._backup_id} needs is damaged "
                "(its MAC does not match its name), so it was not copied here and nothing "
                "was restored from it; restore another backup, or run 'cosmic-backup sync' "
                "on the root that made it to upload the pack again."
            )
        write_object(store.layout, store.layout.pack(name), stored)
