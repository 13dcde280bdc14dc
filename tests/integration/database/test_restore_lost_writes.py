"""Writes the app commits while a restore runs (issue 18 item 8): the plan says, before
anything is done, that what is written after the pre-restore backup begins is in no
backup, and the report counts what was; the count covers every acknowledged write that
is in neither the pre-restore backup nor the restored database.

A real writer thread commits one row per transaction all along; what it lost is found
by restoring the pre-restore backup into a scratch database and comparing."""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from tests.conftest import Project
from tests.integration.database.appdb import execute
from tests.integration.database.conftest import PostgresServer
from tests.integration.database.test_database_cli import listed
from tests.integration.database.test_jobs_restore import KEY

SLACK = 50
BEFORE = "What the app writes after the pre-restore backup begins is in no backup"


class Writer:
    """Commits rows (id, one per transaction) until stopped; keeps the acknowledged ids."""

    def __init__(self, url: str, first_id: int) -> None:
        self.url = url
        self.ids = itertools.count(first_id)
        self.acknowledged: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    while not self.stop.is_set():
                        row_id = next(self.ids)
                        conn.execute("INSERT INTO w (id) VALUES (%s)", [row_id])
                        self.acknowledged.append(row_id)  # committed: the app was told so
                        time.sleep(0.003)
            except psycopg.Error:
                # Terminated at the swap, or the table is gone: go on, after a pause (an
                # app that reconnects at once keeps --terminate-sessions from swapping).
                time.sleep(1.0)


@contextmanager
def writing(url: str, first_id: int) -> Iterator[Writer]:
    writer = Writer(url, first_id)
    writer.thread.start()
    deadline = time.monotonic() + 10
    while len(writer.acknowledged) < 20:
        assert time.monotonic() < deadline, "the writer never wrote"
        time.sleep(0.01)
    try:
        yield writer
    finally:
        time.sleep(0.5)  # it writes on after the restore too
        writer.stop.set()
        writer.thread.join(timeout=30)


def ids(url: str) -> set[int]:
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('w')").fetchone() == (None,):
            return set()
        return {row[0] for row in conn.execute("SELECT id FROM w")}


def lost_rows(project: Project, postgres: PostgresServer, url: str, writer: Writer) -> int:
    """Acknowledged ids in neither the restored database nor the pre-restore backup."""
    [safety] = [e for e in listed(project) if "pre-restore" in e["tags"]]
    scratch = postgres.url(postgres.create_database("scratch"))
    back = project.run(
        "restore", "database", safety["id"], "--into", scratch, "--yes", "--no-safety-backup"
    )
    assert back.returncode == 0, back.stderr
    return len(set(writer.acknowledged) - ids(url) - ids(scratch))


def prepared(project: Project, postgres: PostgresServer) -> str:
    """A backed-up database, and the table the writer fills made after that backup (as
    a migration would): it is in the pre-restore backup but not in the one restored, so
    the writer's inserts fail once the restore is in and the row counts the restore
    checks are not the writer's. (A table of the backup that the app writes on after the
    restore changes those counts before they are taken: exit 6, see the report.)"""
    url = postgres.url(postgres.create_database("writes"))
    execute(url, "CREATE TABLE kept AS SELECT generate_series(1, 100) AS id")
    project.env.update({"DATABASE_URL": url, "BACKUP_KEY": KEY})
    assert project.run("backup", "database").returncode == 0
    execute(url, "CREATE TABLE w (id bigint PRIMARY KEY)")
    return url


def test_writes_during_a_one_transaction_restore_are_announced_and_counted(
    project: Project, postgres: PostgresServer
) -> None:
    url = prepared(project, postgres)
    with writing(url, 1000) as writer:
        result = project.run("restore", "database", "latest", "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stderr.index(BEFORE) < result.stderr.index("Taking a pre-restore backup")
    found = re.search(
        r"(\d+) write transaction\(s\) committed on this server after the pre-restore backup "
        r"began and before the restore took its locks are in neither",
        result.stdout,
    )
    assert found, result.stdout
    lost = lost_rows(project, postgres, url, writer)
    assert lost > 0  # the writer did write between the backup and the restore
    # An upper bound: the writes just before the backup's snapshot count too, and so may
    # an autovacuum's ANALYZE (a transaction that writes pg_statistic).
    assert lost <= int(found.group(1)) <= len(writer.acknowledged) + SLACK


def test_writes_during_a_jobs_restore_with_terminate_sessions_are_counted(
    project: Project, postgres: PostgresServer
) -> None:
    url = prepared(project, postgres)
    with writing(url, 1000) as writer:
        result = project.run(
            "restore",
            "database",
            "latest",
            "--yes",
            "--jobs",
            "2",
            "--terminate-sessions",
            env={"BACKUP_LOCK_WAIT_TIMEOUT": "10"},
        )
    assert result.returncode == 0, result.stderr
    assert "swapped in as" in result.stdout  # the --jobs path, not its fallback
    assert BEFORE in result.stderr
    found = re.search(
        r"(\d+) row\(s\) were inserted, updated or deleted in the database after the "
        r"pre-restore backup began and before the swap",
        result.stdout,
    )
    assert found, result.stdout
    lost = lost_rows(project, postgres, url, writer)
    assert lost > 0
    assert lost <= int(found.group(1)) <= len(writer.acknowledged) + SLACK
