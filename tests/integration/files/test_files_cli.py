"""Files backup and restore through the real CLI: fidelity, safety, crashes."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Project
from tests.trees import tree_snapshot

PASSPHRASE = "files test passphrase 0123456789abcdef"


def build_uploads(root: Path, big_mib: int = 0) -> None:
    uploads = root / "uploads"
    (uploads / "avatars" / "2026").mkdir(parents=True)
    (uploads / "empty").mkdir()
    (uploads / "avatars" / "2026" / "me.png").write_bytes(os.urandom(50_000))
    (uploads / "déjà vu — résumé.pdf").write_bytes(os.urandom(3000))
    (uploads / "with space.txt").write_text("spaces")
    private = uploads / "private.key"
    private.write_text("restricted")
    private.chmod(0o600)
    os.utime(private, (946_684_800, 946_684_800))  # 2000-01-01
    (uploads / "latest.png").symlink_to("avatars/2026/me.png")
    if big_mib:
        with (uploads / "big.bin").open("wb") as handle:  # sparse: fast to make and to read
            handle.truncate(big_mib * 1024 * 1024)
            handle.seek(big_mib * 512 * 1024)
            handle.write(b"middle")
    static = root / "static"
    static.mkdir()
    (static / "app.css").write_text("body { color: black }")
    os.utime(uploads / "avatars", (978_307_200, 978_307_200))


@pytest.fixture
def files_project(project: Project) -> Project:
    project.env["BACKUP_KEY"] = PASSPHRASE
    build_uploads(project.root)
    return project


def listed(project: Project) -> list[dict]:
    return json.loads(project.run("--json", "list").stdout)


def test_round_trip_is_identical(project: Project) -> None:
    project.env["BACKUP_KEY"] = PASSPHRASE
    build_uploads(project.root, big_mib=128)
    before = {name: tree_snapshot(project.root / name) for name in ("uploads", "static")}
    backup = project.run("backup", "files")
    assert backup.returncode == 0, backup.stderr
    [entry] = listed(project)
    assert entry["source"]["files"] == 6
    assert [f["name"] for f in entry["source"]["folders"]] == ["static", "uploads"] or [
        f["name"] for f in entry["source"]["folders"]
    ] == ["uploads", "static"]
    assert entry["stored_size"] < 2 * 1024 * 1024  # the sparse 128 MiB compressed away
    # Damage the live folders, then restore.
    (project.root / "uploads" / "with space.txt").write_text("changed")
    (project.root / "uploads" / "avatars" / "2026" / "me.png").unlink()
    (project.root / "uploads" / "intruder.txt").write_text("new since the backup")
    restore = project.run("restore", "files", "latest", "--yes")
    assert restore.returncode == 0, restore.stderr
    after = {name: tree_snapshot(project.root / name) for name in ("uploads", "static")}
    assert after == before
    leftovers = [p.name for p in project.root.iterdir() if p.name.startswith(".cosmic-")]
    assert leftovers == []
    # The pre-restore backup holds the damaged state.
    entries = listed(project)
    safety = [e for e in entries if "pre-restore" in e["tags"]]
    assert len(safety) == 1
    review = project.root / "review"
    again = project.run("restore", "files", safety[0]["id"], "--target-dir", str(review))
    assert again.returncode == 0, again.stderr
    assert (review / "uploads" / "intruder.txt").read_text() == "new since the backup"
    assert tree_snapshot(project.root / "uploads") == before["uploads"]  # live untouched


def test_latest_ignores_the_pre_restore_copy(files_project: Project) -> None:
    assert files_project.run("backup", "files").returncode == 0
    first = listed(files_project)[0]["id"]
    assert files_project.run("restore", "files", "latest", "--yes").returncode == 0
    result = files_project.run("restore", "files", "latest", "--yes")
    assert result.returncode == 0
    assert f"Restored {first}" in result.stdout


def test_unattended_restore_needs_yes(files_project: Project) -> None:
    assert files_project.run("backup", "files").returncode == 0
    result = files_project.run("restore", "files", "latest")
    assert result.returncode == 2
    assert "--yes" in result.stderr
    assert len(listed(files_project)) == 1  # no safety backup, nothing touched


def test_missing_folders(project: Project) -> None:
    project.env["BACKUP_KEY"] = PASSPHRASE
    result = project.run("backup", "files")
    assert result.returncode == 1
    assert "None of the file folders exist (static, uploads)" in result.stderr
    (project.root / "uploads").mkdir()
    (project.root / "uploads" / "a.txt").write_text("a")
    result = project.run("backup", "files")
    assert result.returncode == 0, result.stderr
    assert "static does not exist" in result.stdout
    [entry] = listed(project)
    assert entry["source"]["missing"] == ["static"]


def seal_malicious_backup(project: Project, members: list[tuple[tarfile.TarInfo, bytes | None]]):
    """A backup whose archive is hostile but whose MAC is valid: made with our own writer."""
    from cosmic_backup.catalog import Catalog
    from cosmic_backup.clock import SystemClock, iso
    from cosmic_backup.format.keys import Key
    from cosmic_backup.format.manifest import Manifest, kdf_description
    from cosmic_backup.format.pipeline import SealingWriter

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    key = Key(PASSPHRASE.encode())
    catalog = Catalog(project.backups, lambda fp: key)
    catalog.ensure_layout()
    now = SystemClock().now()
    backup_id = catalog.new_id("files", now)
    artifact = catalog.artifact_name("files", backup_id, "tar")
    with catalog.store.open_write(artifact) as sink:
        writer = SealingWriter(sink, key, 600_000)
        writer.write(raw.getvalue())
        writer.close()
    sealed = writer.result
    source = {"folders": [{"path": "uploads", "name": "uploads", "files": 1, "bytes": 1}]}
    manifest = Manifest(
        backup_id,
        "files",
        "ok",
        "full",
        ["manual"],
        iso(now),
        iso(now),
        "0",
        source=source,
        artifact=artifact.split("/")[1],
        plaintext_size=sealed.plaintext_size,
        stored_size=sealed.stored_size,
        plaintext_sha256=sealed.plaintext_sha256,
        artifact_mac=sealed.mac,
        kdf=kdf_description(600_000),
        key_fingerprint=key.fingerprint,
    )
    catalog.write_manifest(manifest, key)
    return backup_id


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info


HOSTILE = {
    "absolute": [(member("/tmp/cosmic-evil"), b"x")],
    "dotdot": [(member("uploads/../../cosmic-evil"), b"x")],
    "escaping symlink then write": [
        (member("uploads", tarfile.DIRTYPE), None),
        (member("uploads/out", tarfile.SYMTYPE, "../.."), None),
        (member("uploads/out/cosmic-evil"), b"x"),
    ],
    "hard link to /etc/passwd": [(member("uploads/pw", tarfile.LNKTYPE, "/etc/passwd"), None)],
    "device": [(member("uploads/null", tarfile.CHRTYPE), None)],
    # Each link stays inside on its own; through s, t reaches the project's parent, and
    # the folder member t would have carried its mode there.
    "escaping link chain": [
        (member("uploads/a/b/s", tarfile.SYMTYPE, "../.."), None),
        (member("uploads/t", tarfile.SYMTYPE, "a/b/s/../../.."), None),
        (member("uploads/t", tarfile.DIRTYPE), None),
    ],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_and_live_folders_untouched(
    files_project: Project, case: str
) -> None:
    live = ("uploads", "static")
    before = [tree_snapshot(files_project.root / name) for name in live]
    parent_mode = files_project.root.parent.stat().st_mode
    backup_id = seal_malicious_backup(files_project, HOSTILE[case])
    result = files_project.run("restore", "files", backup_id, "--yes", "--no-safety-backup")
    assert result.returncode == 6, result.stderr
    assert "was refused" in result.stderr
    assert not Path("/tmp/cosmic-evil").exists()
    assert not (files_project.root.parent / "cosmic-evil").exists()
    assert [tree_snapshot(files_project.root / name) for name in live] == before
    assert not [p for p in files_project.root.iterdir() if p.name.startswith(".cosmic-")]
    assert files_project.root.parent.stat().st_mode == parent_mode
    verify = files_project.run("verify", "files", backup_id)
    assert verify.returncode != 0 and "was refused" in verify.stdout + verify.stderr


def test_files_changing_and_vanishing_during_backup(files_project: Project) -> None:
    uploads = files_project.root / "uploads"
    churn = uploads / "churn"
    churn.mkdir()
    for index in range(300):
        (churn / f"f{index:04d}.bin").write_bytes(os.urandom(40_000))
    growing = uploads / "growing.log"
    growing.write_bytes(b"x" * 1_000_000)
    process = files_project.popen("backup", "files")
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:  # churn until it ends
        for index in range(0, 300, 7):
            (churn / f"f{index:04d}.bin").unlink(missing_ok=True)
        with growing.open("ab") as handle:
            handle.write(b"y" * 10_000)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    [entry] = listed(files_project)
    assert entry["status"] == "ok"
    assert files_project.run("verify", "files").returncode == 0
    # Whether the race was won depends on timing; what was seen is reported as a warning.
    for warning in entry["warnings"]:
        assert "vanished" in warning or "changed while it was read" in warning


def test_an_unreadable_file_is_reported_and_listed(tmp_path: Path) -> None:
    """Root reads everything, so the backup runs as the unprivileged user nobody."""
    import shutil
    import sys
    import tempfile

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the backup as another user")
    root = Path(tempfile.mkdtemp(prefix="cosmic-nobody-"))
    try:
        root.chmod(0o777)
        (root / "uploads").mkdir(mode=0o777)
        (root / "uploads" / "ok.txt").write_text("fine")
        secret = root / "uploads" / "secret.txt"
        secret.write_text("root only")
        secret.chmod(0o600)
        (root / "uploads").chmod(0o777)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUP_", "PG"))}
        env.update({"BACKUP_KEY": PASSPHRASE, "HOME": str(root)})
        command = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "cosmic_backup",
            "-C",
            str(root),
            "--json",
            "backup",
            "files",
        ]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if "Permission denied" in result.stderr and "python" in result.stderr.lower():
            pytest.skip("the interpreter is not readable by nobody here")
        assert result.returncode == 0, result.stderr
        [component] = json.loads(result.stdout)["components"]
        assert any("secret.txt could not be read" in w for w in component["warnings"])
        listed_entries = subprocess.run(
            [sys.executable, "-m", "cosmic_backup", "-C", str(root), "--json", "list"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        [entry] = json.loads(listed_entries.stdout)
        assert entry["source"]["unreadable"] == ["uploads/secret.txt"]
        assert entry["source"]["files"] == 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _kill_restore_when(project: Project, ready: Callable[[], bool]) -> None:
    process = project.popen("restore", "files", "latest", "--yes", "--no-safety-backup")
    deadline = time.monotonic() + 60
    while process.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def test_sigkill_during_restore_never_leaves_a_mixed_folder(files_project: Project) -> None:
    uploads = files_project.root / "uploads"
    for index in range(200):
        (uploads / f"old-{index:03d}.bin").write_bytes(os.urandom(100_000))
    assert files_project.run("backup", "files").returncode == 0
    old_state = tree_snapshot(uploads)
    # The live folder changes; each restore must bring back old_state or keep new_state.
    for index in range(200):
        (uploads / f"old-{index:03d}.bin").unlink()
    (uploads / "new.txt").write_text("new")
    new_state = tree_snapshot(uploads)
    root = files_project.root

    def staging_exists() -> bool:
        return any(p.name.startswith(".cosmic-restore-") for p in root.iterdir())

    def journal_swapping() -> bool:
        journal = files_project.backups / ".files-restore.json"
        return journal.exists() and "swapping" in journal.read_text()

    for ready in (staging_exists, journal_swapping, lambda: False):
        _kill_restore_when(files_project, ready)
        state = tree_snapshot(uploads) if uploads.exists() else None
        # Right after a kill the folder may be mid-swap: the next run must settle it.
        files_project.run("list")
        recovered = files_project.run("--json", "backup", "files")
        assert recovered.returncode == 0, recovered.stderr
        state = tree_snapshot(uploads)
        assert state in (old_state, new_state)
        assert not [p for p in root.iterdir() if p.name.startswith(".cosmic-")]
        if state == old_state:  # restored: reset to the new state for the next round
            for path in uploads.glob("old-*.bin"):
                path.unlink()
            (uploads / "new.txt").write_text("new")
            assert tree_snapshot(uploads) == new_state


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_owners_are_restored_unless_opted_out(files_project: Project) -> None:
    owned = files_project.root / "uploads" / "owned.txt"
    owned.write_text("nobody's")
    os.chown(owned, 65534, 65534)
    assert files_project.run("backup", "files").returncode == 0
    plain, kept = files_project.root / "plain", files_project.root / "kept"
    result = files_project.run(
        "restore",
        "files",
        "latest",
        "--target-dir",
        str(plain),
        env={"BACKUP_FILES_RESTORE_OWNER": "0"},
    )
    assert result.returncode == 0, result.stderr
    result = files_project.run("restore", "files", "latest", "--target-dir", str(kept))
    assert result.returncode == 0, result.stderr
    assert (plain / "uploads" / "owned.txt").stat().st_uid == 0
    assert (kept / "uploads" / "owned.txt").stat().st_uid == 65534


def test_folders_keep_setgid_and_files_lose_setuid_and_setgid_with_a_warning(
    files_project: Project,
) -> None:
    """A shared-group upload folder (drwxrwsr-x) comes back as it was, so new uploads
    get its group; a file's setuid or setgid bit is dropped, and the restore says so."""
    uploads = files_project.root / "uploads"
    shared = uploads / "shared"
    shared.mkdir()
    (shared / "tool").write_text("#!/bin/sh\n")
    (uploads / "other").write_text("#!/bin/sh\n")
    shared.chmod(0o2775)
    (shared / "tool").chmod(0o4755)
    (uploads / "other").chmod(0o2755)
    assert files_project.run("backup", "files").returncode == 0
    shared.chmod(0o775)  # the damage: the bit is gone
    restore = files_project.run("restore", "files", "latest", "--yes")
    assert restore.returncode == 0, restore.stderr
    assert stat.S_IMODE(shared.stat().st_mode) == 0o2775
    assert stat.S_IMODE((shared / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((uploads / "other").stat().st_mode) == 0o755
    assert "2 restored file(s) had a setuid or setgid bit" in restore.stdout
    assert "e.g. uploads/" in restore.stdout
    drill = files_project.run("verify", "--restore-test", "files")
    assert drill.returncode == 0, drill.stdout + drill.stderr  # setgid compared as kept
