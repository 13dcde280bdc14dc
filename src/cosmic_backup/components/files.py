"""The files component: the uploads and static folders, as one streamed tar archive.

Each configured folder is stored under its own top-level name. A restore extracts the
whole archive into a staging folder, and only when every member is extracted and checked
swaps each folder into place (components/swap.py), keeping the old content until the
swap has succeeded. A journal makes the swap restartable: an interrupted restore is
rolled back (still extracting) or forward (already swapping) by the next command that
takes the lock, so a live folder is always either fully old or fully new.

The backup folder, the key, the keyring and the logs are never archived, and a restore
never touches them (components/protected.py).
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Self

from cosmic_backup.components.archive import ExtractStats, list_members, safe_extract
from cosmic_backup.components.base import (
    BackupRequest,
    Component,
    Produced,
    RestorePlan,
    RestoreReport,
    RestoreRequest,
    Source,
)
from cosmic_backup.components.protected import (
    archive_places,
    contains_root,
    inside,
    protected_paths,
)
from cosmic_backup.components.swap import (
    JOURNAL_NAME,
    KEPT_PREFIX,
    OLD_PREFIX,
    STAGING_PREFIX,
    Swapper,
    Target,
    journal_path,
    remove_path,
)
from cosmic_backup.components.tar_writer import TarWriter
from cosmic_backup.errors import NotConfigured, OperationFailed, UsageError
from cosmic_backup.format.manifest import TAG_PRE_RESTORE, Manifest
from cosmic_backup.settings import Settings

__all__ = [
    "JOURNAL_NAME",
    "KEPT_PREFIX",
    "OLD_PREFIX",
    "STAGING_PREFIX",
    "FilesComponent",
    "Folder",
    "interrupted_restore",
    "is_mount_point",
    "recover_interrupted_restore",
]


@dataclass(frozen=True)
class Folder:
    path: Path  # the live folder
    name: str  # its top-level name in the archive
    shown: str  # as configured (relative to the project root when it is inside)

    @property
    def real(self) -> Path:
        """The folder itself when `path` is a symlink to it (uploads -> /mnt/data/uploads)."""
        return self.path.resolve()


def interrupted_restore(settings: Settings) -> Path | None:
    """The journal of a files restore that has not finished, if there is one."""
    journal = journal_path(settings.path("backup_dir"))
    return journal if journal.exists() else None


def recover_interrupted_restore(settings: Settings, log: logging.Logger) -> list[str]:
    """Finish or undo an interrupted files restore (call under the lock); what was done."""
    messages = Swapper(journal_path(settings.path("backup_dir")), "").recover()
    for message in messages:
        log.warning("%s", message)
    return messages


@dataclass(frozen=True)
class SavedFolder:
    path: str  # as configured
    name: str  # its top-level name in the archive
    files: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class FilesSource(Source):
    folders: list[SavedFolder] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # configured, absent at backup time
    files: int = 0
    bytes: int = 0
    links: int = 0
    unreadable: list[str] = field(default_factory=list)
    read_errors: list[str] = field(default_factory=list)  # stored cut short: do not trust
    excluded: list[str] = field(default_factory=list)  # the backup folder, key... left out

    @classmethod
    def of(cls, manifest: Manifest) -> Self:
        source = super().of(manifest)
        folders = [SavedFolder(**saved) for saved in manifest.source.get("folders", [])]
        return replace(source, folders=folders)

    def summary(self) -> str:
        return ", ".join(filter(None, [f"{self.files} files", super().summary()]))


class FilesComponent(Component):
    name = "files"
    payload = "tar"

    # -- what is configured -------------------------------------------------------------
    def folders(self) -> list[Folder]:
        found: list[Folder] = []
        names: set[str] = set()
        for raw in self.settings.files_dirs:
            path = self.settings.resolve(raw)
            self._refuse_unsafe_folder(raw, path)
            name, attempt = path.name or "root", 1
            while name in names:
                attempt += 1
                name = f"{path.name}-{attempt}"
            names.add(name)
            found.append(Folder(path, name, raw))
        return found

    def _refuse_unsafe_folder(self, raw: str, path: Path) -> None:
        """A folder holding the project root, or itself protected, can never be swapped."""
        if contains_root(path, self.settings.project_root):
            raise UsageError(
                f"BACKUP_FILES_DIRS names '{raw}', which holds the whole project "
                f"({self.settings.project_root}); list the folders of files to back up "
                "instead, such as static,uploads."
            )
        real = path.resolve()
        for protected in protected_paths(self.settings):
            if real.is_relative_to(protected.resolve()):
                raise UsageError(
                    f"BACKUP_FILES_DIRS names '{raw}', which is the backup folder, the key, "
                    "the keyring or the logs (never backed up as files); remove it from "
                    "BACKUP_FILES_DIRS."
                )

    def _absent(self, folder: Folder) -> str:
        """Why a configured folder is not backed up: it is missing, or not a folder."""
        if folder.path.exists():
            return f"{folder.shown} is a file, not a folder"
        return f"the folder {folder.shown} does not exist"

    def check_configured(self) -> None:
        # No recovery here: this also runs outside the lock (status, doctor), where a
        # restore may be in progress; recovery runs under the lock.
        folders = self.folders()
        if not any(folder.path.is_dir() for folder in folders):
            files = [folder.shown for folder in folders if folder.path.exists()]
            if files:
                raise NotConfigured(
                    f"{', '.join(files)} {'is a file' if len(files) == 1 else 'are files'}, "
                    "not a folder, and no other file folder exists; set BACKUP_FILES_DIRS to "
                    "the folders to back up."
                )
            shown = ", ".join(folder.shown for folder in folders) or "(none)"
            raise NotConfigured(
                f"None of the file folders exist ({shown}); create them or set "
                "BACKUP_FILES_DIRS to the folders to back up."
            )

    # -- backup -------------------------------------------------------------------------
    def produce(self, out: BinaryIO, request: BackupRequest) -> Produced:
        folders = self.folders()
        present = [folder for folder in folders if folder.path.is_dir()]
        absent = [folder for folder in folders if not folder.path.is_dir()]
        missing = [folder.shown for folder in absent]
        if not present:
            files = [folder.shown for folder in absent if folder.path.exists()]
            what = f"; {', '.join(files)}: a file, not a folder" if files else ""
            raise OperationFailed(
                f"None of the file folders exist ({', '.join(missing)}{what}); nothing was "
                "backed up."
            )
        described = []
        with TarWriter(out, self.log, exclude=protected_paths(self.settings)) as tar:
            for folder in present:
                files_before, bytes_before = tar.stats.files, tar.stats.bytes
                tar.add_tree(folder.real, folder.name)
                described.append(
                    SavedFolder(
                        path=folder.shown,
                        name=folder.name,
                        files=tar.stats.files - files_before,
                        bytes=tar.stats.bytes - bytes_before,
                    )
                )
        stats = tar.stats
        warnings = [f"{self._absent(folder)}; not backed up" for folder in absent]
        warnings += stats.warnings
        warnings += [f"{name} could not be read; not backed up" for name in stats.unreadable]
        source = FilesSource(
            folders=described,
            missing=missing,
            files=stats.files,
            bytes=stats.bytes,
            links=stats.links,
            unreadable=stats.unreadable,
            read_errors=stats.read_errors,
            excluded=stats.excluded,
        )
        return Produced(source, warnings=warnings)

    # -- restore ------------------------------------------------------------------------
    def plan_restore(self, manifest: Manifest, request: RestoreRequest) -> RestorePlan:
        if request.target is not None:
            target = self._target_dir(request.target)
            note = f"The live folders are not touched; the backup is extracted into {target}."
            return RestorePlan(str(target), [note], None, {"target_dir": target})
        pairs = self._live_targets(manifest)
        targets = [self._target(folder) for folder, _ in pairs]
        for (folder, _), target in zip(pairs, targets, strict=True):
            _check_writable(folder, target)  # before the pre-restore backup and the journal
        shown = ", ".join(str(folder.path) for folder, _ in pairs)
        notes = [
            f"{folder.path}: {_count_files(folder.path)} file(s) now, {files} in the backup."
            for folder, files in pairs
        ]
        notes.append("The new content is extracted beside each folder and swapped in at the end.")
        for (folder, _), target in zip(pairs, targets, strict=True):
            if target.keep:
                kept = ", ".join(str(path) for path in target.keep)
                notes.append(f"{folder.path}: {kept} stay(s) as they are, never restored.")
            elif target.in_place:
                notes.append(
                    f"{folder.path} is a mount point: its entries are swapped one by one (an "
                    "interrupted swap is finished by the next run)."
                )
        safety = None
        if any(folder.path.is_dir() for folder, _ in pairs):
            safety = BackupRequest(tags=(TAG_PRE_RESTORE,))
        return RestorePlan(
            shown, notes, safety, {"folders": [f for f, _ in pairs], "targets": targets}
        )

    def _target(self, folder: Folder) -> Target:
        live = folder.real
        keep = inside(live, protected_paths(self.settings))
        return Target(live, folder.name, keep, in_place=bool(keep) or is_mount_point(live))

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
        for saved in FilesSource.of(manifest).folders:
            folder = configured.get(self.settings.resolve(saved.path))
            if folder is None:
                raise UsageError(
                    f"The backup holds the folder '{saved.path}', which BACKUP_FILES_DIRS no "
                    "longer lists; restore it with --target-dir DIR instead."
                )
            pairs.append((replace(folder, name=saved.name), saved.files))
        return pairs

    def consume(self, payload: BinaryIO, manifest: Manifest, plan: RestorePlan) -> RestoreReport:
        if "target_dir" in plan.private:
            return self._extract_elsewhere(payload, plan.private["target_dir"])
        folders: list[Folder] = plan.private["folders"]
        targets: list[Target] = plan.private["targets"]
        skip: list[PurePosixPath] = []
        for target in targets:
            skip += archive_places(target.live, target.name, target.keep)
        swapper = Swapper(self._journal_path(), manifest.id, chown=self._restore_owner)
        staging = swapper.begin(targets)
        try:
            stats = safe_extract(payload, staging, restore_owner=self._restore_owner, skip=skip)
            swapper.stage(stats.tops)
        except BaseException:
            swapper.undo()  # not swapping yet: only the staged copies go
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
        return self._with_warnings(RestoreReport(lines, details), stats)

    def _extract_elsewhere(self, payload: BinaryIO, target: Path) -> RestoreReport:
        """--target-dir: straight into the new or empty folder, emptied again on failure."""
        existed = target.exists()
        try:
            stats = safe_extract(payload, target, restore_owner=self._restore_owner)
        except BaseException:
            if existed:
                for child in target.iterdir():
                    remove_path(child)
            else:
                shutil.rmtree(target, ignore_errors=True)
            raise
        report = RestoreReport(
            [f"Extracted {stats.files} file(s) and {stats.links} link(s) into {target}."],
            {"target_dir": str(target), "files": stats.files, "bytes": stats.bytes},
        )
        return self._with_warnings(report, stats)

    def _with_warnings(self, report: RestoreReport, stats: ExtractStats) -> RestoreReport:
        """Say what the restore could not or would not give back: other users' owners
        (not root), and files' setuid/setgid bits."""
        warnings = []
        if stats.privileges_dropped:
            warnings.append(
                f"{stats.privileges_dropped} restored file(s) had a setuid or setgid bit in "
                f"the backup (e.g. {stats.first_privileged}), dropped so that no file of a "
                "backup becomes a privileged program; set it again with chmod if it is meant."
            )
        if stats.owners_not_kept:
            user = _user_name(os.geteuid())
            warnings.append(
                f"{stats.owners_not_kept} restored file(s) or folder(s) had another owner or "
                f"group in the backup and now belong to {user}, since only root can keep "
                "owners; check that the app can still write them, or restore as root."
            )
        for warning in warnings:
            self.log.warning("%s", warning)
            report.lines.append(f"Warning: {warning}")
        report.details["warnings"] = warnings
        return report

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
        return journal_path(self.settings.path("backup_dir"))


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _check_writable(folder: Folder, target: Target) -> None:
    """Refuse, before anything is written, a restore that could not swap `folder` in."""
    place = target.live if target.in_place else target.live.parent
    while not place.exists():  # begin() creates the missing parents
        place = place.parent
    problem = _probe(place)
    if problem is None and target.in_place and target.live.is_dir() and os.geteuid() != 0:
        # Moving a folder to another parent needs write access to the folder itself.
        for entry in target.live.iterdir():
            if entry.is_dir() and not entry.is_symlink() and not os.access(entry, os.W_OK):
                place, problem = entry, "permission denied"
                break
    if problem is not None:
        raise OperationFailed(
            f"The restore cannot write in {place} ({problem}), which it needs to swap "
            f"{folder.shown} into place; run it as a user who may write there, or restore "
            "elsewhere with --target-dir DIR (nothing was changed)."
        )


def _probe(place: Path) -> str | None:
    """May this process create and remove entries in `place`? None, or why not."""
    if os.access(place, os.W_OK | os.X_OK):
        return None
    try:
        if os.statvfs(place).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError:
        pass
    return "permission denied"


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
