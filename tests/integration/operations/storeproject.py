"""A files project whose chunk store has 1 MiB packs (made before the first backup, so the
CLI keeps its parameters), for tests that need several packs from a few MB of data."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import Project
from tests.integration.files.test_files_cli import PASSPHRASE
from tests.unit.format import FAST

MiB = 1024 * 1024
TWO_DAYS = 2 * 86400
PACKS_GLOB = "store/packs/*/*"


def store_project(
    project: Project, files: int = 4, mib_each: float = 1.5, passphrase: str = PASSPHRASE
) -> Project:
    """Random (incompressible) uploads, and a store of small packs under the root."""
    from cosmic_backup.chunkstore import ChunkStore
    from cosmic_backup.format.keys import Key

    project.env["BACKUP_KEY"] = passphrase
    ChunkStore.open(
        project.backups, Key(passphrase.encode()), wrap_iterations=FAST, pack_target=MiB
    )
    uploads = project.root / "uploads"
    uploads.mkdir()
    for number in range(files):
        rewrite(project, f"photo-{number}.bin", mib_each)
    return project


def rewrite(project: Project, name: str, mib: float) -> None:
    (project.root / "uploads" / name).write_bytes(os.urandom(int(mib * MiB)))


def ok(result):  # type: ignore[no-untyped-def]
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def listed(project: Project, component: str = "files") -> list[dict]:
    return [
        e
        for e in json.loads(ok(project.run("--json", "list", component)).stdout)
        if "pre-restore" not in e["tags"]
    ]


def pack_paths(project: Project) -> list[Path]:
    return sorted(project.backups.glob(PACKS_GLOB))


def pack_bytes(project: Project) -> int:
    return sum(path.stat().st_size for path in pack_paths(project))


def age_store(project: Project, seconds: float = TWO_DAYS) -> None:
    """Date every file of the store back, past the sweep's 24-hour grace period."""
    store = project.backups / "store"
    for path in [*store.rglob("*"), *project.backups.glob("*/*.chunks")]:
        if path.is_file():
            stamp = path.stat().st_mtime - seconds
            os.utime(path, (stamp, stamp))


def partial_files(project: Project) -> list[Path]:
    """Temporary files of killed writers: the store's and the catalog's."""
    return [p for p in project.backups.rglob("*") if ".partial-" in p.name]


def verify_all(project: Project) -> dict:
    """`verify --json` of every backup; each must pass."""
    result = ok(project.run("--json", "verify"))
    results = json.loads(result.stdout)
    assert results and all(r["ok"] for r in results), results
    return results
