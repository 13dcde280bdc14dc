"""A restore blocked by another session's open transaction (issue 18 item 10): within
seconds it says whom it waits for, on screen and in the log, and the final sentence of a
wait that gave up names that session."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg

from tests.conftest import Project
from tests.integration.database.appdb import execute, scalar
from tests.integration.database.conftest import PostgresServer
from tests.integration.database.test_jobs_restore import KEY

NOTICE = "The restore is waiting for locks held by pid "
TAKEN = "Pre-restore backup "


def timed_lines(stream: object, into: list[tuple[float, str]]) -> threading.Thread:
    def read() -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append((time.monotonic(), line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def test_a_restore_waiting_on_an_open_transaction_names_it_within_seconds(
    project: Project, postgres: PostgresServer
) -> None:
    name = postgres.create_database("blocked")
    url = postgres.url(name)
    execute(url, "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g")
    project.env.update({"DATABASE_URL": url, "BACKUP_KEY": KEY, "BACKUP_LOCK_WAIT_TIMEOUT": "6"})
    assert project.run("backup", "database").returncode == 0
    execute(url, "DELETE FROM t WHERE id > 10")

    with psycopg.connect(url, application_name="nightly-report") as holder:
        holder.execute("LOCK TABLE t IN ACCESS SHARE MODE")  # an open transaction that read t
        pid = holder.info.backend_pid
        lines: list[tuple[float, str]] = []
        running = project.popen("restore", "database", "latest", "--yes")
        reader = timed_lines(running.stderr, lines)
        running.wait(timeout=120)
        reader.join(timeout=10)
        holder.rollback()

    assert running.returncode == 1
    said = "".join(line for _, line in lines)
    assert "Traceback" not in said
    taken = next(at for at, line in lines if line.startswith(TAKEN) and "taken" in line)
    notice_at, notice = next((at, line) for at, line in lines if NOTICE in line)
    assert notice_at - taken <= 3.0, f"the notice came {notice_at - taken:.1f} s after"
    who = f"pid {pid} (user postgres, application nightly-report, idle in transaction since "
    assert who in notice
    assert f"SELECT pg_terminate_backend({pid})" in notice
    final = lines[-1][1]
    assert final.startswith("error: Objects in ")
    assert who in final and "gave up after waiting 6 s (BACKUP_LOCK_WAIT_TIMEOUT)" in final
    logged = "".join(path.read_text() for path in Path(project.root).rglob("cosmic-backup-*.log"))
    assert who in logged
    assert scalar(url, "SELECT count(*) FROM t") == 10  # unchanged
