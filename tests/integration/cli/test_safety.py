"""Integrity, keys, locking, crashes and secrets, through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cosmic_backup.states import Trust
from tests.conftest import Project

PASSPHRASE = "correct horse battery staple 0123456789"


SINGLE_FILE = {"BACKUP_FORMAT": "single-file"}  # tests of the artifact's bytes (format 1)


def backed_up(project: Project, payload_bytes: int = 2000) -> dict:
    """A project with one config backup; returns its listed manifest."""
    config = project.root / "config"
    config.mkdir(exist_ok=True)
    (config / "settings.ini").write_bytes(os.urandom(payload_bytes))
    result = project.run("backup", "config")
    assert result.returncode == 0, result.stderr
    entries = json.loads(project.run("--json", "list").stdout)
    return entries[-1]


def review_folders(project: Project) -> list[Path]:
    folder = project.root / "tmp" / "restores"
    return sorted(folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("position", ["header", "salt", "middle", "last"])
def test_a_changed_artifact_byte_is_refused_before_any_output(
    project: Project, position: str
) -> None:
    project.env.update(SINGLE_FILE)
    entry = backed_up(project)
    artifact = project.backups / "config" / entry["artifact"]
    data = bytearray(artifact.read_bytes())
    index = {"header": 0, "salt": 9, "middle": len(data) // 2, "last": len(data) - 1}[position]
    data[index] ^= 0x01
    artifact.write_bytes(bytes(data))
    result = project.run("restore", "config", "latest")
    assert result.returncode == 6, result.stderr
    assert "integrity" in result.stderr or "damaged" in result.stderr
    assert review_folders(project) == []  # nothing was extracted


def test_a_truncated_artifact_is_refused(project: Project) -> None:
    project.env.update(SINGLE_FILE)
    entry = backed_up(project)
    artifact = project.backups / "config" / entry["artifact"]
    artifact.write_bytes(artifact.read_bytes()[:-16])
    result = project.run("restore", "config", "latest")
    assert result.returncode == 6, result.stderr
    assert review_folders(project) == []
    verify = project.run("verify", "config")
    assert verify.returncode == 6 and "FAILED" in verify.stdout


def test_every_single_byte_change_of_the_manifest_is_detected(project: Project) -> None:
    entry = backed_up(project)
    manifest = project.backups / "config" / f"{entry['id']}.manifest.json"
    original = manifest.read_bytes()
    from cosmic_backup.catalog import Catalog
    from cosmic_backup.format.keyfile import read_key_file

    key, _ = read_key_file(project.root / ".backup_key")
    catalog = Catalog(project.backups, lambda fp: key if fp == key.fingerprint else None)
    for index in range(len(original)):
        for flip in (0x01, 0x20):
            changed = bytearray(original)
            changed[index] ^= flip
            manifest.write_bytes(bytes(changed))
            entries = catalog.entries("config")
            # Either a different manifest that fails its MAC, or one that still says the same.
            assert all(
                e.trust != Trust.VERIFIED or e.manifest.to_dict() == entry_fields(entry)
                for e in entries
            ), (index, flip)
    # And through the CLI: an edited manifest is refused before anything is restored.
    body = json.loads(original)
    body["plaintext_size"] += 1
    manifest.write_text(json.dumps(body))
    result = project.run("restore", "config", entry["id"])
    assert result.returncode == 6, result.stderr
    assert "edited or damaged" in result.stderr
    assert review_folders(project) == []


def entry_fields(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in ("trust", "problem")}


def test_verify_records_when_a_backup_was_last_proven(project: Project) -> None:
    entry = backed_up(project)
    assert entry["verified_at"] is None
    result = project.run("verify", "config", "latest")
    assert result.returncode == 0, result.stderr
    [after] = json.loads(project.run("--json", "list").stdout)
    assert after["verified_at"] and after["trust"] == "verified"


def test_a_wrong_key_is_named_with_both_fingerprints(project: Project) -> None:
    entry = backed_up(project)
    result = project.run("restore", "config", "latest", env={"BACKUP_KEY": PASSPHRASE})
    assert result.returncode == 5, result.stderr
    assert entry["key_fingerprint"] in result.stderr
    ours = project.run("key", "fingerprint", env={"BACKUP_KEY": PASSPHRASE}).stdout.split()[0]
    assert ours in result.stderr and ours != entry["key_fingerprint"]
    assert review_folders(project) == []


def test_restore_never_creates_a_key(project: Project) -> None:
    backed_up(project)
    (project.root / ".backup_key").unlink()
    result = project.run("restore", "config", "latest")
    assert result.returncode == 5, result.stderr
    assert "does not exist" in result.stderr
    assert not (project.root / ".backup_key").exists()


def test_a_group_readable_key_is_refused_with_the_fix(project: Project) -> None:
    backed_up(project)
    key_file = project.root / ".backup_key"
    key_file.chmod(0o640)
    result = project.run("backup", "config")
    assert result.returncode == 5
    assert f"chmod 600 {key_file}" in result.stderr
    result = project.run("restore", "config", "latest")
    assert result.returncode == 5
    allowed = project.run("backup", "config", env={"BACKUP_ALLOW_INSECURE_KEY": "1"})
    assert allowed.returncode == 0 and "chmod 600" in allowed.stderr


def test_rotated_keys_still_restore_older_backups(project: Project) -> None:
    old = backed_up(project)
    rotate = project.run("key", "rotate")
    assert rotate.returncode == 0, rotate.stderr
    keyring_file = project.root / ".backup_keyring" / f"{old['key_fingerprint']}.key"
    assert (keyring_file.stat().st_mode & 0o777) == 0o600
    new = backed_up(project)
    assert new["key_fingerprint"] != old["key_fingerprint"]
    for entry in (old, new):
        result = project.run("restore", "config", entry["id"])
        assert result.returncode == 0, result.stderr
    assert all(e["trust"] == "verified" for e in json.loads(project.run("--json", "list").stdout))


def test_a_key_from_the_environment_or_a_command(project: Project, tmp_path: Path) -> None:
    project.env["BACKUP_KEY"] = PASSPHRASE
    entry = backed_up(project)
    assert not (project.root / ".backup_key").exists()
    del project.env["BACKUP_KEY"]
    secret_file = tmp_path / "vault"
    secret_file.write_text(PASSPHRASE + "\n")
    project.env["BACKUP_KEY_COMMAND"] = f"cat {secret_file}"
    result = project.run("restore", "config", entry["id"])
    assert result.returncode == 0, result.stderr


def test_no_secret_appears_in_logs_manifests_or_output(project: Project) -> None:
    db_password = "pw-Zq8-never-shown"
    env_secret = "sk_live_never_shown_123"
    project.env.update(
        {
            "BACKUP_KEY": PASSPHRASE,
            "DATABASE_URL": f"postgresql://app:{db_password}@127.0.0.1:1/app",
            "STRIPE_SECRET_KEY": env_secret,
            "BACKUP_CONNECT_RETRIES": "1",
            "BACKUP_CONNECT_TIMEOUT": "1",
        }
    )
    (project.root / ".env").write_text(f"STRIPE_SECRET_KEY={env_secret}\n")
    outputs = []
    for args in (
        ("backup", "all"),
        ("--json", "list"),
        ("doctor",),
        ("--json", "doctor"),
        ("restore", "config", "latest"),
        ("--debug", "backup", "database"),
    ):
        result = project.run(*args)
        outputs += [result.stdout, result.stderr]
    logs = [p.read_text() for p in (project.root / "logs").iterdir()]
    manifests = [p.read_text() for p in project.backups.rglob("*.manifest.json")]
    assert manifests and logs
    for text in outputs + logs + manifests:
        for secret in (PASSPHRASE, db_password, env_secret):
            assert secret not in text


def test_two_concurrent_backups_one_refuses_naming_the_holder(project: Project) -> None:
    """The first backup is held inside its lock, reading its passphrase from a named pipe,
    so the second surely runs while it holds the lock, whatever the machine's load."""
    (project.root / "config").mkdir()
    (project.root / "config" / "app.toml").write_text("[app]\n")
    passphrase = "concurrent-backups-passphrase-0123"
    fifo = project.root / "passphrase.pipe"
    os.mkfifo(fifo, 0o600)
    first = project.popen("backup", "config", env={"BACKUP_KEY_COMMAND": f"cat {fifo}"})
    writer = os.open(fifo, os.O_WRONLY)  # returns once the first run reads its passphrase
    try:
        second = project.run("backup", "config", env={"BACKUP_KEY": passphrase})
    finally:
        os.write(writer, passphrase.encode() + b"\n")
        os.close(writer)
    _out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 7, second.stderr
    assert f"pid {first.pid}" in second.stderr and "'backup config'" in second.stderr
    waited = project.run("--wait", "backup", "config", env={"BACKUP_KEY": passphrase})
    assert waited.returncode == 0, waited.stderr


def _kill_when(project: Project, ready: Callable[[], bool]) -> None:
    process = project.popen("backup", "config")
    deadline = time.monotonic() + 60
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def test_sigkill_during_backup_leaves_nothing_listed_as_good(project: Project) -> None:
    project.env.update(SINGLE_FILE)  # it watches the artifact's temporary file
    config = project.root / "config"
    config.mkdir()
    (config / "big.bin").write_bytes(os.urandom(48 * 1024 * 1024))
    folder = project.backups / "config"
    lock = project.backups / ".lock"

    def partial_exists(min_size: int = 0) -> bool:
        return folder.exists() and any(
            ".partial-" in p.name and p.stat().st_size > min_size for p in folder.iterdir()
        )

    points = [
        lambda: lock.exists() and bool(lock.read_text()),  # just locked
        partial_exists,  # the temporary artifact was just created
        lambda: partial_exists(8 * 1024 * 1024),  # half-way through
    ]
    for ready in points:
        _kill_when(project, ready)
        listed = json.loads(project.run("--json", "list").stdout)
        assert not [e for e in listed if e["status"] == "ok"], listed
    for delay in (0.3, 0.8, 1.5):  # and at moments not tied to a visible state
        process = project.popen("backup", "config")
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    result = project.run("backup", "config")
    assert result.returncode == 0, result.stderr
    remaining = sorted(p.name for p in folder.iterdir())
    assert not [name for name in remaining if ".partial-" in name]
    good = [e for e in json.loads(project.run("--json", "list").stdout) if e["status"] == "ok"]
    # Only whole backups: each listed good one has its artifact, and it verifies.
    assert good and all((folder / e["artifact"]).exists() for e in good)
    assert project.run("verify", "config").returncode == 0


def test_sigterm_interrupts_cleanly_with_exit_130(project: Project) -> None:
    config = project.root / "config"
    config.mkdir()
    (config / "big.bin").write_bytes(os.urandom(64 * 1024 * 1024))
    process = project.popen("backup", "config")
    folder = project.backups / "config"
    # Mid-write: a partial artifact (single-file) or a partial pack (the chunk store).
    writing = (folder, project.backups / "store" / "tmp")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
        where.exists() and any(".partial-" in p.name for p in where.iterdir()) for where in writing
    ):
        time.sleep(0.01)
    assert process.poll() is None, "the backup ended before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    names = [p.name for p in folder.iterdir()]
    assert not [n for n in names if ".partial-" in n or n.endswith(".gz.enc")]
    [record] = json.loads(project.run("--json", "list").stdout)
    assert record["status"] == "failed" and "SIGTERM" in record["error"]


def test_a_full_disk_leaves_a_clear_sentence_and_no_half_written_backup(
    project: Project, tmp_path: Path
) -> None:
    import subprocess

    small = tmp_path / "small-disk"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        project.env.update({"BACKUP_DIR": str(small), "BACKUP_KEY": PASSPHRASE})
        (project.root / "config").mkdir()
        (project.root / "config" / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
        result = project.run("backup", "config")
        assert result.returncode == 1, result.stderr
        assert "No space left on device" in result.stderr or "space" in result.stderr
        assert "Traceback" not in result.stderr
        names = [p.name for p in (small / "config").iterdir()]
        assert not [n for n in names if n.endswith(".gz.enc") or ".partial-" in n]
        listed = json.loads(project.run("--json", "list").stdout)
        assert [e["status"] for e in listed] == ["failed"]
        (project.root / "config" / "big.bin").write_bytes(b"small now")
        assert project.run("backup", "config").returncode == 0  # space came back
    finally:
        subprocess.run(["umount", str(small)], check=False)
