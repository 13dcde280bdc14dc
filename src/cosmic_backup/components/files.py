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
import shutil
from dataclasses import dataclass
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
from cosmic_backup.storage.local import fsync_dir

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
        root = self.settings.project_root
        found: list[Folder] = []
        names: set[str] = set()
        for raw in self.settings.files_dirs:
            path = Path(raw).expanduser()
            path = path if path.is_absolute() else root / path
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
            target = Path(request.target).expanduser()
            target = target if target.is_absolute() else self.settings.project_root / target
            if target.exists() and any(target.iterdir()):
                raise UsageError(
                    f"The folder {target} is not empty; give --target-dir a new or empty folder."
                )
            note = f"The live folders are not touched; the backup is extracted into {target}."
            return RestorePlan(str(target), [note], None, {"target_dir": target})
        pairs = self._live_targets(manifest)
        shown = ", ".join(str(folder.path) for folder, _ in pairs)
        notes = [
            f"{folder.path}: {_count_files(folder.path)} file(s) now, {files} in the backup."
            for folder, files in pairs
        ]
        notes.append("The new content is extracted beside each folder and swapped in at the end.")
        safety = None
        if any(folder.path.is_dir() for folder, _ in pairs):
            safety = BackupRequest(tags=(TAG_PRE_RESTORE,))
        return RestorePlan(shown, notes, safety, {"folders": [f for f, _ in pairs]})

    def _live_targets(self, manifest: Manifest) -> list[tuple[Folder, int]]:
        """The live folder of each folder in the backup, matched by archive name."""
        configured = {folder.name: folder for folder in self.folders()}
        pairs = []
        for saved in manifest.source.get("folders", []):
            folder = configured.get(saved["name"])
            if folder is None:
                raise UsageError(
                    f"The backup holds the folder '{saved['path']}', which BACKUP_FILES_DIRS no "
                    "longer lists; restore it with --target-dir DIR instead."
                )
            pairs.append((folder, int(saved.get("files", 0))))
        return pairs

    def consume(self, payload: BinaryIO, manifest: Manifest, plan: RestorePlan) -> RestoreReport:
        if "target_dir" in plan.private:
            target: Path = plan.private["target_dir"]
            stats = safe_extract(payload, target, restore_owner=self._restore_owner)
            return RestoreReport(
                [f"Extracted {stats.files} file(s) and {stats.links} link(s) into {target}."],
                {"target_dir": str(target), "files": stats.files, "bytes": stats.bytes},
            )
        folders: list[Folder] = plan.private["folders"]
        swapper = _Swapper(self._journal_path(), manifest.id)
        staging = swapper.begin(folders)
        try:
            stats = safe_extract(payload, staging, restore_owner=self._restore_owner)
        except BaseException:
            swapper.recover()  # still extracting: only the staging folder goes
            raise
        swapper.swap(folders)
        lines = [
            f"Restored {folder.path} ({_count_files(folder.path)} file(s))." for folder in folders
        ]
        details = {
            "folders": [str(f.path) for f in folders],
            "files": stats.files,
            "bytes": stats.bytes,
        }
        return RestoreReport(lines, details)

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


class _Swapper:
    """Stages a restore beside the live folders and swaps it in, restartably."""

    def __init__(self, journal: Path, backup_id: str) -> None:
        self.journal = journal
        self.backup_id = backup_id

    def _write(self, state: dict[str, Any]) -> None:
        self.journal.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = self.journal.with_name(self.journal.name + ".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.journal)
        fsync_dir(self.journal.parent)

    def begin(self, folders: list[Folder]) -> Path:
        """Record the plan, then make the staging folder beside the first live folder."""
        parent = folders[0].real.parent
        parent.mkdir(parents=True, exist_ok=True)
        staging = parent / f"{STAGING_PREFIX}{self.backup_id}"
        swaps = [
            {
                "live": str(f.real),
                "staged": str(staging / f.name),
                "beside": str(f.real.parent / f"{STAGING_PREFIX}{self.backup_id}-{f.name}"),
                "old": str(f.real.parent / f"{OLD_PREFIX}{self.backup_id}-{f.name}"),
            }
            for f in folders
        ]
        self._write({"phase": PHASE_EXTRACTING, "staging": str(staging), "swaps": swaps})
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(mode=0o700)
        return staging

    def swap(self, folders: list[Folder]) -> None:
        state = json.loads(self.journal.read_text())
        for swap in state["swaps"]:  # move each staged folder beside its target (same disk)
            staged, beside = Path(swap["staged"]), Path(swap["beside"])
            if not staged.exists():  # the backup held no content for it: an empty folder
                staged.mkdir(mode=0o755)
            if beside.exists():
                shutil.rmtree(beside)
            shutil.move(staged, beside)
        state["phase"] = PHASE_SWAPPING
        self._write(state)
        self._finish(state)

    @staticmethod
    def _swap_one(swap: dict[str, str]) -> None:
        live, beside, old = Path(swap["live"]), Path(swap["beside"]), Path(swap["old"])
        if not beside.exists():
            return  # already swapped in by an earlier, interrupted run
        if live.exists() or live.is_symlink():
            if old.exists():
                shutil.rmtree(old)
            os.rename(live, old)
        os.rename(beside, live)
        fsync_dir(live.parent)

    def _finish(self, state: dict[str, Any]) -> None:
        for swap in state["swaps"]:
            self._swap_one(swap)
        for swap in state["swaps"]:
            old = Path(swap["old"])
            if old.exists():
                shutil.rmtree(old)
        shutil.rmtree(state["staging"], ignore_errors=True)
        self.journal.unlink(missing_ok=True)

    def recover(self) -> str | None:
        if not self.journal.exists():
            return None
        state = json.loads(self.journal.read_text())
        if state["phase"] == PHASE_SWAPPING:
            self._finish(state)
            return "finished the swap of a files restore that was interrupted"
        shutil.rmtree(state["staging"], ignore_errors=True)
        for swap in state["swaps"]:
            shutil.rmtree(swap["beside"], ignore_errors=True)
        self.journal.unlink(missing_ok=True)
        return "removed the staging folder of a files restore that was interrupted"
