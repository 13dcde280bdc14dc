"""Swapping restored folders into place, restartably, with a journal.

A restore stages the new content beside each live folder, then swaps it in. The journal
(in the backup folder) says which phase a killed run was in: "extracting" is undone (the
live folders were never touched), "swapping" is finished by the next command that takes
the lock.

A live folder is renamed away and the staged one renamed in. A folder that cannot be
renamed (a mount point), or that holds a path a restore must never touch (the backup
folder, the key, the keyring, the logs), is swapped entry by entry instead: its entries
are moved out, then the staged ones in, leaving the protected paths where they are.

Finishing an interrupted swap never deletes what the journal does not name: whatever
appeared in a live folder since the interruption (the app kept writing) is moved aside
into a ``cosmic-kept-<id>-<name>`` folder and reported.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosmic_backup.errors import OperationFailed
from cosmic_backup.storage.local import fsync_dir, replace_file

JOURNAL_NAME = ".files-restore.json"
STAGING_PREFIX = ".cosmic-restore-"
OLD_PREFIX = ".cosmic-old-"
KEPT_PREFIX = "cosmic-kept-"
PHASE_EXTRACTING = "extracting"
PHASE_SWAPPING = "swapping"


def journal_path(backup_dir: Path) -> Path:
    return backup_dir / JOURNAL_NAME


def journal_leftovers(backup_dir: Path) -> list[Path]:
    """Temporary journal files of replace_file that a kill left behind."""
    if not backup_dir.is_dir():
        return []
    return sorted(backup_dir.glob(f".{JOURNAL_NAME}.*.tmp"))


@dataclass
class Target:
    """One live folder to swap: its real path, its archive name, the paths left alone."""

    live: Path
    name: str
    keep: list[Path] = field(default_factory=list)  # protected paths inside it (resolved)
    in_place: bool = False  # a mount point, or it holds a protected path


class Swapper:
    """Stages a restore beside the live folders and swaps it in, restartably."""

    def __init__(self, journal: Path, backup_id: str, *, chown: bool = False) -> None:
        self.journal = journal
        self.backup_id = backup_id
        self.chown = chown and os.geteuid() == 0
        self.state: dict[str, Any] = {}
        self.kept: list[Path] = []  # what an interrupted swap's recovery moved aside

    def _write(self) -> None:
        self.journal.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        replace_file(self.journal, json.dumps(self.state).encode())

    # -- a restore ------------------------------------------------------------------------
    def begin(self, targets: list[Target]) -> Path:
        """Record the plan, then make the staging folder beside the first live folder."""
        tag = f"{STAGING_PREFIX}{self.backup_id}"
        swaps = []
        for target in targets:
            # Staged and old copies sit where renames stay on the live folder's disk.
            home = target.live if target.in_place else target.live.parent
            home.mkdir(parents=True, exist_ok=True)
            swaps.append(
                {
                    "live": str(target.live),
                    "name": target.name,
                    "beside": str(home / f"{tag}-{target.name}"),
                    "old": str(home / f"{OLD_PREFIX}{self.backup_id}-{target.name}"),
                    "kept": str(home / f"{KEPT_PREFIX}{self.backup_id}-{target.name}"),
                    "keep": [str(path) for path in target.keep],
                    "in_place": target.in_place,
                    "emptied": False,
                }
            )
        staging = Path(swaps[0]["beside"]).parent / tag
        self.state = {
            "phase": PHASE_EXTRACTING,
            "id": self.backup_id,
            "staging": str(staging),
            "chown": self.chown,
            "swaps": swaps,
        }
        self._write()
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(mode=0o700)
        return staging

    def stage(self, described: set[str]) -> None:
        """Move each extracted folder beside its target (a copy only across disks).

        `described`: the folders the archive gave an owner and mode; the others keep the
        live folder's.
        """
        staging = Path(self.state["staging"])
        for swap in self.state["swaps"]:
            staged, beside = staging / swap["name"], Path(swap["beside"])
            if not staged.exists():  # the backup held no content for it: an empty folder
                staged.mkdir(mode=0o755)
            if swap["name"] not in described:
                self._like_live(staged, Path(swap["live"]))
            remove_path(beside)
            try:
                _move_tree(staged, beside, chown=self.chown)
            except (OSError, shutil.Error) as exc:
                raise OperationFailed(
                    f"Moving the restored {swap['name']} beside {swap['live']} failed "
                    f"({_reason(exc)}); free some space there and restore again (the live "
                    "folders were not touched)."
                ) from exc
        # The staged files must be on disk before the old ones are let go.
        os.sync()

    def _like_live(self, folder: Path, live: Path) -> None:
        """With nothing in the archive to say, the live folder's owner and mode are kept."""
        try:
            info = live.stat()
        except OSError:
            return
        if self.chown:
            os.chown(folder, info.st_uid, info.st_gid)
        os.chmod(folder, stat.S_IMODE(info.st_mode))

    def swap(self, *, recovering: bool = False) -> None:
        if self.state["phase"] != PHASE_SWAPPING:
            self.state["phase"] = PHASE_SWAPPING
            self._write()
            # Anything changed in a live folder after this instant is not ours to delete.
            self.state["since_ns"] = self.journal.stat().st_mtime_ns
            self._write()
        try:
            self._finish(recovering)
        except OSError as exc:
            raise OperationFailed(
                f"Swapping the restored folders in failed ({exc.strerror or exc}: "
                f"{exc.filename}); fix the cause and run cosmic-backup again: it finishes "
                "the swap."
            ) from exc

    def undo(self) -> None:
        """Before the swap: remove the staged copies; the live folders were never touched."""
        shutil.rmtree(self.state["staging"], ignore_errors=True)
        for swap in self.state["swaps"]:
            remove_path(Path(swap["beside"]))
        self.journal.unlink(missing_ok=True)

    # -- the next run ---------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Finish or undo an interrupted restore; say what was done."""
        messages = []
        for leftover in journal_leftovers(self.journal.parent):
            leftover.unlink(missing_ok=True)
        if not self.journal.exists():
            return messages
        self.state = json.loads(self.journal.read_text())
        self.backup_id = self.state["id"]
        self.chown = bool(self.state.get("chown")) and os.geteuid() == 0
        if self.state["phase"] == PHASE_SWAPPING:
            self.swap(recovering=True)
            messages.append(
                f"finished the swap of the files restore of {self.backup_id}, which was interrupted"
            )
        else:
            self.undo()
            messages.append(
                f"removed the staging folder of the files restore of {self.backup_id}, which "
                "was interrupted before it touched the live folders"
            )
        if self.kept:
            shown = ", ".join(str(path) for path in self.kept)
            messages.append(
                "what was written into the folders being restored after the interruption "
                f"was moved aside, not deleted: {shown}; look through it and move back what "
                "you need"
            )
        return messages

    # -- swapping ---------------------------------------------------------------------------
    def _finish(self, recovering: bool) -> None:
        for swap in self.state["swaps"]:
            if swap.get("in_place"):
                self._swap_entries(swap, recovering)
            else:
                self._swap_folder(swap, recovering)
        for swap in self.state["swaps"]:
            remove_path(Path(swap["old"]))
        shutil.rmtree(self.state["staging"], ignore_errors=True)
        self.journal.unlink(missing_ok=True)

    def _swap_folder(self, swap: dict[str, Any], recovering: bool) -> None:
        """Rename the live folder away and the staged one in; each step can be redone."""
        live, beside, old = Path(swap["live"]), Path(swap["beside"]), Path(swap["old"])
        if not beside.exists():
            return  # already swapped in by an earlier, interrupted run
        if _exists(old):  # the live folder was moved away before the interruption
            if _exists(live):  # so this one appeared since: the app recreated it
                self._aside(live, Path(swap["kept"]))
        elif _exists(live):
            if recovering:
                self._keep_new(live, Path(swap["kept"]), ())
            os.rename(live, old)
        os.rename(beside, live)
        fsync_dir(live.parent)

    def _swap_entries(self, swap: dict[str, Any], recovering: bool) -> None:
        live, beside, old = Path(swap["live"]), Path(swap["beside"]), Path(swap["old"])
        kept = Path(swap["kept"])
        keep = [Path(path) for path in swap.get("keep", [])]
        if not beside.exists():
            return  # already swapped in by an earlier, interrupted run
        ours = tuple(
            prefix + self.state["id"] for prefix in (STAGING_PREFIX, OLD_PREFIX, KEPT_PREFIX)
        )
        if not swap["emptied"]:
            if recovering:
                self._keep_new(live, kept, ours, keep)
            old.mkdir(mode=0o700, exist_ok=True)
            _empty_into(live, old, keep, ours)
            swap["emptied"] = True
            self._write()
        self._fill_from(beside, live, kept, keep)
        info = beside.stat()
        if self.chown:
            os.chown(live, info.st_uid, info.st_gid)
        os.chmod(live, stat.S_IMODE(info.st_mode))
        os.utime(live, ns=(info.st_atime_ns, info.st_mtime_ns))
        remove_path(beside)  # what is left: staged copies of protected paths, never used
        fsync_dir(live)

    def _fill_from(self, source: Path, live: Path, kept: Path, keep: list[Path]) -> None:
        for entry in sorted(source.iterdir()):
            target = live / entry.name
            if target in keep:
                continue  # a protected path stays as it is
            if _holds(target, keep):
                if entry.is_dir() and not entry.is_symlink():
                    self._fill_from(entry, target, kept / entry.name, keep)
                continue
            if _exists(target):  # appeared since the folder was emptied
                self._aside(target, kept / entry.name)
            entry.rename(target)

    def _aside(self, path: Path, destination: Path) -> None:
        destination.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        candidate, attempt = destination, 1
        while _exists(candidate):
            attempt += 1
            candidate = destination.with_name(f"{destination.name}-{attempt}")
        os.rename(path, candidate)
        root = Path(self._kept_root(candidate))
        if root not in self.kept:
            self.kept.append(root)

    def _kept_root(self, path: Path) -> Path:
        for swap in self.state["swaps"]:
            kept = Path(swap["kept"])
            if path == kept or path.is_relative_to(kept):
                return kept
        return path

    def _keep_new(
        self, live: Path, kept: Path, ours: tuple[str, ...], keep: list[Path] | tuple[()] = ()
    ) -> None:
        """Move aside what changed in `live` after the swap began (the journal's time)."""
        since = int(self.state.get("since_ns") or self.journal.stat().st_mtime_ns)
        for path in _changed_since(live, since, ours, list(keep)):
            self._aside(path, kept / path.relative_to(live))


def _changed_since(
    root: Path, since_ns: int, ours: tuple[str, ...], keep: list[Path]
) -> list[Path]:
    """Files and links under `root` whose inode changed at or after `since_ns`.

    Folders are looked into rather than taken whole: adding a file changes its folder.
    """
    found = []
    for folder, folders, files in os.walk(root):
        here = Path(folder)
        descend, links = [], []
        for name in folders:
            path = here / name
            if (here == root and name.startswith(ours)) or path in keep:
                continue
            (links if path.is_symlink() else descend).append(name)
        folders[:] = descend
        for name in [*links, *files]:
            path = here / name
            if (here == root and name.startswith(ours)) or path in keep:
                continue
            try:
                if os.lstat(path).st_ctime_ns >= since_ns:
                    found.append(path)
            except FileNotFoundError:
                continue
    return found


def _empty_into(live: Path, old: Path, keep: list[Path], ours: tuple[str, ...]) -> None:
    """Move every entry of `live` into `old`, except ours and the protected paths."""
    for entry in sorted(live.iterdir()):
        if (ours and entry.name.startswith(ours)) or entry in keep:
            continue
        if _holds(entry, keep):  # a folder holding a protected path: empty it in turn
            (old / entry.name).mkdir(mode=0o700, exist_ok=True)
            _empty_into(entry, old / entry.name, keep, ())
        else:
            entry.rename(old / entry.name)


def _holds(path: Path, keep: list[Path]) -> bool:
    """Is `path` a real folder with a protected path somewhere below it?"""
    return any(k != path and k.is_relative_to(path) for k in keep) and (
        path.is_dir() and not path.is_symlink()
    )


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _reason(exc: OSError | shutil.Error) -> str:
    if isinstance(exc, shutil.Error):  # copytree gathers (source, target, why) triples
        details = exc.args[0] if exc.args else []
        if isinstance(details, list) and details:
            _source, target, why = details[0]
            found = re.match(r"\[Errno \d+\] ([^:]+)", str(why))
            return f"{found.group(1) if found else why}: {target}"
        return str(exc)
    return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc.strerror or exc)


def _move_tree(source: Path, destination: Path, *, chown: bool) -> None:
    """Rename `source` to `destination`; across disks copy it (owners too when root)."""
    mode = stat.S_IMODE(source.lstat().st_mode)
    if mode & 0o700 != 0o700:  # a read-only folder cannot change its parent (non-root)
        os.chmod(source, mode | 0o700)
    try:
        os.rename(source, destination)
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # another disk: copy
            raise
        try:
            shutil.copytree(source, destination, symlinks=True)
            if chown:
                _copy_owners(source, destination)
        except BaseException:
            remove_path(destination)
            raise
        remove_path(source)
    if mode & 0o700 != 0o700:
        os.chmod(destination, mode)


def _copy_owners(source: Path, destination: Path) -> None:
    for folder, folders, files in os.walk(source):
        here = Path(folder)
        there = destination / here.relative_to(source)
        for name in [None, *folders, *files]:
            info = os.lstat(here / name if name else here)
            os.chown(
                there / name if name else there, info.st_uid, info.st_gid, follow_symlinks=False
            )


def remove_path(path: Path) -> None:
    """Remove a file, link or whole folder, read-only folders of ours included."""
    if path.is_dir() and not path.is_symlink():
        try:
            shutil.rmtree(path)
        except PermissionError:
            _make_writable(path)
            shutil.rmtree(path)
    elif _exists(path):
        path.unlink()


def _make_writable(root: Path) -> None:
    """Let the owner write into every folder under `root` (a restored 0555 folder)."""
    for folder, _, _ in os.walk(root):
        try:
            mode = stat.S_IMODE(os.lstat(folder).st_mode)
            os.chmod(folder, mode | 0o700)
        except OSError:
            continue
