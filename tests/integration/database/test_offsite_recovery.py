"""Disaster recovery from the bucket alone: back up all three components with a remote,
lose the whole project root but the key, and restore everything into a fresh root with
the seed's own command, `./scripts/restore.sh database latest`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Project, ProjectFactory, clean_environ
from tests.integration.database.appdb import DESTRUCTIVE_CHANGES, execute, full_state
from tests.s3server import S3Server

SCRIPTS = Path(__file__).resolve().parents[3] / "scripts"


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _make_app(project: Project) -> None:
    (project.root / ".env").write_text("SECRET_TOKEN=abc\nPORT=8000\n")
    (project.root / "config").mkdir()
    (project.root / "config" / "app.toml").write_text("[app]\nname = 'cosmic'\n")
    (project.root / "uploads" / "avatars").mkdir(parents=True)
    (project.root / "uploads" / "avatars" / "1.png").write_bytes(bytes(range(256)) * 64)
    (project.root / "static").mkdir()
    (project.root / "static" / "site.css").write_text("body { color: red }\n")


@pytest.mark.parametrize("backup_format", ["single-file", "chunked"])
def test_disaster_recovery_from_the_bucket_with_only_the_key(
    make_project: ProjectFactory,
    s3_server: S3Server,
    remote_url: str,
    app_db: str,
    backup_format: str,
) -> None:
    first = make_project()
    remote_env = {
        **s3_server.env(),
        "BACKUP_REMOTE": remote_url,
        "BACKUP_REMOTE_HOST": "app-server",
        "DATABASE_URL": app_db,
        "BACKUP_FORMAT": backup_format,  # an artifact each, or packs in the bucket's store
    }
    first.env.update(remote_env)
    _make_app(first)
    backup = first.run("--json", "backup", "all")
    assert backup.returncode == 0, backup.stderr
    outcomes = json.loads(backup.stdout)["components"]
    assert {o["component"]: o["offsite"] for o in outcomes} == {
        "database": "ok",
        "files": "ok",
        "config": "ok",
    }
    original_db = full_state(app_db)
    original_uploads = _tree(first.root / "uploads")
    original_static = _tree(first.root / "static")
    key = (first.root / ".backup_key").read_bytes()

    # The disaster: the machine is gone, and the database with it.
    shutil.rmtree(first.root)
    execute(app_db, *DESTRUCTIVE_CHANGES)
    assert full_state(app_db) != original_db

    # A new machine: the app's code (its scripts), the key, and BACKUP_REMOTE. Nothing else.
    fresh = make_project()
    fresh.env.update(remote_env)
    shutil.copytree(SCRIPTS, fresh.root / "scripts")
    key_file = fresh.root / ".backup_key"
    key_file.write_bytes(key)
    key_file.chmod(0o600)
    run_env = {"COSMIC_BACKUP": f"{sys.executable} -m cosmic_backup", **fresh.env}

    def restore(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["./scripts/restore.sh", *args, "--yes"],
            cwd=fresh.root,
            env=clean_environ(run_env),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    database = restore("database", "latest")
    assert database.returncode == 0, database.stderr
    assert "off-site copy" in database.stderr
    assert full_state(app_db) == original_db

    files = restore("files", "latest", "--no-safety-backup")
    assert files.returncode == 0, files.stderr
    assert _tree(fresh.root / "uploads") == original_uploads
    assert _tree(fresh.root / "static") == original_static

    config = restore("config", "latest")
    assert config.returncode == 0, config.stderr
    (review,) = (fresh.root / "tmp" / "restores").iterdir()
    assert (review / "files" / ".env").read_text() == "SECRET_TOKEN=abc\nPORT=8000\n"
    assert (review / "files" / "config" / "app.toml").read_text() == "[app]\nname = 'cosmic'\n"
