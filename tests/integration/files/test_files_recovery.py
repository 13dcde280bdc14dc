"""An interrupted files restore: recovered by every command that takes the lock, never
deleting what appeared since, and flagged by status and doctor meanwhile (issue 10, item 3).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Project
from tests.integration.files.test_files_cli import PASSPHRASE
from tests.integration.files.test_files_component import (
    backup_of,
    component_in,
    fill,
    restore,
    run_killed_at,
    settle,
)

KEPT_PREFIX = "cosmic-kept-"  # where recovery moves what appeared since
JOURNAL = Path("tmp") / "backups" / ".files-restore.json"


def journal_of(root: Path) -> dict | None:
    path = root / JOURNAL
    return json.loads(path.read_text()) if path.exists() else None


def kill_restore_when(root: Path, stopped_where: Callable[[], bool]) -> None:
    """SIGKILL a restore of uploads at successive steps until it stops where wanted."""
    (root / "uploads").mkdir(exist_ok=True)
    fill(root / "uploads", "new")
    data, manifest = backup_of(component_in(root, "uploads"))
    for step in range(1, 200):
        (root / "uploads" / "héllo new.txt").write_text("changed since the backup")
        assert run_killed_at(step, lambda: restore(component_in(root, "uploads"), data, manifest))
        if stopped_where():
            return
        settle(component_in(root, "uploads"))
    pytest.fail("the restore never stopped where the test wanted")


def project_at(root: Path) -> Project:
    return Project(root=root, env={"BACKUP_KEY": PASSPHRASE, "BACKUP_FILES_DIRS": "uploads"})


def test_a_recreated_folder_is_kept_and_every_locked_command_recovers(tmp_path: Path) -> None:
    """The issue's repro: killed after uploads was renamed away; the app recreates it."""
    uploads = tmp_path / "uploads"

    def renamed_away() -> bool:
        journal = journal_of(tmp_path)
        return bool(journal and journal["phase"] == "swapping" and not uploads.exists())

    kill_restore_when(tmp_path, renamed_away)
    uploads.mkdir()  # the app, still running, recreates its folder and writes a file
    (uploads / "written-after.jpg").write_text("a new upload")
    project = project_at(tmp_path)
    # Meanwhile status is unhealthy and says what to run; doctor warns.
    status = project.run("status")
    assert status.returncode == 8, status.stdout
    assert "RESTORE INTERRUPTED" in status.stdout and "cosmic-backup backup files" in status.stdout
    doctor = project.run("--json", "doctor")
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["files restore"]["state"] == "warning"
    # prune takes the lock, so it settles the restore first, deleting nothing new.
    prune = project.run("prune")
    assert prune.returncode == 0, prune.stderr
    kept = tmp_path / f"{KEPT_PREFIX}files-20261124T030000Z-uploads"
    assert (kept / "written-after.jpg").read_text() == "a new upload"
    assert str(kept) in prune.stderr and "moved aside, not deleted" in prune.stderr
    assert (uploads / "héllo new.txt").read_text() == "new"  # the restore was finished
    assert journal_of(tmp_path) is None
    assert "RESTORE INTERRUPTED" not in project.run("status").stdout


def test_files_written_before_the_swap_reached_a_folder_are_kept(tmp_path: Path) -> None:
    """Killed before uploads was renamed away: what the app wrote since is not deleted."""
    uploads = tmp_path / "uploads"

    def about_to_rename() -> bool:
        journal = journal_of(tmp_path)
        beside = [p for p in tmp_path.iterdir() if p.name.startswith(".cosmic-restore-")]
        return bool(journal and journal["phase"] == "swapping" and beside and uploads.exists())

    kill_restore_when(tmp_path, about_to_rename)
    (uploads / "avatars").mkdir()
    (uploads / "avatars" / "written-after.png").write_text("a new avatar")
    result = project_at(tmp_path).run("verify", "files")  # any locked command recovers
    assert "finished the swap" in result.stderr, result.stderr
    kept = tmp_path / f"{KEPT_PREFIX}files-20261124T030000Z-uploads"
    assert (kept / "avatars" / "written-after.png").read_text() == "a new avatar"
    assert not (kept / "héllo new.txt").exists()  # the old content was not new
    assert (uploads / "héllo new.txt").read_text() == "new"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_a_file_written_into_a_mount_point_being_emptied_is_kept(tmp_path: Path) -> None:
    import subprocess

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(uploads)], check=False
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:

        def emptying() -> bool:
            journal = journal_of(tmp_path)
            old = [p for p in uploads.iterdir() if p.name.startswith(".cosmic-old-")]
            return bool(
                journal
                and journal["phase"] == "swapping"
                and old
                and any(old[0].iterdir())
                and not journal["swaps"][0]["emptied"]
            )

        kill_restore_when(tmp_path, emptying)
        (uploads / "written-after.txt").write_text("written while it was being emptied")
        result = project_at(tmp_path).run("backup", "files")
        assert result.returncode == 0, result.stderr
        kept = uploads / f"{KEPT_PREFIX}files-20261124T030000Z-uploads"
        assert (kept / "written-after.txt").read_text() == "written while it was being emptied"
        assert (uploads / "héllo new.txt").read_text() == "new"
        assert not [p for p in uploads.iterdir() if p.name.startswith(".cosmic-")]
    finally:
        subprocess.run(["umount", "-l", str(uploads)], check=True)


def test_journal_temp_files_of_a_killed_run_are_cleaned(tmp_path: Path) -> None:
    backups = tmp_path / "tmp" / "backups"
    backups.mkdir(parents=True)
    leftover = backups / "..files-restore.json.4242.tmp"
    leftover.write_text("{")
    (tmp_path / "uploads").mkdir()
    result = project_at(tmp_path).run("prune")
    assert result.returncode == 0, result.stderr
    assert not leftover.exists()
