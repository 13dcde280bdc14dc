"""Off-site copies: the remote catalog, the upload after each backup, `sync` both ways,
and the record of uploads that failed (what `status` reports as OFFSITE-MISSING).

An upload sends the artifact first and its manifest last, so an object without a manifest
is never taken for a backup. What arrived is checked twice: the store compares the
SHA-256 it received with the one sent (part by part), and the bytes sent are the ones
whose MAC the manifest records (computed on the way through, so a local file damaged
since the backup is never copied as good).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cosmic_backup.catalog import DATE_PATTERN, ID_PATTERN, Entry, StoreCatalog
from cosmic_backup.clock import iso
from cosmic_backup.errors import CosmicError, IntegrityError, OperationFailed, UsageError
from cosmic_backup.format.keys import Key
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.format.pipeline import check_mac
from cosmic_backup.operations.context import Runtime
from cosmic_backup.states import Trust
from cosmic_backup.storage.local import replace_file

PENDING_FILE = ".offsite-pending.json"


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

    location = parse_remote(rt.settings.remote, host_prefix(rt))
    rt.catalog.store.ensure_folder()  # downloads spool there, beside the backups
    store = S3Store(
        location, spool_dir=rt.catalog.root, lock_days=rt.settings.remote_lock_days or None
    )
    rt.remote = StoreCatalog(store, rt.keys.lookup, "remote", warn=lambda m: _warn(rt, m))
    return rt.remote


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


def _mark_pending(rt: Runtime, manifest: Manifest, error: str) -> None:
    pending = read_pending(rt.catalog.root)
    pending[manifest.id] = {
        "component": manifest.component,
        "error": error,
        "at": iso(rt.clock.now()),
    }
    _write_pending(rt, pending)


def _clear_pending(rt: Runtime, ids: set[str]) -> None:
    pending = read_pending(rt.catalog.root)
    if ids & pending.keys():
        _write_pending(rt, {k: v for k, v in pending.items() if k not in ids})


def pending_components(backup_dir: Path) -> set[str]:
    return {item.get("component", "") for item in read_pending(backup_dir).values()}


# -- upload ---------------------------------------------------------------------------------
class _MacTee(io.RawIOBase):
    """A reader that computes the artifact MAC of every byte it hands on."""

    def __init__(self, source: BinaryIO, key: Key) -> None:
        self._source = source
        self._mac = hmac.new(key.artifact_mac_key, digestmod=hashlib.sha256)
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


def upload(rt: Runtime, remote: StoreCatalog, entry: Entry) -> None:
    """Copy one local backup off-site: artifact first, checked, then its manifest."""
    manifest = entry.manifest
    local = rt.catalog
    if manifest.artifact:
        key = rt.keys.for_backup(manifest.id, manifest.key_fingerprint)
        name = f"{manifest.component}/{manifest.artifact}"
        with local.store.open_read(name) as source:
            tee = _MacTee(source, key)
            remote.store.put(name, tee)  # type: ignore[arg-type]
        if tee.size != manifest.stored_size or not hmac.compare_digest(
            tee.hexdigest(), manifest.artifact_mac or ""
        ):
            remote.store.delete(name)  # no manifest points to it: never a backup
            raise IntegrityError(
                f"The local artifact of {manifest.id} no longer matches its MAC, so it was "
                "not copied off-site; run 'cosmic-backup verify' and take a new backup."
            )
    manifest_name = local.manifest_name(manifest.component, manifest.id)
    with local.store.open_read(manifest_name) as source:
        remote.store.put(manifest_name, source)


def upload_after_backup(rt: Runtime, manifest: Manifest) -> str | None:
    """Upload a backup just taken; on failure record it and return the sentence.

    The local backup stays good whatever happens here.
    """
    remote = None
    try:
        remote = remote_catalog(rt)
        if remote is None:
            return None
        entry = Entry(manifest, Trust.VERIFIED)
        with rt.progress(f"uploading {manifest.id}", manifest.stored_size):
            upload(rt, remote, entry)
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


def _remote_ids(remote: StoreCatalog, component: str) -> set[str]:
    suffix = ".manifest.json"
    return {
        info.name.split("/", 1)[1].removesuffix(suffix)
        for info in remote.store.list(f"{component}/")
        if info.name.endswith(suffix)
    }


def sync_push(rt: Runtime, components: list[str]) -> list[SyncItem]:
    """Upload every good local backup that has no manifest off-site."""
    remote = require_remote(rt)
    items: list[SyncItem] = []
    with rt.catalog.lock("sync", wait=rt.wait):
        for component in components:
            there = _remote_ids(remote, component)
            for entry in rt.catalog.entries(component):
                if entry.id in there or not entry.manifest.ok:
                    continue
                items.append(_push_one(rt, remote, entry))
        done = {item.id for item in items if item.action == "uploaded"}
        gone = set(read_pending(rt.catalog.root)) - {
            e.id for e in rt.catalog.entries() if e.manifest.ok
        }
        _clear_pending(rt, done | gone)  # also forget failures of backups pruned since
    return items


def _push_one(rt: Runtime, remote: StoreCatalog, entry: Entry) -> SyncItem:
    if entry.trust != Trust.VERIFIED:
        reason = entry.problem or f"its manifest is {entry.trust}"
        return SyncItem(entry.id, entry.manifest.component, "skipped", reason)
    try:
        upload(rt, remote, entry)
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


def _pull_one(rt: Runtime, remote: StoreCatalog, entry: Entry) -> SyncItem:
    manifest = entry.manifest
    try:
        if entry.trust != Trust.VERIFIED:
            raise IntegrityError(
                f"The off-site manifest of {entry.id} cannot be trusted: {entry.problem}"
            )
        key = rt.keys.for_backup(manifest.id, manifest.key_fingerprint)
        name = f"{manifest.component}/{manifest.artifact}"
        with remote.open_artifact(entry) as spool:
            check_mac(spool, key, manifest.artifact_mac or "", manifest.stored_size)
            spool.seek(0)
            rt.catalog.store.put(name, spool)
        manifest_name = remote.manifest_name(manifest.component, manifest.id)
        with remote.store.open_read(manifest_name) as source:
            rt.catalog.store.put(manifest_name, source)
    except (CosmicError, OSError) as exc:
        message = _sentence(exc)
        rt.log.error("sync: download of %s failed: %s", entry.id, message)
        return SyncItem(entry.id, manifest.component, "failed", message)
    rt.log.info("sync: downloaded %s", entry.id)
    return SyncItem(entry.id, manifest.component, "downloaded")


# -- reading from anywhere ------------------------------------------------------------------
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
            remote_entries = {e.id: e for e in remote.entries(component)}
    except CosmicError as exc:
        problem = exc.message
    found: list[Located] = []
    for backup_id in local.keys() | remote_entries.keys():
        found.append(_locate_one(rt, remote, local.get(backup_id), remote_entries.get(backup_id)))
    return sorted(found, key=lambda x: (x.entry.manifest.started_at, x.entry.id)), problem


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
