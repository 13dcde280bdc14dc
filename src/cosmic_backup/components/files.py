"""The files component: the uploads and static folders, as one streamed tar archive.

Each configured folder is stored under its own top-level name. A restore extracts the
whole archive into a staging folder, and only when every member is extracted and checked
swaps each folder into place with renames, keeping the old content until the swap has
succeeded. A journal makes the swap restartable: an interrupted restore is rolled back
(still extracting) or forward (already swapping) by the next run, so a live folder is
always either fully old or fully new.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from cosmic_backup.components.archive import TarWriter, list_members, safe_extract
from cosmic_backup.components.base import (
    BackupRequest,
    Component,
    Produced,
    RestorePlan,
    RestoreReport,
    RestoreRequest,
)
from cosmic_backup.errors import NotConfigured, OperationFailed, UsageError
from cosmic_backup.format.manifest import TAG_PRE_RESTORE, Manifest
from cosmic_backup.storage.local import fsync_dir, replace_file

JOURNAL_NAME = ".files-restore.json"
STAGING_PREFIX = ".cosmic-restore-"
OLD_PREFIX = ".cosmic-old-"
PHASE_EXTRACTING = "extracting"
PHASE_SWAPPING = "swapping"


@dataclass(frozen=True)
class Folder:
    path: Path  # the live folder
    name: str  # its top-level name in the archive
    shown: str  # as configured (relative to the project root when it is inside)

    @property
    def real(self) -> Path:
        """The folder itself when `path` is a symlink to it (uploads -> /mnt/data/uploads)."""
        return self.path.resolve()


class FilesComponent(Component):
    name = "files"
    payload = "tar"

    # -- what is configured -------------------------------------------------------------
    def folders(self) -> list[Folder]:
        found: list[Folder] = []
        names: set[str] = set()
        for raw in self.settings.files_dirs:
            path = self.settings.resolve(raw)
            name, attempt = path.name or "root", 1
            while name in names:
                attempt += 1
                name = f"{path.name}-{attempt}"
            names.add(name)
            found.append(Folder(path, name, raw))
        return found

    def check_configured(self) -> None:
        # No recovery here: this also runs outside the lock (status, doctor), where a
        # restore may be in progress; recover() runs under the lock.
        if not any(folder.path.is_dir() for folder in self.folders()):
            shown = ", ".join(folder.shown for folder in self.folders()) or "(none)"
            raise NotConfigured(
                f"None of the file folders exist ({shown}); create them or set "
                "BACKUP_FILES_DIRS to the folders to back up."
            )

    # -- backup -------------------------------------------------------------------------
    def produce(self, out: BinaryIO, request: BackupRequest) -> Produced:
        present = [folder for folder in self.folders() if folder.path.is_dir()]
        missing = [folder.shown for folder in self.folders() if not folder.path.is_dir()]
        if not present:
            raise OperationFailed(
                f"None of the file folders exist ({', '.join(missing)}); nothing was backed up."
            )
        described = []
        with TarWriter(out, self.log) as tar:
            for folder in present:
                files_before, bytes_before = tar.stats.files, tar.stats.bytes
                tar.add_tree(folder.real, folder.name)
                described.append(
                    {
                        "path": folder.shown,
                        "name": folder.name,
                        "files": tar.stats.files - files_before,
                        "bytes": tar.stats.bytes - bytes_before,
                    }
                )
        stats = tar.stats
        warnings = [f"the folder {name} does not exist; not backed up" for name in missing]
        warnings += stats.warnings
        warnings += [f"{name} could not be read; not backed up" for name in stats.unreadable]
        source = {
            "folders": described,
            "missing": missing,
            "files": stats.files,
            "bytes": stats.bytes,
            "links": stats.links,
            "unreadable": stats.unreadable,
        }
        return Produced(source=source, warnings=warnings)

    # -- restore ------------------------------------------------------------------------
    def plan_restore(self, manifest: Manifest, request: RestoreRequest) -> RestorePlan:
        if request.target is not None:
            target = self._target_dir(request.target)
            note = f"The live folders are not touched; the backup is extracted into {target}."
            return RestorePlan(str(target), [note], None, {"target_dir": target})
        pairs = self._live_targets(manifest)
        shown = ", ".join(str(folder.path) for folder, _ in pairs)
        notes = [
            f"{folder.path}: {_count_files(folder.path)} file(s) now, {files} in the backup."
            for folder, files in pairs
        ]
        notes.append("The new content is extracted beside each folder and swapped in at the end.")
        notes += [
            f"{folder.path} is a mount point: its entries are swapped one by one (an "
            "interrupted swap is finished by the next run)."
            for folder, _ in pairs
            if is_mount_point(folder.real)
        ]
        safety = None
        if any(folder.path.is_dir() for folder, _ in pairs):
            safety = BackupRequest(tags=(TAG_PRE_RESTORE,))
        return RestorePlan(shown, notes, safety, {"folders": [f for f, _ in pairs]})

    def _target_dir(self, raw: str) -> Path:
        target = self.settings.resolve(raw)
        if target.exists() and not target.is_dir():
            raise UsageError(f"{target} is not a folder; give --target-dir a new or empty folder.")
        if target.is_dir() and any(target.iterdir()):
            raise UsageError(
                f"The folder {target} is not empty; give --target-dir a new or empty folder."
            )
        return target

    def _live_targets(self, manifest: Manifest) -> list[tuple[Folder, int]]:
        """The live folder of each folder in the backup, matched by its configured path.

        Not by archive name: two folders called uploads are uploads and uploads-2 in the
        order configured, and that order may have changed since the backup.
        """
        configured = {folder.path: folder for folder in self.folders()}
        pairs = []
        for saved in manifest.source.get("folders", []):
            folder = configured.get(self.settings.resolve(saved["path"]))
            if folder is None:
                raise UsageError(
                    f"The backup holds the folder '{saved['path']}', which BACKUP_FILES_DIRS no "
                    "longer lists; restore it with --target-dir DIR instead."
                )
            pairs.append((replace(folder, name=saved["name"]), int(saved.get("files", 0))))
        return pairs

    def consume(self, payload: BinaryIO, manifest: Manifest, plan: RestorePlan) -> RestoreReport:
        if "target_dir" in plan.private:
            return self._extract_elsewhere(payload, plan.private["target_dir"])
        folders: list[Folder] = plan.private["folders"]
        swapper = _Swapper(self._journal_path(), manifest.id)
        staging = swapper.begin(folders)
        try:
            stats = safe_extract(payload, staging, restore_owner=self._restore_owner)
            swapper.stage()
        except BaseException:
            swapper.recover()  # not swapping yet: only the staged copies go
            raise
        swapper.swap()
        lines = [
            f"Restored {folder.path} ({_count_files(folder.path)} file(s))." for folder in folders
        ]
        details = {
            "folders": [str(f.path) for f in folders],
            "files": stats.files,
            "bytes": stats.bytes,
        }
        return RestoreReport(lines, details)

    def _extract_elsewhere(self, payload: BinaryIO, target: Path) -> RestoreReport:
        """--target-dir: straight into the new or empty folder, emptied again on failure."""
        existed = target.exists()
        try:
            stats = safe_extract(payload, target, restore_owner=self._restore_owner)
        except BaseException:
            if existed:
                for child in target.iterdir():
                    _remove(child)
            else:
                shutil.rmtree(target, ignore_errors=True)
            raise
        return RestoreReport(
            [f"Extracted {stats.files} file(s) and {stats.links} link(s) into {target}."],
            {"target_dir": str(target), "files": stats.files, "bytes": stats.bytes},
        )

    def check_payload(self, payload: BinaryIO, manifest: Manifest) -> dict[str, Any]:
        stats = list_members(payload)
        return {
            "files": stats.files,
            "folders": stats.folders,
            "links": stats.links,
            "bytes": stats.bytes,
        }

    @property
    def _restore_owner(self) -> bool:
        return bool(self.settings.files_restore_owner)

    # -- interrupted restores -------------------------------------------------------------
    def _journal_path(self) -> Path:
        return self.settings.path("backup_dir") / JOURNAL_NAME

    def recover(self) -> None:
        """Finish or undo a restore that was killed, before anything reads the folders."""
        message = _Swapper(self._journal_path(), "").recover()
        if message:
            self.log.warning("%s", message)


def _count_files(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(len(files) for _, _, files in os.walk(folder))


def is_mount_point(path: Path) -> bool:
    """Is `path` mounted on? Also a bind mount from the same disk, which ismount misses."""
    if os.path.ismount(path):
        return True
    try:
        table = Path("/proc/self/mountinfo").read_text()
    except OSError:  # not Linux: ismount is all there is
        return False
    unescape = partial(re.sub, r"\\([0-7]{3})", lambda code: chr(int(code.group(1), 8)))
    return any(
        len(fields) > 4 and unescape(fields[4]) == str(path)
        for fields in (line.split(" ") for line in table.splitlines())
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class _Swapper:
    """Stages a restore beside the live folders and swaps it in, restartably.

    The journal's phase decides what an interrupted run meant: "extracting" is undone
    (the live folders were never touched), "swapping" is finished. A live folder is
    renamed away and the staged one renamed in; a mount point cannot be renamed, so its
    entries are moved out, then the staged ones in, the journal noting when it is empty.
    """

    def __init__(self, journal: Path, backup_id: str) -> None:
        self.journal = journal
        self.backup_id = backup_id
        self.state: dict[str, Any] = {}

    def _write(self) -> None:
        self.journal.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        replace_file(self.journal, json.dumps(self.state).encode())

    def begin(self, folders: list[Folder]) -> Path:
        """Record the plan, then make the staging folder beside the first live folder."""
        tag = f"{STAGING_PREFIX}{self.backup_id}"
        swaps = []
        for folder in folders:
            live = folder.real
            in_place = is_mount_point(live)
            home = live if in_place else live.parent  # where renames stay on one disk
            home.mkdir(parents=True, exist_ok=True)
            swaps.append(
                {
                    "live": str(live),
                    "name": folder.name,
                    "beside": str(home / f"{tag}-{folder.name}"),
                    "old": str(home / f"{OLD_PREFIX}{self.backup_id}-{folder.name}"),
                    "in_place": in_place,
                    "emptied": False,
                }
            )
        staging = Path(swaps[0]["beside"]).parent / tag
        self.state = {
            "phase": PHASE_EXTRACTING,
            "id": self.backup_id,
            "staging": str(staging),
            "swaps": swaps,
        }
        self._write()
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(mode=0o700)
        return staging

    def stage(self) -> None:
        """Move each extracted folder beside its target (a copy only across disks)."""
        staging = Path(self.state["staging"])
        for swap in self.state["swaps"]:
            staged, beside = staging / swap["name"], Path(swap["beside"])
            if not staged.exists():  # the backup held no content for it: an empty folder
                staged.mkdir(mode=0o755)
            _remove(beside)
            shutil.move(staged, beside)
        # The staged files must be on disk before the old ones are let go.
        os.sync()

    def swap(self) -> None:
        self.state["phase"] = PHASE_SWAPPING
        self._write()
        try:
            self._finish()
        except OSError as exc:
            raise OperationFailed(
                f"Swapping the restored folders in failed ({exc.strerror}: {exc.filename}); "
                "fix the cause and run cosmic-backup again: it finishes the swap."
            ) from exc

    def _finish(self) -> None:
        for swap in self.state["swaps"]:
            if swap.get("in_place"):
                self._swap_entries(swap)
            else:
                _swap_folder(swap)
        for swap in self.state["swaps"]:
            _remove(Path(swap["old"]))
        shutil.rmtree(self.state["staging"], ignore_errors=True)
        self.journal.unlink(missing_ok=True)

    def _swap_entries(self, swap: dict[str, Any]) -> None:
        live, beside, old = Path(swap["live"]), Path(swap["beside"]), Path(swap["old"])
        if not beside.exists():
            return  # already swapped in by an earlier, interrupted run
        ours = (STAGING_PREFIX + self.state["id"], OLD_PREFIX + self.state["id"])
        if not swap["emptied"]:
            old.mkdir(mode=0o700, exist_ok=True)
            for entry in live.iterdir():
                if not entry.name.startswith(ours):
                    entry.rename(old / entry.name)
            swap["emptied"] = True
            self._write()
        for entry in beside.iterdir():
            entry.rename(live / entry.name)
        info = beside.stat()
        os.chmod(live, stat.S_IMODE(info.st_mode))
        os.utime(live, ns=(info.st_atime_ns, info.st_mtime_ns))
        beside.rmdir()
        fsync_dir(live)

    def recover(self) -> str | None:
        if not self.journal.exists():
            return None
        self.state = json.loads(self.journal.read_text())
        if self.state["phase"] == PHASE_SWAPPING:
            self.swap()
            return "finished the swap of a files restore that was interrupted"
        shutil.rmtree(self.state["staging"], ignore_errors=True)
        for swap in self.state["swaps"]:
            _remove(Path(swap["beside"]))
        self.journal.unlink(missing_ok=True)
        self.journal.with_name(self.journal.name + ".tmp").unlink(missing_ok=True)
        return "removed the staging folder of a files restore that was interrupted"


def _swap_folder(swap: dict[str, Any]) -> None:
    """Rename the live folder away and the staged one in; each step can be redone."""
    live, beside, old = Path(swap["live"]), Path(swap["beside"]), Path(swap["old"])
    if not beside.exists():
        return  # already swapped in by an earlier, interrupted run
    if live.exists() or live.is_symlink():
        _remove(old)
        os.rename(live, old)
    os.rename(beside, live)
    fsync_dir(live.parent)
