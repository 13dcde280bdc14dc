"""`backup database --jobs N`: a parallel directory-format dump through a private
temporary folder, sealed as one tar, against a real PostgreSQL server and the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from tests.conftest import Project
from tests.integration.database.appdb import execute, full_state, table_contents
from tests.integration.database.conftest import PostgresServer

KEY = "jobs dump tests passphrase 0123456789"
DUMP_FOLDERS = ".dump-*"


@pytest.fixture
def jobs_db(app_db: str) -> str:
    """The app database, plus an empty table and a second large object."""
    execute(
        app_db,
        "CREATE TABLE public.nothing_here (id int PRIMARY KEY, note text)",
        "CREATE TABLE billing.notes AS SELECT g AS id, "
        "E'line one\\nline two\\twith tab \\\\ and backslash ' || g AS body "
        "FROM generate_series(1, 300) g",
        "SELECT lo_from_bytea(777, decode(repeat('ab', 5000), 'hex'))",
    )
    return app_db


@pytest.fixture
def jobs_project(project: Project, jobs_db: str) -> Project:
    project.env.update({"DATABASE_URL": jobs_db, "BACKUP_KEY": KEY})
    return project


def dump_folders(project: Project) -> list[Path]:
    return sorted((project.backups / "database").glob(DUMP_FOLDERS))


def only_entry(project: Project) -> dict:
    result = project.run("--json", "list", "database")
    assert result.returncode == 0, result.stderr
    [entry] = [e for e in json.loads(result.stdout) if "pre-restore" not in e["tags"]]
    return entry


def test_jobs_backup_restores_identically_and_verifies(
    jobs_project: Project, jobs_db: str
) -> None:
    original = full_state(jobs_db)
    backup = jobs_project.run("backup", "database", "--jobs", "2")
    assert backup.returncode == 0, backup.stderr
    assert dump_folders(jobs_project) == []  # removed after success
    entry = only_entry(jobs_project)
    source = entry["source"]
    assert source["dump_format"] == "directory"
    assert entry["artifact"].endswith(".dump.tar.gz.enc")
    assert source["row_counts"]["public.nothing_here"] == 0
    assert source["row_counts"]["billing.notes"] == 300
    assert source["row_counts"]["public.users"] == 500

    verify = jobs_project.run("verify", "database", "latest")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    tested = jobs_project.run("--json", "verify", "database", "latest", "--restore-test")
    assert tested.returncode == 0, tested.stdout + tested.stderr

    execute(jobs_db, "DELETE FROM billing.notes", "DROP TABLE public.nothing_here")
    restore = jobs_project.run("restore", "database", "latest", "--yes", "--no-safety-backup")
    assert restore.returncode == 0, restore.stderr
    assert "Row counts match the backup" in restore.stdout
    assert full_state(jobs_db) == original  # rows, sequences, objects, large objects
    assert dump_folders(jobs_project) == []  # the unpacked copy is gone too


def test_old_manifest_without_format_is_custom(jobs_project: Project) -> None:
    backup = jobs_project.run("backup", "database")
    assert backup.returncode == 0, backup.stderr
    assert only_entry(jobs_project)["source"]["dump_format"] == "custom"
    from cosmic_backup.components.database.source import DatabaseSource
    from cosmic_backup.format.manifest import Manifest

    old = Manifest("database-x", "database", "ok", "full", [], "", "", "", source={})
    assert DatabaseSource.of(old).dump_format == "custom"
