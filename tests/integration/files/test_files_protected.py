"""The backup folder, key, keyring and logs never travel in a files or config archive,
and a files restore never touches them, wherever they are (issue 10, item 2)."""

from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile

import pytest

from cosmic_backup.components.archive import TarWriter
from cosmic_backup.components.base import BackupRequest, RestoreRequest
from cosmic_backup.components.files import FilesComponent
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.settings import load_settings
from tests.conftest import Project
from tests.integration.files.test_files_cli import PASSPHRASE, listed

LOG = logging.getLogger("test.protected")


def storage_project(project: Project) -> Project:
    """The issue's repro: the backup folder, key and logs all inside the files folder."""
    project.env.update(
        {
            "BACKUP_FILES_DIRS": "storage",
            "BACKUP_DIR": "storage/backups",
            "BACKUP_KEY_FILE": "storage/.backup_key",
            "BACKUP_LOG_DIR": "storage/logs",
        }
    )
    storage = project.root / "storage"
    (storage / "uploads").mkdir(parents=True)
    (storage / "uploads" / "a.txt").write_text("original")
    return project


def members(project: Project, backup_id: str) -> list[str]:
    """The names inside a files backup, decrypted by the CLI's own restore-test path."""
    review = project.root / f"review-{backup_id}"
    result = project.run("restore", "files", backup_id, "--target-dir", str(review))
    assert result.returncode == 0, result.stderr
    return sorted(str(p.relative_to(review)) for p in review.rglob("*"))


def test_a_restore_keeps_the_backups_inside_the_files_folder(project: Project) -> None:
    storage_project(project)
    first = project.run("--json", "backup", "files")
    assert first.returncode == 0, first.stderr
    second = project.run("--json", "backup", "files")
    assert second.returncode == 0, second.stderr
    key_before = (project.root / "storage" / ".backup_key").read_bytes()
    (project.root / "storage" / "uploads" / "a.txt").write_text("changed")
    restore = project.run("restore", "files", "latest", "--yes")
    assert restore.returncode == 0, restore.stderr
    assert (project.root / "storage" / "uploads" / "a.txt").read_text() == "original"
    # Both backups and the pre-restore copy are still there, and still restorable.
    entries = listed(project)
    assert len(entries) == 3, entries
    assert all(entry["status"] == "ok" for entry in entries)
    assert (project.root / "storage" / ".backup_key").read_bytes() == key_before
    assert project.run("verify", "files", "latest").returncode == 0
    # No backup holds another one, the key or the logs.
    names = members(project, entries[1]["id"])
    assert "storage/uploads/a.txt" in names
    assert not [n for n in names if n.startswith(("storage/backups", "storage/logs"))]
    assert "storage/.backup_key" not in names
    assert not [p for p in project.root.iterdir() if p.name.startswith(".cosmic-")]


def test_an_old_backup_holding_the_backup_folder_never_swaps_it_back(tmp_path) -> None:
    """Archives made before the fix hold storage/backups: the restore leaves it out."""
    settings = load_settings(
        tmp_path, environ={"BACKUP_FILES_DIRS": "storage", "BACKUP_DIR": "storage/backups"}
    )
    storage = tmp_path / "storage"
    (storage / "backups" / "files").mkdir(parents=True)
    (storage / "backups" / "files" / "then.enc").write_text("an old backup")
    (storage / "photo.jpg").write_text("old photo")
    out = io.BytesIO()
    with TarWriter(out, LOG) as tar:  # no exclusion: as the old code wrote it
        tar.add_tree(storage, "storage")
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as archive:
        assert "storage/backups/files/then.enc" in archive.getnames()
    source = {"folders": [{"path": "storage", "name": "storage", "files": 2}]}
    manifest = Manifest("files-20261124T030000Z", "files", "ok", "full", [], "", "", "0", source)
    (storage / "backups" / "files" / "then.enc").unlink()
    (storage / "backups" / "files" / "now.enc").write_text("the newest backup")
    (storage / "photo.jpg").write_text("new photo")
    component = FilesComponent(settings, LOG)
    plan = component.plan_restore(manifest, RestoreRequest())
    component.consume(io.BytesIO(out.getvalue()), manifest, plan)
    assert (storage / "photo.jpg").read_text() == "old photo"
    assert sorted(p.name for p in (storage / "backups" / "files").iterdir()) == ["now.enc"]
    assert not [p for p in storage.iterdir() if ".cosmic-" in p.name]


def test_excluded_paths_are_never_archived_whatever_the_paths(tmp_path) -> None:
    """Reached through another spelling or a link, the key and logs are still left out."""
    (tmp_path / "data" / "logs").mkdir(parents=True)
    (tmp_path / "data" / "logs" / "today.log").write_text("log line")
    (tmp_path / "data" / "keys").mkdir()
    (tmp_path / "data" / "keys" / "the.key").write_text("secret passphrase")
    (tmp_path / "data" / "keys" / ".backup_keyring").mkdir()
    (tmp_path / "data" / "keys" / ".backup_keyring" / "old.key").write_text("old secret")
    (tmp_path / "data" / "keep.txt").write_text("keep me")
    (tmp_path / "alias").symlink_to(tmp_path / "data")
    settings = load_settings(
        tmp_path,
        environ={
            "BACKUP_FILES_DIRS": "data",
            "BACKUP_KEY_FILE": "alias/keys/the.key",
            "BACKUP_LOG_DIR": "./alias/../data/logs",
        },
    )
    out = io.BytesIO()
    produced = FilesComponent(settings, LOG).produce(out, BackupRequest())
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as archive:
        names = archive.getnames()
    assert "data/keep.txt" in names
    assert not [n for n in names if "logs" in n or n.endswith(".key")]
    assert "data/keys" in names  # the folder itself is not the key
    assert sorted(produced.source.excluded) == [
        "data/keys/.backup_keyring",
        "data/keys/the.key",
        "data/logs",
    ]


@pytest.mark.parametrize("folders", [".", "/", "..", "static,./"])
def test_a_files_folder_holding_the_project_root_is_refused(project: Project, folders: str) -> None:
    project.env.update({"BACKUP_KEY": PASSPHRASE})
    (project.root / "static").mkdir()
    (project.root / "static" / "app.css").write_text("body {}")
    assert project.run("backup", "files").returncode == 0
    project.env["BACKUP_FILES_DIRS"] = folders
    for command in (["backup", "files"], ["restore", "files", "latest", "--yes"]):
        result = project.run(*command)
        assert result.returncode == 2, result.stderr
        assert "holds the whole project" in result.stderr
        assert "Traceback" not in result.stderr and "bug" not in result.stderr
        assert len([line for line in result.stderr.splitlines() if "error" in line]) == 1
    assert len(listed(project)) == 1  # no failure record, no pre-restore copy
    assert (project.root / "static" / "app.css").exists()


def test_the_config_archive_never_holds_the_key_logs_or_backups(project: Project) -> None:
    """All of them inside the configured config folder: none of them is archived."""
    project.env.update(
        {
            "BACKUP_KEY_FILE": "config/.backup_key",
            "BACKUP_LOG_DIR": "config/logs",
            "BACKUP_DIR": "config/backups",
        }
    )
    (project.root / ".env").write_text("APP=1\n")
    (project.root / "config").mkdir()
    (project.root / "config" / "app.toml").write_text("x = 1\n")
    assert project.run("backup", "config").returncode == 0  # creates the key
    result = project.run("--json", "backup", "config")
    assert result.returncode == 0, result.stderr
    review = project.root.parent / "review"
    restored = project.run("--json", "restore", "config", "latest", "--target-dir", str(review))
    assert restored.returncode == 0, restored.stderr
    names = sorted(str(p.relative_to(review)) for p in review.rglob("*"))
    assert "files/config/app.toml" in names and "files/.env" in names
    leaked = [n for n in names if n.startswith(("files/config/.backup", "files/config/logs"))]
    assert leaked == [] and "files/config/backups" not in names
    assert json.loads(restored.stdout)["restored"].startswith("config-")


def test_sigkill_at_any_step_never_touches_the_backup_folder_inside(tmp_path) -> None:
    """The folder holding the backups is swapped entry by entry: killed anywhere, the
    backups (and the journal among them) stay, and the rest is fully old or fully new."""
    from tests.integration.files.test_files_component import fill, run_killed_at, settle
    from tests.trees import tree_snapshot

    environ = {"BACKUP_FILES_DIRS": "storage", "BACKUP_DIR": "storage/backups"}

    def component() -> FilesComponent:
        return FilesComponent(load_settings(tmp_path, environ=environ), LOG)

    storage = tmp_path / "storage"
    storage.mkdir()
    fill(storage, "new")
    out = io.BytesIO()
    produced = component().produce(out, BackupRequest())
    source = produced.source.to_dict()
    manifest = Manifest("files-20261124T030000Z", "files", "ok", "full", [], "", "", "0", source)
    (storage / "backups" / "files").mkdir(parents=True)
    (storage / "backups" / "files" / "kept.enc").write_text("a backup")

    def content() -> dict:
        return {k: v for k, v in tree_snapshot(storage).items() if not k.startswith("backups")}

    new = content()

    def make_old() -> None:
        for child in storage.iterdir():
            if child.name == "backups":
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        fill(storage, "old")

    make_old()
    old = content()

    def run() -> None:
        plan = component().plan_restore(manifest, RestoreRequest())
        component().consume(io.BytesIO(out.getvalue()), manifest, plan)

    step, outcomes = 0, set()
    while True:
        step += 1
        killed = run_killed_at(step, run)
        settle(component())
        state = content()
        assert state in (old, new), f"mixed folder after a kill at step {step}"
        assert (storage / "backups" / "files" / "kept.enc").read_text() == "a backup"
        assert not (storage / "backups" / ".files-restore.json").exists()
        outcomes.add("new" if state == new else "old")
        if not killed:
            break
        if state == new:
            make_old()
    assert state == new and outcomes == {"old", "new"}
