"""Bad settings, keys and disks end in one sentence and a documented exit code, never an
"unexpected ... this is a bug"."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Project

KEY = "bad-input-tests-passphrase-0123456789"


def one_sentence(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    assert "unexpected" not in stderr and "Traceback" not in stderr, stderr
    return lines[0]


def test_a_retention_too_large_for_a_date_is_a_usage_error(project: Project) -> None:
    result = project.run("backup", "config", env={"BACKUP_KEY": KEY, "RETENTION_DAYS": "9" * 20})
    assert result.returncode == 2
    assert "retention_days" in one_sentence(result.stderr)


def test_a_key_file_that_is_a_folder_is_named(project: Project) -> None:
    folder = project.root / "keys"
    folder.mkdir()
    result = project.run("backup", "config", env={"BACKUP_KEY_FILE": str(folder)})
    assert result.returncode == 5
    assert "is a folder" in one_sentence(result.stderr)


@pytest.mark.parametrize("where", ["BACKUP_KEY", "BACKUP_KEY_COMMAND", "key file"])
def test_a_short_passphrase_is_refused_for_new_backups(project: Project, where: str) -> None:
    env = {"BACKUP_KEY": "ab"}
    if where == "BACKUP_KEY_COMMAND":
        env = {"BACKUP_KEY_COMMAND": "echo ab"}
    elif where == "key file":
        env = {}
        key_file = project.root / ".backup_key"
        key_file.write_text("ab\n")
        key_file.chmod(0o600)
    result = project.run("backup", "config", env=env)
    assert result.returncode == 5
    assert "only 2 character(s) long" in one_sentence(result.stderr)
    [record] = json.loads(project.run("list", "--json", env=env).stdout)
    assert record["status"] == "failed"


def test_the_insecure_key_message_names_a_flag_that_exists(project: Project) -> None:
    assert project.run("key", "init").returncode == 0
    (project.root / ".backup_key").chmod(0o644)
    refused = project.run("backup", "config")
    assert refused.returncode == 5
    assert "--allow-insecure-key" in one_sentence(refused.stderr)
    for args in (("backup", "config", "--allow-insecure-key"), ("--allow-insecure-key", "list")):
        allowed = project.run(*args)
        assert allowed.returncode == 0, allowed.stderr
        assert "warning:" in allowed.stderr and "chmod 600" in allowed.stderr


def test_an_environment_value_that_is_not_utf8_is_kept_exactly(project: Project) -> None:
    env = {"BACKUP_KEY": KEY, "APP_LATIN1": "caf\udce9", "caf\udce9_NAME": "x"}
    backup = project.run("backup", "config", env=env)
    assert backup.returncode == 0, backup.stderr
    restore = project.run("--json", "restore", "config", "latest", env=env)
    assert restore.returncode == 0, restore.stderr
    details = json.loads(restore.stdout)["details"]
    assert not any(details["environment"].values())  # the same as now, byte for byte
    folder = Path(details["review_folder"])
    saved = (folder / "environment.env").read_bytes()
    assert b"APP_LATIN1='caf\xe9'\n" in saved and b"\n'caf\xe9_NAME=x'\n" in saved


def test_the_list_table_shows_a_backup_whose_key_is_not_at_hand(project: Project) -> None:
    assert project.run("backup", "config", env={"BACKUP_KEY": KEY}).returncode == 0
    table = project.run("list", env={"BACKUP_KEY": "another-key-not-the-one-used-0123"})
    assert table.returncode == 0, table.stderr
    assert "unverified" in table.stdout


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, filled to the last byte."""
    mount = tmp_path / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_when_taking_the_lock_is_one_sentence(
    project: Project, full_disk: Path
) -> None:
    env = {"BACKUP_KEY": KEY, "BACKUP_DIR": str(full_disk)}
    result = project.run("backup", "config", "--json", env=env)
    assert result.returncode == 1
    assert "is full" in one_sentence(result.stderr)
    [outcome] = json.loads(result.stdout)["components"]
    assert outcome["status"] == "failed" and "is full" in outcome["message"]
    log = "".join(path.read_text() for path in (project.root / "logs").iterdir())
    assert "is full" in log
    for command in (("prune",), ("restore", "config", "latest", "--yes")):
        other = project.run(*command, env=env)
        assert other.returncode in (1, 4), other.stderr
        one_sentence(other.stderr)


@pytest.mark.parametrize(
    ("setting", "value", "args", "code", "words"),
    [
        ("BACKUP_LOG_DIR", "a-file", ("backup", "config"), 1, "BACKUP_LOG_DIR"),
        ("BACKUP_DIR", "a-file", ("backup", "config"), 1, "not a folder"),
        ("BACKUP_KEY_FILE", "a-file/key", ("backup", "config"), 5, "not a folder"),
        ("BACKUP_KEYRING_DIR", "a-file", ("key", "rotate"), 5, "Nothing was rotated"),
    ],
)
def test_a_path_setting_naming_a_file_instead_of_a_folder_is_named(
    project: Project, setting: str, value: str, args: tuple[str, ...], code: int, words: str
) -> None:
    (project.root / "a-file").write_text("not a folder\n")
    if args[0] == "key":
        assert project.run("key", "init").returncode == 0
    result = project.run(*args, env={setting: value})
    assert result.returncode == code, result.stderr
    assert words in one_sentence(result.stderr)
