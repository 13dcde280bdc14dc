"""Progress on a terminal, and none of it under cron (stdout and stderr to a pipe).

The CLI runs under a real pseudo-terminal (tests/terminal.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import Project
from tests.s3server import S3Server
from tests.terminal import ANSI_ESCAPE, RATE, Frame, frames, run_on_terminal

KEY = "progress-test-passphrase-0123456789"


@pytest.fixture
def files_project(project: Project) -> Project:
    """A files tree of a few MB of incompressible data, so the bars have bytes to count."""
    uploads = project.root / "uploads"
    uploads.mkdir()
    for n in range(6):
        (uploads / f"photo-{n}.bin").write_bytes(os.urandom(1024 * 1024))
    project.env["BACKUP_KEY"] = KEY
    return project


COMMANDS = [
    (("verify", "files"), "verifying files-"),
    (("restore", "files", "latest", "--yes"), "restoring files-"),
]


@pytest.mark.parametrize(("args", "label"), COMMANDS)
def test_a_terminal_shows_the_label_and_a_rate(
    files_project: Project, args: tuple[str, ...], label: str
) -> None:
    code, drawn = run_on_terminal(files_project, "backup", "files")
    assert code == 0, drawn
    assert "files backup" in drawn and RATE.search(drawn), drawn

    code, drawn = run_on_terminal(files_project, *args)
    assert code == 0, drawn
    assert label in drawn, drawn
    assert RATE.search(drawn), drawn


def test_cron_output_has_no_progress_and_no_escape(files_project: Project) -> None:
    runs = [("backup", "files"), *(args for args, _ in COMMANDS), ("verify", "--restore-test")]
    for args in [*runs, ("prune",)]:
        result = files_project.run(*args)  # stdout and stderr to pipes, as cron runs it
        assert result.returncode == 0, result.stderr
        output = result.stdout + result.stderr
        assert not ANSI_ESCAPE.search(output), output
        assert not RATE.search(output), output
        for label in ("verifying files-", "restoring files-", "restore test of", "checking"):
            assert label not in output, output


def _artifact(project: Project, component: str) -> Path:
    (artifact,) = (project.backups / component).glob("*.enc")
    return artifact


def _completed(drawn: str, label: str, size: int) -> Frame:
    """The last drawing of the bar `label`, checked to have counted all `size` bytes."""
    shown = frames(drawn, label)
    assert shown, drawn
    last = shown[-1]
    assert last.done == last.total and last.shows(size), (last, size)
    assert shown[0].done < last.done  # it moved: not a bar stuck at 0 that vanished
    return last


def test_the_checking_bar_counts_every_byte_of_the_artifact(files_project: Project) -> None:
    files_project.env["BACKUP_FORMAT"] = "single-file"  # one artifact, one MAC pass over it
    assert files_project.run("backup", "files").returncode == 0
    size = _artifact(files_project, "files").stat().st_size

    code, drawn = run_on_terminal(files_project, "verify", "files")
    assert code == 0, drawn
    last = _completed(drawn, "checking files-", size)
    assert RATE.search(last.line), last.line


@pytest.fixture
def offsite_files_project(files_project: Project, s3_server: S3Server, remote_url: str) -> Project:
    """Single-file backups (chunked ones cannot go off-site yet), the bucket reachable, and
    a local backup not yet there (taken before BACKUP_REMOTE is set), so `sync` has work."""
    files_project.env.update({"BACKUP_FORMAT": "single-file", **s3_server.env()})
    assert files_project.run("backup", "files").returncode == 0
    files_project.env["BACKUP_REMOTE"] = remote_url
    return files_project


def test_sync_shows_each_upload_and_download(offsite_files_project: Project) -> None:
    project = offsite_files_project
    artifact = _artifact(project, "files")
    size = artifact.stat().st_size
    code, drawn = run_on_terminal(project, "sync")
    assert code == 0 and "1 backup(s) copied to" in drawn, drawn
    last = _completed(drawn, "uploading files-", size)
    assert RATE.search(last.line), last.line

    shutil.rmtree(project.backups / "files")
    code, drawn = run_on_terminal(project, "restore", "files", "latest", "--yes")
    assert code == 0 and "Using the off-site copy" in drawn, drawn
    _completed(drawn, "downloading files-", size)  # a restore from the bucket shows it too

    code, drawn = run_on_terminal(project, "sync", "--pull")
    assert code == 0 and "1 backup(s) copied from" in drawn, drawn
    last = _completed(drawn, "downloading files-", size)
    assert RATE.search(last.line), last.line
    _completed(drawn, "checking files-", size)  # the MAC pass before it counts as a backup
    assert artifact.stat().st_size == size  # the one sync --pull brought back


def test_a_backup_shows_its_upload_off_site(offsite_files_project: Project) -> None:
    project = offsite_files_project
    before = set((project.backups / "files").glob("*.enc"))
    code, drawn = run_on_terminal(project, "backup", "files")
    assert code == 0, drawn
    (new,) = set((project.backups / "files").glob("*.enc")) - before
    last = _completed(drawn, "uploading files-", new.stat().st_size)
    assert RATE.search(last.line), last.line


def test_cron_output_of_sync_has_no_progress(offsite_files_project: Project) -> None:
    project = offsite_files_project
    runs = [("sync",), ("sync", "--pull")]
    for args in runs:
        if args == ("sync", "--pull"):
            shutil.rmtree(project.backups / "files")
        result = project.run(*args)  # stdout and stderr to pipes, as cron runs it
        assert result.returncode == 0, result.stderr
        assert "1 backup(s) copied" in result.stdout, result.stdout
        output = result.stdout + result.stderr
        assert not ANSI_ESCAPE.search(output), output
        assert not RATE.search(output), output
        for label in ("uploading files-", "downloading files-", "checking files-"):
            assert label not in output, output
