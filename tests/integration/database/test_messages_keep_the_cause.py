"""Failures whose message must keep its cause (issue 18, item 13): a full backup disk,
a row the server cannot send, and the log line every failed command leaves."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Project
from tests.integration.database.appdb import execute
from tests.integration.database.conftest import PostgresServer
from tests.integration.database.test_database_component import freeze

KEY = "database tests passphrase 0123456789"
TINY_DISK = "2m"  # tmpfs size: the dump below needs about twice that
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs")


def one_sentence_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr and "unexpected" not in stderr
    return errors[0].removeprefix("error: ")


def logged(project: Project) -> str:
    return "".join(path.read_text() for path in (project.root / "logs").glob("*.log"))


def logged_errors(project: Project, sentence: str) -> list[str]:
    """The log's ERROR lines that hold `sentence`."""
    return [line for line in logged(project).splitlines() if " ERROR " in line and sentence in line]


def listed(project: Project) -> list[dict]:
    result = project.run("--json", "list", "database")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def noisy_db(postgres: PostgresServer) -> str:
    """About 6.5 MiB of dump (md5 text: it compresses to about half), more than the disk."""
    url = postgres.url(postgres.create_database("fulldisk"))
    execute(
        url,
        "CREATE TABLE noise AS SELECT g AS id, md5(random()::text) || md5(random()::text) AS v "
        "FROM generate_series(1, 100000) g",
    )
    return url


@pytest.fixture
def tiny_backup_dir(project: Project) -> Iterator[Path]:
    folder = project.root / "tiny-disk"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={TINY_DISK}", "tmpfs", str(folder)]
    if subprocess.run(mount, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


# -- a full disk ------------------------------------------------------------------------------
@needs_root
@pytest.mark.parametrize(
    ("jobs", "says"),
    [
        # our own write of the sealed stream; pg_dump's into its temporary folder
        ([], r"stopped after [\d.]+ (KiB|MiB) with [\d.]+ (B|KiB) free"),
        (["--jobs", "2"], r"pg_dump --jobs wrote [\d.]+ (KiB|MiB) of its temporary dump folder"),
    ],
)
def test_a_full_backup_disk_names_the_folder_the_space_and_what_to_do(
    project: Project, noisy_db: str, tiny_backup_dir: Path, jobs: list[str], says: str
) -> None:
    project.env.update(
        {
            "DATABASE_URL": noisy_db,
            "BACKUP_KEY": KEY,
            "BACKUP_DIR": str(tiny_backup_dir),
            "BACKUP_FORMAT": "single-file",  # the chunk store's own sentence: below
        }
    )
    result = project.run("backup", "database", *jobs)
    assert result.returncode == 1, result.stderr
    sentence = one_sentence_error(result.stderr)
    assert sentence.startswith(f"The disk of {tiny_backup_dir / 'database'} is full"), sentence
    assert re.search(says, sentence) and " free" in sentence and "BACKUP_DIR" in sentence
    assert "pg_dump:" not in sentence  # the tool's own prefix, never doubled
    assert sentence.endswith("nothing partial was kept.")
    if jobs:
        assert "the database's size on the server" in sentence
        assert "back up without --jobs" in sentence
    # Nothing half-written stays, and the only entry is the failure record.
    left = [p.name for p in (tiny_backup_dir / "database").iterdir()]
    assert not [name for name in left if ".partial-" in name or name.startswith(".dump-")]
    assert [entry["status"] for entry in listed(project)] == ["failed"]
    assert len(logged_errors(project, sentence)) == 1


@needs_root
def test_a_full_disk_under_the_chunk_store_names_it_and_keeps_what_was_written(
    project: Project, noisy_db: str, tiny_backup_dir: Path
) -> None:
    project.env.update(
        {"DATABASE_URL": noisy_db, "BACKUP_KEY": KEY, "BACKUP_DIR": str(tiny_backup_dir)}
    )
    result = project.run("backup", "database")
    assert result.returncode == 1, result.stderr
    sentence = one_sentence_error(result.stderr)
    assert sentence.startswith(f"The disk of {tiny_backup_dir / 'store'}"), sentence
    assert " free" in sentence and "BACKUP_DIR" in sentence, sentence
    assert sentence.endswith("the chunks already written are kept and reused."), sentence
    assert [entry["status"] for entry in listed(project)] == ["failed"]
    assert not list((tiny_backup_dir / "store" / "tmp").iterdir())  # no partial pack stays


# -- the server's error reaches the sentence ----------------------------------------------------
@pytest.fixture
def unsendable_row_db(postgres: PostgresServer) -> str:
    """A row the server cannot send: its COPY fails midway with the server's ERROR.

    The case seen (a 900 MB bytea: "invalid memory alloc request size") takes a gigabyte
    of memory and minutes, too much for CI. A value of an enum label removed from the
    catalog fails the same way in enum_out ("invalid internal value for enum"), in the
    same place: pg_dump's COPY of the table, reported as "PQgetResult() failed." with
    the server's sentence on a "pg_dump: detail:" line."""
    url = postgres.url(postgres.create_database("unsendable"))
    execute(
        url,
        "CREATE TYPE mood AS ENUM ('calm', 'lost')",
        "CREATE TABLE diary (id int PRIMARY KEY, mood mood)",
        "INSERT INTO diary SELECT g, 'calm' FROM generate_series(1, 1000) g",
        "INSERT INTO diary VALUES (1001, 'lost')",
        "DELETE FROM pg_enum WHERE enumlabel = 'lost'",  # as superuser: a damaged catalog
    )
    return url


@pytest.mark.parametrize("jobs", [[], ["--jobs", "2"]])
def test_a_row_the_server_cannot_send_names_the_servers_error(
    project: Project, unsendable_row_db: str, jobs: list[str]
) -> None:
    project.env.update({"DATABASE_URL": unsendable_row_db, "BACKUP_KEY": KEY})
    result = project.run("backup", "database", *jobs)
    assert result.returncode == 1, result.stderr
    sentence = one_sentence_error(result.stderr)
    assert sentence.startswith("pg_dump failed (exit code 1): Dumping the contents of table")
    assert "ERROR:  invalid internal value for enum" in sentence, sentence
    assert "pg_dump:" not in sentence and "error: " not in sentence and ".." not in sentence
    assert sentence.endswith("Command was: COPY public.diary (id, mood) TO stdout.")
    assert [entry["status"] for entry in listed(project)] == ["failed"]


# -- every failure in the log -------------------------------------------------------------------
def test_a_failed_restore_leaves_its_sentence_in_the_log(project: Project, app_db: str) -> None:
    project.env.update({"DATABASE_URL": app_db, "BACKUP_KEY": KEY})
    assert project.run("backup", "database").returncode == 0
    freeze(app_db, "CREATE TABLE")
    result = project.run("restore", "database", "latest", "--yes", "--no-safety-backup")
    assert result.returncode == 1, result.stderr
    sentence = one_sentence_error(result.stderr)
    assert "frozen: CREATE TABLE" in sentence
    [line] = logged_errors(project, sentence)
    assert line.endswith(f"ERROR   restore failed: {sentence}")


def test_a_failed_backup_logs_its_sentence_once(project: Project, postgres: PostgresServer) -> None:
    project.env.update({"DATABASE_URL": postgres.url("no_such_database"), "BACKUP_KEY": KEY})
    result = project.run("backup", "database")
    assert result.returncode == 1, result.stderr
    sentence = one_sentence_error(result.stderr)
    assert "no_such_database" in sentence
    [line] = logged_errors(project, sentence)  # the failure record's line, not twice
    assert "backup database-" in line
