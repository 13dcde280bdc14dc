"""Owners kept by a files restore, and each failure the issue met as "unexpected ... this
is a bug" ending in one sentence instead (issue 10, items 8, 10, 11 and 13).

Root runs the suite here; runs as the unprivileged user go through setpriv, in a folder
under /tmp that user can reach.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cosmic_backup.components.base import RestoreRequest
from cosmic_backup.components.files import FilesComponent
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.settings import load_settings
from tests.conftest import Project, clean_environ
from tests.integration.files.test_files_cli import PASSPHRASE, listed

NOBODY = 65534  # nobody:nogroup
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def run_as(uid: int, root: Path, *args: str, env: dict[str, str] | None = None):
    """The real CLI in `root`, as `uid` (root or nobody)."""
    command = [sys.executable, "-m", "cosmic_backup", "-C", str(root), *args]
    if uid != 0:
        if not shutil.which("setpriv"):
            pytest.skip("needs setpriv to run as another user")
        command = [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            *command,
        ]
    extra = {"BACKUP_KEY": PASSPHRASE, "HOME": str(root), "BACKUP_FILES_DIRS": "uploads"}
    return subprocess.run(
        command,
        env=clean_environ({**extra, **(env or {})}),
        capture_output=True,
        text=True,
        cwd=root,
        check=False,
        timeout=120,
    )


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A project root outside pytest's private tmp folder, reachable by nobody."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    root = Path(tempfile.mkdtemp(prefix="cosmic-owners-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def chown_tree(path: Path, uid: int) -> None:
    os.chown(path, uid, uid, follow_symlinks=False)
    for entry in path.rglob("*"):
        os.chown(entry, uid, uid, follow_symlinks=False)


def one_sentence_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr and "bug" not in stderr and "unexpected" not in stderr
    return errors[0]


# -- item 8: owners -------------------------------------------------------------------------
@needs_root
def test_root_restores_owners_by_default_and_can_opt_out(project: Project) -> None:
    project.env.update({"BACKUP_KEY": PASSPHRASE, "BACKUP_FILES_DIRS": "uploads"})
    uploads = project.root / "uploads"
    (uploads / "2026").mkdir(parents=True)
    (uploads / "2026" / "photo.jpg").write_text("a photo")
    uploads.chmod(0o750)
    chown_tree(uploads, NOBODY)
    assert project.run("backup", "files").returncode == 0
    (uploads / "2026" / "photo.jpg").write_text("damaged")
    result = project.run("restore", "files", "latest", "--yes")
    assert result.returncode == 0, result.stderr
    for path in (uploads, uploads / "2026", uploads / "2026" / "photo.jpg"):
        info = path.stat()
        assert (info.st_uid, info.st_gid) == (NOBODY, NOBODY), path
    assert uploads.stat().st_mode & 0o777 == 0o750
    assert (uploads / "2026" / "photo.jpg").read_text() == "a photo"
    opted_out = project.run("restore", "files", "latest", "--yes", "--no-restore-owner")
    assert opted_out.returncode == 0, opted_out.stderr
    assert (uploads / "2026" / "photo.jpg").stat().st_uid == 0
    by_setting = project.run(
        "restore", "files", "latest", "--yes", env={"BACKUP_FILES_RESTORE_OWNER": "false"}
    )
    assert by_setting.returncode == 0 and (uploads / "2026").stat().st_uid == 0


@needs_root
def test_the_live_folder_keeps_its_owner_and_mode_when_the_archive_has_none(
    tmp_path: Path,
) -> None:
    uploads = tmp_path / "uploads"
    uploads.mkdir(mode=0o770)
    uploads.chmod(0o770)
    os.chown(uploads, NOBODY, NOBODY)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:  # a file, but no member for uploads/
        info = tarfile.TarInfo("uploads/a.txt")
        info.size, info.uid, info.gid = 1, NOBODY, NOBODY
        tar.addfile(info, io.BytesIO(b"a"))
    settings = load_settings(tmp_path, environ={"BACKUP_FILES_DIRS": "uploads"})
    component = FilesComponent(settings, logging.getLogger("test"))
    source = {"folders": [{"path": "uploads", "name": "uploads", "files": 1}]}
    manifest = Manifest("files-20261124T030000Z", "files", "ok", "full", [], "", "", "0", source)
    plan = component.plan_restore(manifest, RestoreRequest())
    component.consume(io.BytesIO(out.getvalue()), manifest, plan)
    info = uploads.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (NOBODY, NOBODY, 0o770)
    assert (uploads / "a.txt").stat().st_uid == NOBODY


def test_a_non_root_restore_warns_when_owners_could_not_be_kept(shared_root: Path) -> None:
    uploads = shared_root / "uploads"
    uploads.mkdir()
    (uploads / "by-root.txt").write_text("root's file")
    assert run_as(0, shared_root, "backup", "files").returncode == 0
    chown_tree(shared_root, NOBODY)
    result = run_as(NOBODY, shared_root, "--json", "restore", "files", "latest", "--yes")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    [warning] = report["details"]["warnings"]
    assert "had another owner or group in the backup and now belong to nobody" in warning
    assert (uploads / "by-root.txt").stat().st_uid == NOBODY


# -- item 10: one sentence for each failure ------------------------------------------------------
@needs_root
def test_a_full_disk_across_file_systems_is_one_sentence(project: Project) -> None:
    project.env.update({"BACKUP_KEY": PASSPHRASE, "BACKUP_FILES_DIRS": "uploads,static"})
    (project.root / "uploads").mkdir()
    (project.root / "uploads" / "a.txt").write_text("a")
    static = project.root / "static"
    static.mkdir()
    (static / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    assert project.run("backup", "files").returncode == 0
    (static / "big.bin").unlink()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(static)], check=False
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (static / "live.css").write_text("live")
        result = project.run("restore", "files", "latest", "--yes")
        assert result.returncode == 1, result.stderr
        assert "free some space" in one_sentence_error(result.stderr)
        assert sorted(p.name for p in static.iterdir()) == ["live.css"]
        assert not [p for p in project.root.iterdir() if p.name.startswith(".cosmic-")]
        assert not (project.backups / ".files-restore.json").exists()
    finally:
        subprocess.run(["umount", "-l", str(static)], check=True)


def test_a_user_who_cannot_write_the_project_root_is_refused_first(shared_root: Path) -> None:
    """nobody owns uploads, the backups and the logs, but not the project root."""
    uploads = shared_root / "uploads"
    uploads.mkdir()
    (uploads / "a.txt").write_text("a")
    for folder in (shared_root / "tmp" / "backups", shared_root / "logs"):
        folder.mkdir(parents=True)
    for folder in (uploads, shared_root / "tmp" / "backups", shared_root / "logs"):
        chown_tree(folder, NOBODY)
    assert run_as(NOBODY, shared_root, "backup", "files").returncode == 0
    env = {"BACKUP_DIR": str(shared_root / "tmp" / "backups")}
    for _attempt in range(2):
        result = run_as(NOBODY, shared_root, "restore", "files", "latest", "--yes")
        assert result.returncode == 1, result.stderr
        error = one_sentence_error(result.stderr)
        assert f"cannot write in {shared_root} (permission denied)" in error
    entries = json.loads(run_as(0, shared_root, "--json", "list", env=env).stdout)
    assert len(entries) == 1  # no pre-restore copy per attempt
    assert not (shared_root / "tmp" / "backups" / ".files-restore.json").exists()


def test_a_read_only_uploads_folder_is_restored_as_its_owner(shared_root: Path) -> None:
    uploads = shared_root / "uploads"
    (uploads / "sub").mkdir(parents=True)
    (uploads / "sub" / "a.txt").write_text("original")
    (uploads / "sub").chmod(0o555)
    uploads.chmod(0o555)
    chown_tree(shared_root, NOBODY)
    assert run_as(NOBODY, shared_root, "backup", "files").returncode == 0
    (uploads / "sub" / "a.txt").write_text("damaged")  # root writes anyway
    (uploads / "added.txt").write_text("added")
    os.chown(uploads / "added.txt", NOBODY, NOBODY)
    result = run_as(NOBODY, shared_root, "restore", "files", "latest", "--yes")
    assert result.returncode == 0, result.stderr
    assert (uploads / "sub" / "a.txt").read_text() == "original"
    assert not (uploads / "added.txt").exists()
    assert uploads.stat().st_mode & 0o777 == 0o555
    assert (uploads / "sub").stat().st_mode & 0o777 == 0o555
    assert not [p for p in shared_root.iterdir() if p.name.startswith(".cosmic-")]


@needs_root
def test_a_read_only_mount_is_refused_before_the_pre_restore_backup(project: Project) -> None:
    project.env.update({"BACKUP_KEY": PASSPHRASE, "BACKUP_FILES_DIRS": "uploads"})
    uploads, volume = project.root / "uploads", project.root / "volume"
    volume.mkdir()
    (volume / "a.txt").write_text("a")
    uploads.mkdir()
    steps = (["mount", "--bind", str(volume), str(uploads)],)
    steps += (["mount", "-o", "remount,ro,bind", str(uploads)],)
    for step in steps:
        if subprocess.run(step, capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(uploads)], check=False)
            pytest.skip("cannot make a read-only bind mount here")
    try:
        assert project.run("backup", "files").returncode == 0
        result = project.run("restore", "files", "latest", "--yes")
        assert result.returncode == 1, result.stderr
        assert "(read-only file system)" in one_sentence_error(result.stderr)
        assert len(listed(project)) == 1  # no pre-restore backup was taken
        assert not (project.backups / ".files-restore.json").exists()
    finally:
        subprocess.run(["umount", "-l", str(uploads)], check=True)


# -- item 11: a source file that cannot be read (real EIO, injected by strace) -----------------
def test_a_read_error_names_the_source_file_and_the_backup_finishes(project: Project) -> None:
    if not shutil.which("strace"):
        pytest.skip("needs strace to inject EIO")
    project.env.update({"BACKUP_KEY": PASSPHRASE, "BACKUP_FILES_DIRS": "uploads"})
    uploads = project.root / "uploads"
    uploads.mkdir()
    (uploads / "fine.txt").write_text("fine")
    bad = uploads / "bad.bin"
    bad.write_bytes(os.urandom(3_000_000))  # more than one read: files are read 1 MiB at a time
    # Only reads of bad.bin fail, from the second one on: a disk failing mid-file.
    strace = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(bad)]
    strace += ["-e", "trace=read", "-e", "inject=read:error=EIO:when=2+"]
    result = subprocess.run(
        [*strace, *project.command("--json", "backup", "files")],
        env=clean_environ(project.env),
        capture_output=True,
        text=True,
        cwd=project.root,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    [component] = json.loads(result.stdout)["components"]
    assert component["status"] == "ok"
    [warning] = component["warnings"]
    assert warning.startswith("uploads/bad.bin could not be read (Input/output error)")
    assert "tmp/backups" not in warning
    [entry] = listed(project)
    assert entry["source"]["read_errors"] == ["uploads/bad.bin"]
    assert project.run("verify", "files").returncode == 0


# -- item 13: a file named as a files folder ----------------------------------------------------
def test_a_file_named_as_a_folder_is_said_to_be_a_file(project: Project) -> None:
    project.env.update({"BACKUP_KEY": PASSPHRASE, "BACKUP_FILES_DIRS": "uploads,notes.txt"})
    (project.root / "uploads").mkdir()
    (project.root / "notes.txt").write_text("not a folder")
    result = project.run("--json", "backup", "files")
    assert result.returncode == 0, result.stderr
    [component] = json.loads(result.stdout)["components"]
    assert component["warnings"] == ["notes.txt is a file, not a folder; not backed up"]
    alone = project.run("backup", "files", env={"BACKUP_FILES_DIRS": "notes.txt"})
    assert "notes.txt is a file, not a folder" in alone.stdout + alone.stderr
    assert "does not exist" not in alone.stdout + alone.stderr
