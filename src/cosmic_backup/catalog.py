"""The repository of backups: layout, ids, listing and selection, over any `Store`; and
for the local backup folder, the lock and the clean-up of leftovers.

The backup folder is the single source of truth. Each backup is an artifact
``<component>/<id>.<payload>.gz.enc`` and its manifest ``<component>/<id>.manifest.json``,
written in that order, each atomically, so a manifest only exists for a finished artifact.
An off-site copy has the same layout under its host's prefix, read through the same
`StoreCatalog`: the store is the only thing that differs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import BinaryIO

from cosmic_backup.clock import iso, parse_iso
from cosmic_backup.errors import IntegrityError, Locked, NotFound, OperationFailed, UsageError
from cosmic_backup.format.keys import Key
from cosmic_backup.format.manifest import (
    Manifest,
    check_manifest_mac,
    dump_manifest,
    parse_manifest,
)
from cosmic_backup.states import Outcome, Trust
from cosmic_backup.storage.base import Store, StoreNotFound, Transferred
from cosmic_backup.storage.local import LocalStore

COMPONENTS = ("database", "files", "config")
ARTIFACT_SUFFIX = ".gz.enc"
MANIFEST_SUFFIX = ".manifest.json"
LOCK_FILE = ".lock"
ROOT_ID_FILE = ".root-id"
ROOT_ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")
ID_PATTERN = re.compile(
    r"^(?P<component>database|files|config)-(?P<stamp>\d{8}T\d{6}Z)(?:-(?P<attempt>\d{2,}))?$"
)
DATE_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")

KeyLookup = Callable[[str], Key | None]

_held_locks: set[Path] = set()


class LockFailed(OperationFailed):
    """The lock could not be taken for a reason of the disk (full, read-only), not a holder."""


@dataclass
class Entry:
    """One backup as listed: its manifest and whether the manifest checked out."""

    manifest: Manifest
    trust: Trust
    problem: str | None = None

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def started(self) -> datetime:
        return parse_iso(self.manifest.started_at)

    @property
    def local_day(self) -> date:
        return self.started.astimezone().date()

    @property
    def selectable(self) -> bool:
        """A good backup that `latest` or a date may pick."""
        return self.manifest.ok and not self.manifest.is_pre_restore


def make_id(component: str, started: datetime, attempt: int) -> str:
    base = f"{component}-{started:%Y%m%dT%H%M%SZ}"
    return base if attempt == 0 else f"{base}-{attempt + 1:02d}"


class StoreCatalog:
    """The backups held in one `Store`, read and written through the contract alone."""

    def __init__(
        self,
        store: Store,
        key_lookup: KeyLookup,
        where: str,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.where = where  # "local" or "remote", for listings and messages
        self._key_lookup = key_lookup
        self._warn = warn or (lambda message: None)  # what a listing skipped, for the operator
        # Off-site: the host this folder is for and the roots that may write to it; a
        # manifest that names another is moved or replayed (None/empty: not checked).
        self.host: str | None = None
        self.roots: frozenset[str] = frozenset()

    @staticmethod
    def manifest_name(component: str, backup_id: str) -> str:
        return f"{component}/{backup_id}{MANIFEST_SUFFIX}"

    @staticmethod
    def artifact_name(component: str, backup_id: str, payload: str) -> str:
        return f"{component}/{backup_id}.{payload}{ARTIFACT_SUFFIX}"

    # -- writing ----------------------------------------------------------------------
    def write_manifest(self, manifest: Manifest, key: Key | None) -> None:
        name = self.manifest_name(manifest.component, manifest.id)
        self.store.put(name, io.BytesIO(dump_manifest(manifest, key)))

    def delete_backup(self, entry: Entry) -> None:
        """Remove a backup: manifest first, so a crash never leaves a listed backup without data."""
        manifest = entry.manifest
        self.store.delete(self.manifest_name(manifest.component, manifest.id))
        if manifest.artifact:
            self.store.delete(f"{manifest.component}/{manifest.artifact}")
        if manifest.chunk_list:  # format 2: its chunks stay until prune's sweep
            self.store.delete(f"{manifest.component}/{manifest.chunk_list.get('name')}")

    # -- reading ----------------------------------------------------------------------
    def entries(self, component: str | None = None) -> list[Entry]:
        """Every backup of `component` (or of all), oldest first, each with its trust."""
        found: list[Entry] = []
        for name in COMPONENTS if component is None else (component,):
            for info in self.store.list(f"{name}/"):
                if info.name.endswith(MANIFEST_SUFFIX) and (entry := self._load_listed(info.name)):
                    found.append(entry)
        return in_order(found)

    def _load_listed(self, name: str) -> Entry | None:
        """`_load`, or None for a manifest removed since the listing (another host's prune
        between LIST and GET): it is no backup any more, and the others stay usable."""
        try:
            return self._load(name)
        except StoreNotFound:
            self._warn(
                f"{name} was listed in {self.store.describe()} but is gone since "
                "(removed by a prune?); it is skipped."
            )
            return None

    def _load(self, name: str) -> Entry:
        component, file_name = name.split("/", 1)
        expected_id = file_name.removesuffix(MANIFEST_SUFFIX)
        try:
            with self.store.open_read(name) as handle:
                manifest, body = parse_manifest(handle.read(), name)
        except IntegrityError as exc:
            # Dated by its name, so it sorts where it was: a damaged newest manifest is
            # the newest entry, which `latest` then refuses, as it does an edited one.
            when = _time_of_id(expected_id)
            stub = Manifest(expected_id, component, Outcome.FAILED, "?", [], when, when, "?")
            return Entry(stub, Trust.TAMPERED, exc.message)
        if manifest.id != expected_id or manifest.component != component:
            # Keyed by its own name: a copy of another manifest must not stand in for it.
            when = _time_of_id(expected_id)
            stub = Manifest(expected_id, component, Outcome.FAILED, "?", [], when, when, "?")
            return Entry(
                stub,
                Trust.TAMPERED,
                f"The manifest {name} holds the manifest of {manifest.id}: it was moved or "
                "replayed. Do not trust this backup; use another one.",
            )
        if body.get("mac") is None:
            if manifest.ok:
                return Entry(manifest, Trust.TAMPERED, f"The manifest {name} has no MAC.")
            return Entry(manifest, Trust.UNSIGNED)
        key = self._key_lookup(manifest.key_fingerprint or "")
        if key is None:
            return Entry(
                manifest, Trust.UNVERIFIED, f"key {manifest.key_fingerprint} is not available"
            )
        try:
            check_manifest_mac(body, key, name)
        except IntegrityError as exc:
            return Entry(manifest, Trust.TAMPERED, exc.message)
        misplaced = self._misplaced(manifest, name)
        if misplaced:
            return Entry(manifest, Trust.TAMPERED, misplaced)
        return Entry(manifest, Trust.VERIFIED)

    def _misplaced(self, manifest: Manifest, name: str) -> str | None:
        """Why an authentic manifest does not belong here (another host's, another root's)."""
        if self.host and manifest.host and manifest.host != self.host:
            whose = f"of the host {manifest.host}"
        elif self.roots and manifest.root_id and manifest.root_id not in self.roots:
            whose = f"of another backup root ({manifest.root_id})"
        else:
            return None
        return (
            f"The manifest {name} is {whose}, not of this folder: it was moved or replayed. "
            "Do not trust this backup; use another one."
        )

    def open_artifact(self, entry: Entry, on_progress: Transferred | None = None) -> BinaryIO:
        """A seekable reader of the backup's stored bytes (not yet checked: see artifacts.py);
        `on_progress` hears of the bytes a remote store downloads first."""
        if not entry.manifest.artifact:
            raise NotFound(f"The backup {entry.id} has no artifact: it is a failure record.")
        name = f"{entry.manifest.component}/{entry.manifest.artifact}"
        try:
            return self.store.open_read(name, on_progress)
        except StoreNotFound:
            raise NotFound(
                f"The artifact of {entry.id} is missing from {self.store.describe()} "
                "(its manifest is there); pick another backup with 'cosmic-backup list'."
            ) from None

    def has_artifact(self, entry: Entry) -> bool:
        if not entry.manifest.artifact:
            return False
        try:
            self.store.stat(f"{entry.manifest.component}/{entry.manifest.artifact}")
        except StoreNotFound:
            return False
        return True

    # -- selection --------------------------------------------------------------------
    def select(self, component: str, selector: str, entries: list[Entry] | None = None) -> Entry:
        """Pick a backup by ``latest``, a local calendar day ``YYYY-MM-DD``, or an id,
        among `entries` (by default this catalog's)."""
        entries = self.entries(component) if entries is None else entries
        if selector == "latest":
            return self._newest(entries, component, "no good backup")
        if DATE_PATTERN.match(selector):
            return self._by_day(entries, component, _parse_day(selector))
        if ID_PATTERN.match(selector):
            return self._by_id(entries, component, selector)
        raise UsageError(
            f"'{selector}' is not 'latest', a date (YYYY-MM-DD) or a backup id such as "
            f"{component}-20261123T020000Z; run 'cosmic-backup list {component}' to see them."
        )

    @staticmethod
    def _newest(entries: list[Entry], component: str, what: str) -> Entry:
        candidates = [entry for entry in entries if _may_be_chosen(entry)]
        if not candidates:
            hint = f"{len(entries)} backup(s) listed, none good" if entries else "none at all"
            raise NotFound(
                f"There is {what} of the {component} to restore ({hint}); run "
                f"'cosmic-backup backup {component}' first or check 'cosmic-backup list'."
            )
        return candidates[-1]

    def _by_day(self, entries: list[Entry], component: str, day: date) -> Entry:
        same_day = [entry for entry in entries if entry.local_day == day and _may_be_chosen(entry)]
        if same_day:
            return same_day[-1]
        days = sorted({entry.local_day.isoformat() for entry in entries if entry.selectable})
        shown = ", ".join(days[-10:]) if days else "none"
        raise NotFound(
            f"There is no good {component} backup from {day.isoformat()} (local time). "
            f"Days with one: {shown}."
        )

    @staticmethod
    def _by_id(entries: list[Entry], component: str, backup_id: str) -> Entry:
        for entry in entries:
            if entry.id == backup_id:
                # A manifest that does not parse is listed as a failed stub: hand it back
                # flagged, so restore and verify say it is damaged, not a failure record.
                if not entry.manifest.ok and entry.trust != Trust.TAMPERED:
                    raise NotFound(
                        f"The backup {backup_id} is a failure record ({entry.manifest.error}); "
                        "it holds nothing to restore. Pick another with 'cosmic-backup list'."
                    )
                return entry
        recent = ", ".join(entry.id for entry in entries[-5:] if entry.manifest.ok) or "none"
        raise NotFound(
            f"There is no {component} backup with id {backup_id}. Recent ones: {recent}."
        )


class Catalog(StoreCatalog):
    """The local backup folder: a `StoreCatalog` on a `LocalStore`, plus what only a local
    folder has: its layout, fresh ids, the lock and the clean-up of interrupted runs."""

    store: LocalStore

    def __init__(self, root: Path, key_lookup: KeyLookup) -> None:
        super().__init__(LocalStore(root), key_lookup, "local")
        self.root = root

    def artifact_path(self, entry: Entry) -> Path:
        """The local file of a backup's artifact; prefer `open_artifact`, which every store
        has, so the backup may come from off-site as well."""
        if not entry.manifest.artifact:
            raise NotFound(f"The backup {entry.id} has no artifact: it is a failure record.")
        return self.store.path(f"{entry.manifest.component}/{entry.manifest.artifact}")

    # -- layout -----------------------------------------------------------------------
    def root_id(self) -> str:
        """This backup folder's identity, recorded in each manifest; created on first use."""
        path = self.root / ROOT_ID_FILE
        with contextlib.suppress(FileNotFoundError):
            text = path.read_text().strip()
            if ROOT_ID_PATTERN.match(text):
                return text
        self.store.ensure_folder()
        created = secrets.token_hex(8)
        self.store.write_bytes(ROOT_ID_FILE, created.encode() + b"\n")
        return created

    def ensure_layout(self) -> None:
        self.store.ensure_folder()
        for component in COMPONENTS:
            self.store.ensure_folder(component)

    def new_id(self, component: str, started: datetime) -> str:
        """A fresh id; unique because it is taken under the lock and checked against the folder."""
        taken = {
            info.name.split("/")[-1].split(".")[0] for info in self.store.list(f"{component}/")
        }
        attempt = 0
        while (candidate := make_id(component, started, attempt)) in taken:
            attempt += 1
        return candidate

    # -- the lock ---------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(
        self, command: str, *, wait: bool = False, wait_seconds: float = 3600
    ) -> Iterator[None]:
        """Hold the backup root's lock; refuse (or wait) when another run holds it."""
        path = self.root / LOCK_FILE
        if path in _held_locks:  # a pre-restore backup inside a restore: already ours
            yield
            return
        try:
            self.store.ensure_folder()
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise LockFailed(self._lock_failed_sentence(path, exc)) from None
        try:
            self._acquire(fd, path, wait=wait, wait_seconds=wait_seconds)
            holder = {"pid": os.getpid(), "command": command, "started": time.time()}
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(holder).encode(), 0)
            except OSError as exc:
                fcntl.flock(fd, fcntl.LOCK_UN)
                raise LockFailed(self._lock_failed_sentence(path, exc)) from None
            _held_locks.add(path)
            try:
                yield
            finally:
                _held_locks.discard(path)
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _acquire(self, fd: int, path: Path, *, wait: bool, wait_seconds: float) -> None:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if not wait or time.monotonic() > deadline:
                    raise Locked(self._holder_sentence(path, waited=wait)) from None
                time.sleep(0.2)

    def _lock_failed_sentence(self, path: Path, exc: OSError) -> str:
        if exc.errno in (errno.EEXIST, errno.ENOTDIR):
            return f"The backup folder {self.root} is not a folder; check BACKUP_DIR."
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return (
                f"The backup folder {self.root} is full: its lock file {path.name} cannot be "
                "written. Free some space there (or prune old backups), then run again."
            )
        return (
            f"The lock file {path} cannot be written ({exc.strerror}); check that the backup "
            "folder exists and is writable."
        )

    def _holder_sentence(self, path: Path, *, waited: bool) -> str:
        try:
            holder = json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            holder = {}
        who = "another cosmic-backup run"
        if holder.get("pid"):
            started = datetime.fromtimestamp(holder["started"]).astimezone()
            who = (
                f"another cosmic-backup run (pid {holder['pid']}, "
                f"'{holder.get('command', '?')}', started {started:%Y-%m-%d %H:%M:%S %Z})"
            )
        advice = "it did not finish in time" if waited else "wait for it to finish or pass --wait"
        return f"The backup folder {self.root} is locked by {who}; {advice}."

    # -- leftovers --------------------------------------------------------------------
    def remove_leftovers(self) -> list[str]:
        """Delete what interrupted runs left: temp files, artifacts that never got a manifest.

        Call only while holding the lock, so nothing here can be a write in progress.
        """
        # Here, not at the top: the chunk store's reader imports this module.
        from cosmic_backup.chunkstore.layout import CHUNK_LIST_SUFFIX, StoreLayout
        from cosmic_backup.chunkstore.layout import remove_leftovers as remove_store_leftovers

        removed: list[str] = []
        for component in COMPONENTS:
            for leftover in self.store.partial_leftovers(component):
                leftover.unlink(missing_ok=True)
                removed.append(f"{component}/{leftover.name}")
            names = {info.name for info in self.store.list(f"{component}/")}
            for name in sorted(names):
                if name.endswith((ARTIFACT_SUFFIX, CHUNK_LIST_SUFFIX)):
                    backup_id = name.split("/")[-1].split(".")[0]
                    if self.manifest_name(component, backup_id) not in names:
                        self.store.delete(name)
                        removed.append(name)
        tmp_leftovers = remove_store_leftovers(StoreLayout(self.root))
        removed += [f"store/tmp/{path.name}" for path in tmp_leftovers]
        return removed


def in_order(entries: Iterable[Entry]) -> list[Entry]:
    """Oldest first: by the second the id names, then the id's attempt (``-02`` after the
    first of that second), then the manifest's ``started_at``, which orders the components
    of one ``backup all`` within their second.

    Not by ``started_at`` first: a damaged or replayed manifest stands in with a stub dated
    by its name to the whole second, and sorting it by that against a genuine backup's
    microseconds put a rolled-back newest backup before an older one of the same second,
    so that ``latest`` quietly took the older one.
    """
    return sorted(entries, key=order_key)


def order_key(entry: Entry) -> tuple[str, int, str, str]:
    """The sort key of `in_order`, for lists of things that carry an entry."""
    match = ID_PATTERN.match(entry.id)
    attempt = int(match.group("attempt")) if match and match.group("attempt") else 1
    return _time_of_id(entry.id), attempt, entry.manifest.started_at, entry.id


def _may_be_chosen(entry: Entry) -> bool:
    """A good backup, or one whose manifest cannot be trusted (edited, or not even JSON).

    An untrusted one is handed back flagged, so restore and verify refuse it with the
    reason instead of silently taking an older backup: its status may be the lie.
    """
    return entry.selectable or entry.trust == Trust.TAMPERED


def _time_of_id(backup_id: str) -> str:
    """The start time a backup id names (its manifest's started_at), or the epoch."""
    match = ID_PATTERN.match(backup_id)
    try:
        started = datetime.strptime(match.group("stamp") if match else "", "%Y%m%dT%H%M%SZ")
    except ValueError:
        return "1970-01-01T00:00:00.000000Z"
    return iso(started.replace(tzinfo=UTC))


def _parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"'{text}' is not a real date; write it as YYYY-MM-DD.") from None
