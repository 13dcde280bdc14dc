"""The files cache through the real CLI: an unchanged second backup opens no file (seen by
strace), `--force-read` and BACKUP_FORCE_READ open them all, and a backup that fails on a
full disk keeps the old cache.

Why strace is the proof: a process reads a file's content only through a descriptor it
opened (open/openat/openat2; the tar writer opens each file relative to its folder), so a
backup whose traced process tree made no open of a file's name, except the folders it
lists (O_DIRECTORY), read no byte of it. The first backup, traced the same way, must show
every file opened, so the trace would catch them."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Project, clean_environ
from tests.integration.files.test_files_cache import settle
from tests.integration.files.test_files_chunked import chunked_project, listed
from tests.trees import tree_snapshot

STRACE = ["strace", "-f", "-qq", "-xx", "--seccomp-bpf", "-e", "trace=open,openat,openat2"]
OPEN_CALL = re.compile(r'open(?:at2?)?\((?:[^,"]+, )?"((?:\\x[0-9a-f]{2})*)", ([A-Z_|]+)')


def regular_files(project: Project) -> set[str]:
    return {
        path.name
        for folder in ("uploads", "static")
        for path in (project.root / folder).rglob("*")
        if path.is_file() and not path.is_symlink()
    }


def opened_files(project: Project, log: Path, *args: str, env: dict | None = None) -> set[str]:
    """Run the CLI under strace; the names of the files (not folders) it opened."""
    result = subprocess.run(
        [*STRACE, "-o", str(log), *project.command(*args)],
        env=clean_environ({**project.env, **(env or {})}),
        capture_output=True,
        text=True,
        cwd=project.root,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    opened = set()
    for match in OPEN_CALL.finditer(log.read_text()):
        path, flags = match.groups()
        if "O_DIRECTORY" not in flags:
            raw = bytes.fromhex(path.replace("\\x", ""))
            opened.add(os.fsdecode(raw).rsplit("/", 1)[-1])
    return opened


@pytest.mark.slow
def test_an_unchanged_second_backup_opens_no_file_and_writes_no_chunk(
    project: Project, tmp_path: Path
) -> None:
    chunked_project(project)
    names = regular_files(project)
    assert len(names) >= 6 and "déjà vu — résumé.pdf" in names
    settle()
    first = opened_files(project, tmp_path / "first.trace", "backup", "files")
    assert names <= first  # the trace sees every file a backup reads
    cache = project.backups / "store" / "cache" / "files-files.sqlite"
    assert cache.is_file() and (cache.stat().st_mode & 0o777) == 0o600

    second = opened_files(project, tmp_path / "second.trace", "backup", "files")
    assert not names & second, names & second
    newest = listed(project)[-1]
    assert newest["chunk_list"]["new_chunks"] == 0 and newest["chunk_list"]["new_packs"] == 0
    assert newest["plaintext_size"] == listed(project)[0]["plaintext_size"]

    # --force-read and BACKUP_FORCE_READ read every file again, and store nothing new.
    forced = opened_files(project, tmp_path / "forced.trace", "backup", "files", "--force-read")
    by_setting = opened_files(
        project, tmp_path / "setting.trace", "backup", "files", env={"BACKUP_FORCE_READ": "1"}
    )
    assert names <= forced and names <= by_setting
    for entry in listed(project)[2:]:
        assert entry["chunk_list"]["new_chunks"] == 0

    live = tree_snapshot(project.root / "uploads")
    out = project.root / "restored"
    second_id = listed(project)[1]["id"]
    restore = project.run("restore", "files", second_id, "--target-dir", str(out))
    assert restore.returncode == 0, restore.stderr
    assert tree_snapshot(out / "uploads") == live


def test_backup_help_names_force_read(project: Project) -> None:
    result = project.run("backup", "--help")
    assert result.returncode == 0 and "--force-read" in result.stdout


@pytest.fixture
def small_disk(project: Project) -> Iterator[Path]:
    folder = project.root / "small-disk"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)]
    if os.geteuid() != 0 or subprocess.run(mount, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_backup_that_fails_on_a_full_disk_keeps_the_old_cache(
    project: Project, small_disk: Path, tmp_path: Path
) -> None:
    chunked_project(project)
    (project.root / "uploads" / "random.bin").unlink()  # small enough for the disk
    project.env["BACKUP_DIR"] = str(small_disk)
    settle()
    assert project.run("backup", "files").returncode == 0
    cache = small_disk / "store" / "cache" / "files-files.sqlite"
    kept = cache.read_bytes()
    (project.root / "uploads" / "too-big.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    failed = project.run("backup", "files")
    assert failed.returncode == 1 and "is full" in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr
    assert cache.read_bytes() == kept
    assert not list(cache.parent.glob("*.new"))
    (project.root / "uploads" / "too-big.bin").unlink()
    again = opened_files(project, tmp_path / "again.trace", "backup", "files")
    assert not regular_files(project) & again  # the kept cache served every file
    assert listed(project)[-1]["status"] == "ok"
