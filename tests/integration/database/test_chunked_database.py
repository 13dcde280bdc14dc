"""Database backups in the chunk store (format 2, the default) through the real CLI: round
trip, deduplication, a damaged or missing pack refused before the database changes, and a
format 1 backup restored after the switch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cosmic_backup.chunkstore.store import ChunkStore
from cosmic_backup.format.keys import Key
from tests.conftest import Project
from tests.integration.database.appdb import execute, full_state

KEY = "chunked database tests passphrase 0123"
INTEGRITY_EXIT = 6  # README "Exit codes"
SMALL_PACKS = 2 * 1024 * 1024  # so an 8 MB dump spans several packs


@pytest.fixture
def db_project(project: Project, app_db: str) -> Project:
    project.env.update({"DATABASE_URL": app_db, "BACKUP_KEY": KEY})
    return project


def listed(project: Project) -> list[dict]:
    result = project.run("--json", "list", "database")
    assert result.returncode == 0, result.stderr
    return [e for e in json.loads(result.stdout) if "pre-restore" not in e["tags"]]


def packs(project: Project) -> list[Path]:
    found = (project.backups / "store" / "packs").glob("*/*")
    return sorted(found, key=lambda path: path.stat().st_mtime_ns)


def test_database_round_trip_through_the_store(db_project: Project, app_db: str) -> None:
    original = full_state(app_db)
    backup = db_project.run("backup", "database")
    assert backup.returncode == 0, backup.stderr
    [entry] = listed(db_project)
    assert entry["format_version"] == 2 and entry["artifact"] is None
    assert entry["source"]["row_counts"]["public.users"] == 500  # the stream's counts stay
    assert entry["chunk_list"]["chunks"] >= 1 and entry["kdf"]["iterations"] == 1000
    second = db_project.run("backup", "database")
    assert second.returncode == 0, second.stderr
    again = listed(db_project)[-1]
    # pg_dump's header carries the dump's time: its first chunk and one entry part are new.
    assert again["chunk_list"]["new_chunks"] <= 2
    assert again["plaintext_size"] == entry["plaintext_size"]
    execute(app_db, "DELETE FROM billing.invoices", "UPDATE users SET email = email || '.x'")
    restore = db_project.run("restore", "database", entry["id"], "--yes")
    assert restore.returncode == 0, restore.stderr
    assert "Row counts match the backup" in restore.stdout
    assert full_state(app_db) == original
    verify = db_project.run("verify", "database")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _with_small_packs(project: Project, app_db: str) -> None:
    """A store of 2 MiB packs, made before the first backup, and 8 MB more data."""
    backups = project.backups
    backups.mkdir(parents=True)
    ChunkStore.open(backups, Key(KEY.encode()), wrap_iterations=600_000, pack_target=SMALL_PACKS)
    execute(
        app_db,
        "CREATE TABLE filler AS SELECT g AS id, "
        "(SELECT string_agg(md5(g::text || x::text), '') FROM generate_series(1, 8) x) AS pad "
        "FROM generate_series(1, 32000) g",
    )


def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_late_pack_stops_the_restore_without_a_commit(
    db_project: Project, app_db: str
) -> None:
    _with_small_packs(db_project, app_db)
    assert db_project.run("backup", "database").returncode == 0
    stored = packs(db_project)
    assert len(stored) >= 3
    _damage(stored[-2])  # reached mid-stream: pg_restore has had part of the dump already
    verify = db_project.run("verify", "database")
    assert verify.returncode == INTEGRITY_EXIT, verify.stdout + verify.stderr
    assert stored[-2].name in verify.stdout + verify.stderr
    execute(app_db, "DELETE FROM filler WHERE id > 100", "UPDATE users SET email = email || 'x'")
    live = full_state(app_db)
    restore = db_project.run("restore", "database", "latest", "--yes", "--no-safety-backup")
    assert restore.returncode == INTEGRITY_EXIT, restore.stderr
    assert stored[-2].name in restore.stderr and "Traceback" not in restore.stderr
    assert full_state(app_db) == live  # the one transaction never committed


def test_a_missing_pack_is_refused_before_the_database_is_touched(
    db_project: Project, app_db: str
) -> None:
    _with_small_packs(db_project, app_db)
    assert db_project.run("backup", "database").returncode == 0
    second = db_project.run("backup", "database")  # unchanged data: only the first chunk new
    assert second.returncode == 0, second.stderr
    first_run, newest = listed(db_project)
    assert newest["chunk_list"]["chunks"] >= 8 and newest["chunk_list"]["new_chunks"] <= 2
    assert newest["stored_size"] < first_run["stored_size"] / 4
    gone = packs(db_project)[0]
    gone.unlink()
    execute(app_db, "UPDATE users SET email = email || '.live'")
    live = full_state(app_db)
    restore = db_project.run("restore", "database", "latest", "--yes", "--no-safety-backup")
    assert restore.returncode == INTEGRITY_EXIT, restore.stderr
    assert f"{gone.name}, which is missing" in restore.stderr
    assert full_state(app_db) == live


def test_a_single_file_backup_restores_after_switching_to_chunked(
    db_project: Project, app_db: str
) -> None:
    original = full_state(app_db)
    old = db_project.run("backup", "database", env={"BACKUP_FORMAT": "single-file"})
    assert old.returncode == 0, old.stderr
    assert db_project.run("backup", "database").returncode == 0
    first, second = listed(db_project)
    assert (first["format_version"], second["format_version"]) == (1, 2)
    execute(app_db, "DELETE FROM billing.invoices")
    restore = db_project.run("restore", "database", first["id"], "--yes")
    assert restore.returncode == 0, restore.stderr
    assert full_state(app_db) == original
    artifact = db_project.backups / "database" / first["artifact"]
    assert artifact.stat().st_size == first["stored_size"]
