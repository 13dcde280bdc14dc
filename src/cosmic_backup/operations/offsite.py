"""Off-site copies: the remote catalog, the upload after each backup, `sync` both ways,
and the record of uploads that failed (what `status` reports as OFFSITE-MISSING).

An upload sends the artifact first and its manifest last, so an object without a manifest
is never taken for a backup. What arrived is checked twice: the store compares the
SHA-256 it received with the one sent (part by part), and the bytes sent are the ones
whose MAC the manifest records (computed on the way through, so a local file damaged
since the backup is never copied as good).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import io
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cosmic_backup.catalog import (
    ARTIFACT_SUFFIX,
    COMPONENTS,
    DATE_PATTERN,
    ID_PATTERN,
    MANIFEST_SUFFIX,
    Entry,
    StoreCatalog,
    order_key,
)
from cosmic_backup.chunkstore.layout import CHUNK_LIST_SUFFIX
from cosmic_backup.clock import iso
from cosmic_backup.errors import CosmicError, IntegrityError, OperationFailed, UsageError
from cosmic_backup.format.keys import Key
from cosmic_backup.format.manifest import Manifest, dump_manifest
from cosmic_backup.format.pipeline import UnsealingReader, check_mac
from cosmic_backup.operations.artifacts import open_plaintext, open_stored
from cosmic_backup.operations.context import Runtime
from cosmic_backup.operations.offsite_store import (
    MacReader,
    packs_there,
    pull_store_objects,
    start_sync,
    upload_store_objects,
)
from cosmic_backup.operations.store import PayloadReader, open_chunked
from cosmic_backup.process import process_alive
from cosmic_backup.progress import Advance
from cosmic_backup.settings import check_offsite_environment
from cosmic_backup.states import Trust
from cosmic_backup.storage.base import StoreNotFound
from cosmic_backup.storage.local import replace_file

PENDING_FILE = ".offsite-pending.json"
OWNER_FILE = "root.json"  # beside the component folders: which backup roots wrote here
UNCONFIRMED = "its upload was not confirmed (it was interrupted, or is still running)."


# -- the remote -----------------------------------------------------------------------------
def host_prefix(rt: Runtime) -> str:
    return rt.settings.remote_host or socket.gethostname()


def remote_catalog(rt: Runtime) -> StoreCatalog | None:
    """The off-site catalog of this host, or None without BACKUP_REMOTE. Opened once per run."""
    if not rt.settings.remote:
        return None
    if rt.remote is not None:
        return rt.remote
    from cosmic_backup.storage.s3 import S3Store, parse_remote  # boto3 only when used

    check_offsite_environment(os.environ)
    location = parse_remote(rt.settings.remote, host_prefix(rt))
    rt.catalog.store.ensure_folder()  # downloads spool there, beside the backups
    store = S3Store(
        location, spool_dir=rt.catalog.root, lock_days=rt.settings.remote_lock_days or None
    )
    remote = StoreCatalog(store, rt.keys.lookup, "remote", warn=lambda m: _warn(rt, m))
    remote.host = location.host
    try:
        remote.roots = frozenset(read_owners(remote))
    except IntegrityError as exc:  # readable still; writing waits for a take-over
        rt.log.warning("%s", exc.message)
    rt.remote = remote
    return remote


def _warn(rt: Runtime, message: str) -> None:
    rt.log.warning("off-site: %s", message)
    rt.say(f"warning: {message}")


def require_remote(rt: Runtime) -> StoreCatalog:
    remote = remote_catalog(rt)
    if remote is None:
        raise UsageError(
            "No off-site location is set; set BACKUP_REMOTE=s3://bucket/prefix and the "
            "usual AWS credentials."
        )
    return remote


# -- which backup root writes to this host's folder -----------------------------------------
def read_owners(remote: StoreCatalog) -> list[str]:
    """The roots that wrote to this folder, the current one last ([]: none recorded yet)."""
    try:
        with remote.store.open_read(OWNER_FILE) as handle:
            roots = json.loads(handle.read()).get("roots")
    except StoreNotFound:
        return []
    except (ValueError, AttributeError):
        roots = None
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise IntegrityError(
            f"The record of which backup root owns {remote.store.describe()} ({OWNER_FILE}) is "
            "damaged; run 'cosmic-backup sync --take-over' from the root that should own it."
        )
    return roots


def _write_owners(remote: StoreCatalog, roots: list[str]) -> None:
    body = json.dumps({"roots": roots}, indent=1).encode() + b"\n"
    remote.store.put(OWNER_FILE, io.BytesIO(body))
    remote.roots = frozenset(roots)


def claim_folder(rt: Runtime, remote: StoreCatalog) -> None:
    """Make sure this root owns its host's off-site folder before writing or deleting there.

    Two roots under one BACKUP_REMOTE_HOST would take the same ids and overwrite (and
    prune) each other's backups; the second is refused, with what to set.
    """
    ours = rt.catalog.root_id()
    owners = read_owners(remote)
    if not owners:
        _write_owners(remote, [ours])
        owners = read_owners(remote)  # two roots claiming at once: the last write wins
    if owners[-1] != ours:
        raise UsageError(
            f"The off-site folder {remote.store.describe()} belongs to another backup root "
            f"(id {owners[-1]}; this one is {ours}): two roots share BACKUP_REMOTE_HOST "
            f"'{host_prefix(rt)}'. Set BACKUP_REMOTE_HOST to a name of this root's own; or, "
            "if this root replaces that one (a rebuilt server), run "
            "'cosmic-backup sync --take-over' once."
        )


def take_over(rt: Runtime) -> str:
    """Make this root the owner of its host's folder (after a rebuild); the previous
    owners' backups stay trusted there. Returns the sentence to show."""
    remote = require_remote(rt)
    ours = rt.catalog.root_id()
    try:
        owners = read_owners(remote)
    except IntegrityError:  # a damaged record: this root's claim replaces it
        owners = []
    if owners and owners[-1] == ours:
        return f"This backup root ({ours}) already owns {remote.store.describe()}."
    _write_owners(remote, [r for r in owners if r != ours] + [ours])
    rt.log.info("took over %s from %s", remote.store.describe(), owners[-1:] or "nobody")
    return f"This backup root ({ours}) now owns {remote.store.describe()}."


# -- the record of failed uploads -----------------------------------------------------------
def pending_path(backup_dir: Path) -> Path:
    return backup_dir / PENDING_FILE


def read_pending(backup_dir: Path) -> dict[str, dict[str, str]]:
    """Backups whose upload failed and is not yet completed: id -> component, error, when."""
    try:
        data = json.loads(pending_path(backup_dir).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_pending(rt: Runtime, pending: dict[str, dict[str, str]]) -> None:
    path = pending_path(rt.catalog.root)
    if not pending:
        path.unlink(missing_ok=True)
        return
    replace_file(path, json.dumps(pending, indent=1, sort_keys=True).encode())


def _mark_pending(rt: Runtime, manifest: Manifest, error: str, **extra: Any) -> None:
    pending = read_pending(rt.catalog.root)
    pending[manifest.id] = {
        "component": manifest.component,
        "error": error,
        "at": iso(rt.clock.now()),
        **extra,
    }
    _write_pending(rt, pending)


def mark_upload_pending(rt: Runtime, manifest: Manifest) -> None:
    """Record a backup as not yet off-site, before its upload starts: a kill at any
    moment then leaves it pending, so `status` says so until `sync` completes it."""
    try:
        _mark_pending(rt, manifest, UNCONFIRMED, pid=os.getpid())
    except OSError as exc:  # the upload itself still runs; only the record is missing
        rt.log.error("could not record the upload of %s as pending: %s", manifest.id, exc)


def _uploading_now(item: dict[str, Any]) -> bool:
    """A pending upload whose process still runs (another run of ours, outside the lock)."""
    pid = item.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    if Path("/proc/self").is_dir():  # a pid taken since by another program is not ours
        try:
            return b"cosmic" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
    return process_alive(pid)  # no /proc here: whether the process lives must do


def _clear_pending(rt: Runtime, ids: set[str]) -> None:
    pending = read_pending(rt.catalog.root)
    if ids & pending.keys():
        _write_pending(rt, {k: v for k, v in pending.items() if k not in ids})


def pending_components(backup_dir: Path) -> set[str]:
    """Components with an upload not yet done (a lost off-site copy is not one: prune may
    go on there)."""
    pending = read_pending(backup_dir).values()
    return {item.get("component", "") for item in pending if not item.get("gap")}


# -- upload ---------------------------------------------------------------------------------
def upload(rt: Runtime, remote: StoreCatalog, entry: Entry, advance: Advance | None = None) -> None:
    """Copy one local backup off-site: artifact (or the store objects of a chunked one)
    first, checked, then its manifest; `advance` hears of the artifact's bytes as the
    store accepts them."""
    manifest = entry.manifest
    local = rt.catalog
    claim_folder(rt, remote)  # never write over another root's backups
    if manifest.chunked:  # packs, index, list: everything the manifest names, first
        key = rt.keys.for_backup(manifest.id, manifest.key_fingerprint)
        upload_store_objects(rt, remote, manifest, key)
    elif manifest.artifact:
        key = rt.keys.for_backup(manifest.id, manifest.key_fingerprint)
        name = f"{manifest.component}/{manifest.artifact}"
        with local.store.open_read(name) as source:
            tee = MacReader(source, key.artifact_mac_key)
            remote.store.put(name, tee, advance)  # type: ignore[arg-type]
        if tee.size != manifest.stored_size or not hmac.compare_digest(
            tee.hexdigest(), manifest.artifact_mac or ""
        ):
            remote.store.delete(name)  # no manifest points to it: never a backup
            raise IntegrityError(
                f"The local artifact of {manifest.id} no longer matches its MAC, so it was "
                "not copied off-site; run 'cosmic-backup verify' and take a new backup."
            )
    manifest_name = local.manifest_name(manifest.component, manifest.id)
    if manifest.host not in (None, remote.host):
        # Made before BACKUP_REMOTE_HOST was set or changed: bound, and signed, anew for
        # the folder it now goes to (only the key's holder can; a copy by hand is refused).
        key = rt.keys.for_backup(manifest.id, manifest.key_fingerprint)
        rebound = dataclasses.replace(manifest, host=remote.host)
        remote.store.put(manifest_name, io.BytesIO(dump_manifest(rebound, key)))
        return
    with local.store.open_read(manifest_name) as source:
        remote.store.put(manifest_name, source)


def upload_after_backup(rt: Runtime, manifest: Manifest) -> str | None:
    """Upload a backup just taken; on failure record it and return the sentence.

    The local backup stays good whatever happens here.
    """
    remote = None
    mark_upload_pending(rt, manifest)
    try:
        remote = remote_catalog(rt)
        if remote is None:
            return None
        entry = Entry(manifest, Trust.VERIFIED)
        with rt.progress(f"uploading {manifest.id}", manifest.stored_size) as advance:
            upload(rt, remote, entry, advance)
    except (CosmicError, OSError) as exc:
        message = _sentence(exc)
        rt.log.error("off-site copy of %s failed: %s", manifest.id, message)
        rt.say(f"warning: the off-site copy of {manifest.id} failed: {message}")
        try:
            _mark_pending(rt, manifest, message)
        except OSError as write_error:
            rt.log.error("could not record the failed upload: %s", write_error)
        return message
    rt.log.info("off-site copy of %s done (%s)", manifest.id, remote.store.describe())
    _clear_pending(rt, {manifest.id})
    return None


def _sentence(exc: BaseException) -> str:
    if isinstance(exc, CosmicError):
        return exc.message
    if isinstance(exc, OSError):
        return f"the local backup could not be read ({exc.strerror or exc})"
    return str(exc)


# -- sync -----------------------------------------------------------------------------------
@dataclass
class SyncItem:
    id: str
    component: str
    action: str  # uploaded, downloaded, failed, skipped
    message: str = ""

    def to_dict(self) -> dict[str, str]:
        return {
            "id": self.id,
            "component": self.component,
            "action": self.action,
            "message": self.message,
        }


def _remote_sizes(remote: StoreCatalog, component: str) -> dict[str, int]:
    """Every object of the component off-site, by name, with its size (one listing)."""
    return {info.name: info.size for info in remote.store.list(f"{component}/")}


def _complete_there(entry: Entry, there: dict[str, int]) -> bool:
    """The manifest is off-site and so is the artifact (or chunk list), at its recorded
    size (a chunked backup's packs: `packs_there`)."""
    manifest = entry.manifest
    if StoreCatalog.manifest_name(manifest.component, manifest.id) not in there:
        return False
    if manifest.chunk_list:
        listed = f"{manifest.component}/{manifest.chunk_list.get('name')}"
        return there.get(listed) == manifest.chunk_list.get("stored_size")
    if not manifest.artifact:
        return True
    return there.get(f"{manifest.component}/{manifest.artifact}") == manifest.stored_size


def sync_push(rt: Runtime, components: list[str]) -> list[SyncItem]:
    """Upload every good local backup whose off-site copy is missing or incomplete, then
    clean what killed runs left there (open multipart uploads, artifacts without manifest)."""
    remote = require_remote(rt)
    started = rt.clock.now()
    items: list[SyncItem] = []
    with rt.catalog.lock("sync", wait=rt.wait):
        claim_folder(rt, remote)
        start_sync(rt, remote)  # what the chunk store has off-site, from one listing
        for component in components:
            there = _remote_sizes(remote, component)
            local = rt.catalog.entries(component)
            busy = {k for k, v in read_pending(rt.catalog.root).items() if _uploading_now(v)}
            for entry in local:
                if entry.id in busy:  # its own backup run is uploading it right now
                    items.append(SyncItem(entry.id, component, "skipped", "being uploaded"))
                elif entry.manifest.ok and not _complete_there(entry, there):
                    items.append(_push_one(rt, remote, entry))
                elif entry.manifest.chunked and not packs_there(rt, remote, entry.manifest):
                    items.append(_push_one(rt, remote, entry))  # a pack is gone off-site
            items += _gaps_without_local_copy(rt, remote, component, {e.id for e in local})
        done = {item.id for item in items if item.action == "uploaded"}
        good_here = {e.id for e in rt.catalog.entries() if e.manifest.ok}
        gaps = {item.id for item in items if item.action == "failed"}
        gone = set(read_pending(rt.catalog.root)) - good_here - gaps
        _clear_pending(rt, done | gone)  # also forget failures of backups pruned since
        clean_offsite_leftovers(rt, remote, components, started)
    return items


def _gaps_without_local_copy(
    rt: Runtime, remote: StoreCatalog, component: str, here: set[str]
) -> list[SyncItem]:
    """Off-site backups whose artifact is gone and that no local copy can complete. One
    newer than every complete off-site backup is a known gap, recorded so `status`
    reports it until a newer backup is complete there; an older one is only said."""
    there = _remote_sizes(remote, component)
    with_artifact = {_id_of(n) for n in there if n.endswith((ARTIFACT_SUFFIX, CHUNK_LIST_SUFFIX))}
    suspects = {_id_of(n) for n in there if n.endswith(MANIFEST_SUFFIX) and _id_of(n) not in here}
    if not suspects - with_artifact:  # the common case: nothing to read
        return []
    # Only what checks out is a backup of ours: a moved manifest is TAMPERED in `list`.
    entries = [e for e in remote.entries(component) if e.manifest.ok and e.trust == Trust.VERIFIED]
    complete = [e for e in entries if _complete_there(e, there)]
    newest_complete = max((e.manifest.started_at for e in complete), default="")
    items = []
    for entry in entries:
        if entry.id not in suspects or _complete_there(entry, there):
            continue
        message = (
            "its artifact (or chunk list) is missing off-site (or has the wrong size) and "
            "no local copy remains to upload again: its off-site copy is lost"
        )
        rt.log.error("sync: %s %s", entry.id, message)
        if entry.manifest.started_at < newest_complete:
            items.append(SyncItem(entry.id, component, "skipped", f"{message} (a newer one is)"))
            continue
        message += f"; run 'cosmic-backup backup {component}', then 'cosmic-backup sync'."
        _mark_pending(rt, entry.manifest, message, gap=True)
        items.append(SyncItem(entry.id, component, "failed", message))
    return items


def clean_offsite_leftovers(
    rt: Runtime, remote: StoreCatalog, components: list[str], started: datetime
) -> list[str]:
    """Remove our own leftovers of killed runs off-site: multipart uploads opened before
    this run and never finished (billed, invisible), and artifacts without a manifest
    (a prune or an upload killed between its two objects). Uploads still running in
    another process of this root are left alone."""
    live = {k for k, v in read_pending(rt.catalog.root).items() if _uploading_now(v)}
    removed: list[str] = []
    abandoned = getattr(remote.store, "abandoned_uploads", None)
    if abandoned is not None:
        for name, upload_id in abandoned(started):
            # A pack's name says not whose upload it is: while any upload of ours runs,
            # the store's unfinished uploads are left to the next sync.
            ours_running = bool(live) and name.startswith("store/")
            if _id_of(name) not in live and not ours_running:
                remote.store.abort_upload(name, upload_id)  # type: ignore[attr-defined]
                removed.append(f"{name} (unfinished upload)")
    for component in components:
        names = set(_remote_sizes(remote, component))
        for name in sorted(names):
            backup_id = _id_of(name)
            manifest = StoreCatalog.manifest_name(component, backup_id)
            leftover = name.endswith((ARTIFACT_SUFFIX, CHUNK_LIST_SUFFIX))
            if leftover and manifest not in names and backup_id not in live:
                remote.store.delete(name)
                removed.append(name)
    for name in removed:
        rt.log.info("removed off-site leftover of an interrupted run: %s", name)
    return removed


def _id_of(name: str) -> str:
    return name.split("/")[-1].split(".")[0]


def _push_one(rt: Runtime, remote: StoreCatalog, entry: Entry) -> SyncItem:
    if entry.trust != Trust.VERIFIED:
        reason = entry.problem or f"its manifest is {entry.trust}"
        return SyncItem(entry.id, entry.manifest.component, "skipped", reason)
    try:
        mark_upload_pending(rt, entry.manifest)
        with rt.progress(f"uploading {entry.id}", entry.manifest.stored_size) as advance:
            upload(rt, remote, entry, advance)
    except (CosmicError, OSError) as exc:
        message = _sentence(exc)
        rt.log.error("sync: upload of %s failed: %s", entry.id, message)
        _mark_pending(rt, entry.manifest, message)
        return SyncItem(entry.id, entry.manifest.component, "failed", message)
    rt.log.info("sync: uploaded %s", entry.id)
    return SyncItem(entry.id, entry.manifest.component, "uploaded")


def sync_pull(rt: Runtime, components: list[str]) -> list[SyncItem]:
    """Download every good off-site backup missing here, checking its MAC before it counts."""
    remote = require_remote(rt)
    items: list[SyncItem] = []
    with rt.catalog.lock("sync --pull", wait=rt.wait):
        rt.catalog.ensure_layout()
        for component in components:
            here = {entry.id for entry in rt.catalog.entries(component)}
            for entry in remote.entries(component):
                if entry.id in here or not entry.manifest.ok:
                    continue
                items.append(_pull_one(rt, remote, entry))
    return items


def pull_backup(rt: Runtime, remote: StoreCatalog, entry: Entry, key: Key) -> None:
    """Copy one off-site backup here: its artifact, or its list and the packs the local
    store lacks, each checked first; then its manifest, last."""
    manifest = entry.manifest
    if manifest.chunked:
        pull_store_objects(rt, remote, manifest, key)
    else:
        name = f"{manifest.component}/{manifest.artifact}"
        with open_stored(rt, remote, entry) as spool:
            with rt.progress(f"checking {manifest.id}", manifest.stored_size) as advance:
                check_mac(spool, key, manifest.artifact_mac or "", manifest.stored_size, advance)
            spool.seek(0)
            rt.catalog.store.put(name, spool)
    manifest_name = remote.manifest_name(manifest.component, manifest.id)
    with remote.store.open_read(manifest_name) as source:
        rt.catalog.store.put(manifest_name, source)


def pull_for_reading(rt: Runtime, located: Located, key: Key) -> None:
    """A chunked backup held only off-site is pulled into the local store before it is
    read (restore, verify): its packs are checked on the way, so nothing damaged is used."""
    if located.entry.manifest.chunked and located.where == "remote":
        rt.say(f"Pulling {located.entry.id} from {located.catalog.store.describe()}...")
        rt.catalog.ensure_layout()
        pull_backup(rt, located.catalog, located.entry, key)


def _pull_one(rt: Runtime, remote: StoreCatalog, entry: Entry) -> SyncItem:
    manifest = entry.manifest
    try:
        if entry.trust != Trust.VERIFIED:
            raise IntegrityError(
                f"The off-site manifest of {entry.id} cannot be trusted: {entry.problem}"
            )
        key = rt.keys.for_backup(manifest.id, manifest.key_fingerprint)
        pull_backup(rt, remote, entry, key)
    except (CosmicError, OSError) as exc:
        message = _sentence(exc)
        rt.log.error("sync: download of %s failed: %s", entry.id, message)
        return SyncItem(entry.id, manifest.component, "failed", message)
    rt.log.info("sync: downloaded %s", entry.id)
    return SyncItem(entry.id, manifest.component, "downloaded")


# -- reading from anywhere ------------------------------------------------------------------
def listed_offsite(rt: Runtime, remote: StoreCatalog, component: str | None) -> list[Entry]:
    """`remote.entries`, and a warning when delete markers hide backups the store still
    keeps (a plain DELETE over Object Lock): never "no backups" while they are there."""
    entries = remote.entries(component)
    if rt.settings.remote_lock_days or not entries:
        _warn_of_delete_markers(rt, remote, component)
    return entries


def _warn_of_delete_markers(rt: Runtime, remote: StoreCatalog, component: str | None) -> None:
    hidden_by = getattr(remote.store, "hidden_by_delete_markers", None)
    if hidden_by is None:
        return
    hidden: list[str] = []
    for name in COMPONENTS if component is None else (component,):
        try:
            hidden += [n for n in hidden_by(f"{name}/") if n.endswith(MANIFEST_SUFFIX)]
        except CosmicError as exc:  # a store without versions: nothing can hide there
            rt.log.debug("versions of %s not listed: %s", name, exc.message)
    if hidden:
        message = (
            f"{len(hidden)} off-site backup(s) were deleted with a plain DELETE but are still "
            f"kept by the store behind delete markers (Object Lock), the newest "
            f"{_id_of(max(hidden, key=_id_of))}; remove the delete markers to bring them "
            "back (docs/offsite.md, 'Deleted backups behind delete markers') and change the "
            "credentials that deleted them."
        )
        rt.log.warning("%s", message)
        rt.say(f"warning: {message}")


@dataclass
class Located:
    """A backup and the catalog its artifact is read from."""

    entry: Entry
    catalog: StoreCatalog
    where: str  # local, remote or both


def locate_all(rt: Runtime, component: str | None) -> list[Located]:
    """Every backup, local or off-site, oldest first; a local copy is preferred when its
    artifact is there. Off-site problems are reported and leave the local ones listed."""
    located, problem = locate_everywhere(rt, component)
    if problem is not None:
        warn_unlisted(rt, problem)
    return located


def locate_everywhere(rt: Runtime, component: str | None) -> tuple[list[Located], str | None]:
    """`locate_all` without the warning: the backups, and why the off-site copies could
    not be listed (None when they were, or when there is no BACKUP_REMOTE)."""
    local = {e.id: e for e in rt.catalog.entries(component)}
    remote_entries: dict[str, Entry] = {}
    remote = None
    problem = None
    try:
        remote = remote_catalog(rt)
        if remote is not None:
            remote_entries = {e.id: e for e in listed_offsite(rt, remote, component)}
    except CosmicError as exc:
        problem = exc.message
    found: list[Located] = []
    for backup_id in local.keys() | remote_entries.keys():
        found.append(_locate_one(rt, remote, local.get(backup_id), remote_entries.get(backup_id)))
    return sorted(found, key=lambda x: order_key(x.entry)), problem


def warn_unlisted(rt: Runtime, problem: str) -> None:
    rt.log.warning("the off-site copies cannot be listed: %s", problem)
    rt.say(f"warning: the off-site copies cannot be listed: {problem}")


def _locate_one(
    rt: Runtime, remote: StoreCatalog | None, here: Entry | None, there: Entry | None
) -> Located:
    if here is None:
        assert there is not None and remote is not None
        return Located(there, remote, "remote")
    if there is None or remote is None:
        return Located(here, rt.catalog, "local")
    if here.manifest.artifact and not rt.catalog.has_artifact(here):
        return Located(there, remote, "remote")  # the local artifact is gone
    return Located(here, rt.catalog, "both")


def select_anywhere(rt: Runtime, component: str, selector: str) -> Located:
    """`Catalog.select` over the local and the off-site backups together."""
    if not rt.settings.remote:
        return Located(rt.catalog.select(component, selector), rt.catalog, "local")
    located, problem = locate_everywhere(rt, component)
    if problem is not None:
        _local_alone(rt, component, selector, located, problem)
    entry = rt.catalog.select(component, selector, [x.entry for x in located])
    for item in located:
        if item.entry is entry:
            if item.where == "remote":
                rt.say(f"Using the off-site copy of {entry.id} ({item.catalog.store.describe()}).")
            return item
    raise OperationFailed(f"The backup {entry.id} was selected but not located.")  # a bug


def _local_alone(
    rt: Runtime, component: str, selector: str, located: list[Located], problem: str
) -> None:
    """Go on with the local backups only for an id held here: 'latest' or a date may be a
    newer backup off-site, and an empty local folder is no proof that none exists."""
    if any(x.entry.id == selector for x in located) or not (
        selector == "latest" or DATE_PATTERN.match(selector) or ID_PATTERN.match(selector)
    ):
        warn_unlisted(rt, problem)  # held here, or malformed: `select` says which
        return
    if ID_PATTERN.match(selector):
        unknown = (
            f"There is no {component} backup {selector} here, and the off-site copies, "
            "where it may be, cannot be listed"
        )
    else:
        unknown = (
            f"'{selector}' cannot be resolved while the off-site copies cannot be listed: "
            f"a newer {component} backup than the local ones may be there"
        )
    try:
        newest = rt.catalog.select(component, selector, [x.entry for x in located]).id
        advice = (
            f"try again once the store answers, or name the newest local match by its id "
            f"({newest}), as in 'cosmic-backup restore {component} {newest}'"
        )
    except CosmicError:
        advice = "try again once the store answers (no local backup matches either)"
    raise OperationFailed(f"{unknown}; {advice}. {problem}")


@contextlib.contextmanager
def open_intact(
    rt: Runtime, located: Located, key: Key
) -> Iterator[UnsealingReader | PayloadReader]:
    """The plaintext of a located backup, its whole MAC checked first. When the local copy
    fails that check and an intact off-site copy exists, the off-site copy is used: nothing
    was read from the damaged one yet, so nothing of it reaches the restore. A chunked
    backup (format 2) is read from the local chunk store, every pack it needs present: one
    missing here (or its list) is fetched from the off-site copy first, when there is one."""
    entry = located.entry
    if entry.manifest.chunked:
        pull_for_reading(rt, located, key)
        yield _open_chunked_completed(rt, located, key)
        return
    with contextlib.ExitStack() as stack:
        artifact = stack.enter_context(open_stored(rt, located.catalog, entry))
        try:
            reader = open_plaintext(rt, artifact, entry.manifest, key)
        except IntegrityError as exc:
            there = _offsite_twin(rt, located)
            if there is None:
                raise
            rt.log.warning("the local copy of %s is damaged (%s); using off-site", entry.id, exc)
            rt.say(
                f"warning: the local copy of {entry.id} is damaged "
                f"({exc.message.rstrip('.')}); using its off-site copy "
                f"({there[1].store.describe()})."
            )
            artifact = stack.enter_context(open_stored(rt, there[1], there[0]))
            reader = open_plaintext(rt, artifact, there[0].manifest, key)
        yield reader


def _open_chunked_completed(rt: Runtime, located: Located, key: Key) -> PayloadReader:
    """`open_chunked`; when its checks before the first byte find a pack or the list
    missing here and the backup is also off-site, what is missing is fetched (each object
    MAC-checked) and the checks run again. Nothing was read for the restore before."""
    entry = located.entry
    try:
        return open_chunked(rt, entry.manifest, key)
    except IntegrityError as exc:
        there = _offsite_twin(rt, located)
        if there is None:
            raise
        rt.log.warning(
            "the local copy of %s is incomplete (%s); fetching from off-site", entry.id, exc
        )
        rt.say(
            f"warning: the local copy of {entry.id} is incomplete ({exc.message.rstrip('.')}); "
            f"fetching what is missing from its off-site copy ({there[1].store.describe()})."
        )
        pull_store_objects(rt, there[1], there[0].manifest, key)
        return open_chunked(rt, entry.manifest, key)


def _offsite_twin(rt: Runtime, located: Located) -> tuple[Entry, StoreCatalog] | None:
    """The trusted off-site entry of a local backup, when there is one."""
    if located.where != "both" or rt.remote is None:
        return None
    for entry in rt.remote.entries(located.entry.manifest.component):
        mine = located.entry.manifest
        same = (entry.manifest.artifact_mac, entry.manifest.chunk_list) == (
            mine.artifact_mac,
            mine.chunk_list,
        )
        if entry.id == located.entry.id and entry.trust == Trust.VERIFIED and same:
            return entry, rt.remote
    return None
