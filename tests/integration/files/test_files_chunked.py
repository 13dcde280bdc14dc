"""Files and config backups in the chunk store (format 2, the default) through the real CLI:
round trips, deduplication, damaged and missing packs, and format 1 backups after the switch."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.conftest import Project
from tests.integration.files.test_files_cli import PASSPHRASE, build_uploads
from tests.trees import tree_snapshot

INTEGRITY_EXIT = 6  # README "Exit codes"


def listed(project: Project, component: str = "files") -> list[dict]:
    result = project.run("--json", "list", component)
    assert result.returncode == 0, result.stderr
    return [e for e in json.loads(result.stdout) if "pre-restore" not in e["tags"]]


def packs(project: Project) -> list[Path]:
    return sorted((project.backups / "store" / "packs").glob("*/*"))


def snapshot(project: Project) -> dict[str, dict[str, tuple]]:
    return {name: tree_snapshot(project.root / name) for name in ("uploads", "static")}


def chunked_project(project: Project, big_mib: int = 0) -> Project:
    project.env["BACKUP_KEY"] = PASSPHRASE
    build_uploads(project.root, big_mib=big_mib)
    (project.root / "uploads" / "random.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    return project


def test_files_round_trip_through_the_store_and_a_second_backup_adds_almost_nothing(
    project: Project,
) -> None:
    chunked_project(project, big_mib=16)
    before = snapshot(project)
    assert project.run("backup", "files").returncode == 0
    [first] = listed(project)
    assert first["format_version"] == 2
    assert first["artifact"] is None and first["artifact_mac"] is None
    assert first["chunk_list"]["name"] == f"{first['id']}.chunks"
    assert first["chunk_list"]["new_chunks"] >= 1 and first["chunk_list"]["new_packs"] >= 1
    assert first["data_key"] and first["plaintext_size"] > 19 * 1024 * 1024
    assert first["stored_size"] > 3 * 1024 * 1024  # the random file does not compress
    table = project.run("list", "files").stdout
    assert "19." in table and "MiB" in table  # the payload's size, beside what it added

    second = project.run("backup", "files")
    assert second.returncode == 0, second.stderr
    newest = listed(project)[-1]
    assert newest["chunk_list"]["new_chunks"] == 0 and newest["chunk_list"]["new_packs"] == 0
    assert newest["stored_size"] < 4096  # its chunk list only
    assert newest["plaintext_size"] == first["plaintext_size"]

    verify = project.run("verify", "files")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    (project.root / "uploads" / "with space.txt").write_text("changed")
    (project.root / "uploads" / "random.bin").unlink()
    restore = project.run("restore", "files", "latest", "--yes")
    assert restore.returncode == 0, restore.stderr
    assert snapshot(project) == before


def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_pack_is_named_by_verify_and_refused_before_the_files_change(
    project: Project,
) -> None:
    chunked_project(project)
    assert project.run("backup", "files").returncode == 0
    [pack] = packs(project)
    _damage(pack)
    verify = project.run("verify", "files")
    assert verify.returncode == INTEGRITY_EXIT, verify.stdout + verify.stderr
    assert pack.name in verify.stdout + verify.stderr
    (project.root / "uploads" / "with space.txt").write_text("changed since the backup")
    live = snapshot(project)
    restore = project.run("restore", "files", "latest", "--yes", "--no-safety-backup")
    assert restore.returncode == INTEGRITY_EXIT, restore.stderr
    assert pack.name in restore.stderr and "Traceback" not in restore.stderr
    assert snapshot(project) == live
    assert not [p for p in project.root.iterdir() if p.name.startswith(".cosmic-")]


def test_a_missing_pack_is_refused_before_anything_is_restored(project: Project) -> None:
    chunked_project(project)
    assert project.run("backup", "files").returncode == 0
    [pack] = packs(project)
    pack.unlink()
    (project.root / "uploads" / "intruder.txt").write_text("new since the backup")
    live = snapshot(project)
    restore = project.run("restore", "files", "latest", "--yes", "--no-safety-backup")
    assert restore.returncode == INTEGRITY_EXIT, restore.stderr
    assert f"{pack.name}, which is missing" in restore.stderr
    assert snapshot(project) == live
    verify = project.run("verify", "files")
    assert verify.returncode == INTEGRITY_EXIT and pack.name in verify.stdout + verify.stderr


def test_a_single_file_backup_still_restores_after_switching_to_chunked(
    project: Project,
) -> None:
    chunked_project(project)
    before = snapshot(project)
    made = project.run("backup", "files", env={"BACKUP_FORMAT": "single-file"})
    assert made.returncode == 0, made.stderr
    [old] = listed(project)
    assert old["format_version"] == 1 and old["artifact"].endswith(".tar.gz.enc")
    assert "chunk_list" not in old  # format 1 manifests keep exactly their fields
    assert not (project.backups / "store").exists()
    assert project.run("backup", "files").returncode == 0  # now chunked, the default
    assert [e["format_version"] for e in listed(project)] == [1, 2]
    (project.root / "uploads" / "with space.txt").write_text("changed")
    restore = project.run("restore", "files", old["id"], "--yes")
    assert restore.returncode == 0, restore.stderr
    assert snapshot(project) == before
    assert project.run("verify", "files").returncode == 0


def test_config_round_trip_through_the_store(project: Project) -> None:
    project.env["BACKUP_KEY"] = PASSPHRASE
    (project.root / ".env").write_text("SECRET_TOKEN=s3cr3t-value\n")
    (project.root / "config").mkdir()
    (project.root / "config" / "app.yaml").write_text("name: zq-marker\n")
    assert project.run("backup", "config").returncode == 0
    [entry] = listed(project, "config")
    assert entry["format_version"] == 2 and entry["chunk_list"]["chunks"] >= 1
    assert project.run("verify", "config").returncode == 0
    stored = [p for p in (project.backups / "store").rglob("*") if p.is_file()]
    stored += list((project.backups / "config").glob("*.chunks"))
    for path in stored:  # private, and encrypted: no plaintext of the config in any object
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert b"zq-marker" not in path.read_bytes() and b"s3cr3t" not in path.read_bytes()
    assert project.run("backup", "config").returncode == 0
    # The environment snapshot is taken anew (its tar header's time), so a chunk or two.
    assert listed(project, "config")[-1]["stored_size"] < 64 * 1024
    (project.root / "config" / "app.yaml").write_text("name: broken\n")
    restore = project.run("restore", "config", entry["id"])
    assert restore.returncode == 0, restore.stderr
    review = project.root / "tmp" / "restores" / entry["id"] / "files"
    assert (review / "config" / "app.yaml").read_text() == "name: zq-marker\n"
    assert (review / ".env").read_text() == "SECRET_TOKEN=s3cr3t-value\n"


def test_a_bad_backup_format_setting_is_one_sentence(project: Project) -> None:
    chunked_project(project)
    result = project.run("backup", "files", env={"BACKUP_FORMAT": "zip"})
    assert result.returncode == 2, result.stderr
    assert "BACKUP_FORMAT" in result.stderr and "Traceback" not in result.stderr


def _redate(project: Project, backup_id: str, days: float) -> None:
    """Date a backup `days` back in its manifest, re-signed with the project's key; its id
    and list stay."""
    from cosmic_backup.catalog import Catalog
    from cosmic_backup.clock import iso
    from cosmic_backup.format.keys import Key

    key = Key(project.env["BACKUP_KEY"].encode())
    catalog = Catalog(project.backups, lambda fp: key)
    [entry] = [e for e in catalog.entries("files") if e.id == backup_id]
    started = iso(datetime.now(UTC) - timedelta(days=days))
    manifest = dataclasses.replace(entry.manifest, started_at=started, finished_at=started)
    catalog.write_manifest(manifest, key)


def test_retention_deletes_a_chunked_backups_manifest_then_its_list(project: Project) -> None:
    chunked_project(project)
    assert project.run("backup", "files").returncode == 0
    assert project.run("backup", "files").returncode == 0
    old, kept = listed(project)
    _redate(project, old["id"], 40)
    stored_packs = packs(project)
    prune = project.run("prune", env={"RETENTION_DAYS": "30"})
    assert prune.returncode == 0, prune.stdout + prune.stderr
    assert [e["id"] for e in listed(project)] == [kept["id"]]
    names = {p.name for p in (project.backups / "files").iterdir()}
    assert f"{old['id']}.chunks" not in names and f"{kept['id']}.chunks" in names
    assert packs(project) == stored_packs  # chunks wait for prune's sweep
    restore = project.run("restore", "files", "latest", "--yes")
    assert restore.returncode == 0, restore.stderr
