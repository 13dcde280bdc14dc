"""`key rotate` takes the backup root's lock: concurrent rotations lose no key, and a
rotation never runs during a backup."""

from __future__ import annotations

import fcntl
import json
import os

from tests.conftest import Project


def _backup(project: Project) -> str:
    result = project.run("backup", "config", "--json")
    assert result.returncode == 0, result.stderr
    [outcome] = json.loads(result.stdout)["components"]
    return outcome["id"]


def test_concurrent_rotations_lose_no_key(project: Project) -> None:
    (project.root / ".env").write_text("SECRET=1\n")
    before = _backup(project)
    rotations = [project.popen("key", "rotate", "--json", "--wait") for _ in range(4)]
    announced = []
    for process in rotations:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        announced.append(json.loads(stdout))
    after = _backup(project)

    fingerprint = project.run("key", "fingerprint", "--json")
    keys = json.loads(fingerprint.stdout)
    known = {keys["fingerprint"], *keys["keyring"]}
    for rotation in announced:
        assert rotation["new"] in known and rotation["old"] in known
    news = [rotation["new"] for rotation in announced]
    assert len(set(news)) == 4  # each rotation made its own key from the one before
    olds = {rotation["old"] for rotation in announced}
    assert len(olds) == 4
    verify = project.run("verify", "--json")
    assert verify.returncode == 0, verify.stderr
    verified = {result["id"] for result in json.loads(verify.stdout) if result["ok"]}
    assert {before, after} <= verified


def test_a_rotation_waits_for_or_refuses_a_running_backup(project: Project) -> None:
    assert project.run("key", "init").returncode == 0
    key_before = (project.root / ".backup_key").read_bytes()
    project.backups.mkdir(parents=True)
    lock = os.open(project.backups / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a backup in progress holds it
        refused = project.run("key", "rotate")
    finally:
        os.close(lock)
    assert refused.returncode == 7, refused.stderr
    assert "is locked by" in refused.stderr
    assert (project.root / ".backup_key").read_bytes() == key_before
    assert project.run("key", "rotate").returncode == 0
    assert (project.root / ".backup_key").read_bytes() != key_before
