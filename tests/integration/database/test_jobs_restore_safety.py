"""`restore database --jobs N` when things go wrong: a role without CREATEDB, sessions on
the target, pg_restore failing or killed, the CLI killed with SIGKILL. In every case the
target keeps its content and no database of ours is left behind."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from tests.conftest import Project
from tests.integration.database.appdb import execute, full_state, scalar
from tests.integration.database.conftest import PostgresServer
from tests.integration.database.procwatch import CommandLineWatcher
from tests.integration.database.test_jobs_restore import KEY, RESTORE, databases, dbname

JOBS = (*RESTORE, "--jobs", "2")


def backed_up(project: Project, url: str, **env: str) -> Project:
    project.env.update({"DATABASE_URL": url, "BACKUP_KEY": KEY, **env})
    made = project.run("backup", "database")
    assert made.returncode == 0, made.stderr
    return project


def wait_until(check: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def pids_of(program: str, mentioning: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            line = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        if (
            os.path.basename(line.split(b"\0")[0]) == program.encode()
            and mentioning.encode() in line
        ):
            found.append(int(entry.name))
    return found


def test_a_role_without_createdb_falls_back_to_one_transaction(
    project: Project, postgres: PostgresServer
) -> None:
    role = f"nocreatedb_{os.getpid()}"
    name = postgres.create_database("plain")
    with postgres.admin() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'role-secret-1' NOCREATEDB")
        conn.execute(f"ALTER DATABASE {name} OWNER TO {role}")
    url = postgres.url(name, user=role, password="role-secret-1")
    execute(url, "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 300) g")
    backed_up(project, url)
    execute(url, "DELETE FROM t WHERE id > 10")

    result = project.run(*JOBS)
    assert result.returncode == 0, result.stderr
    said = result.stdout + result.stderr
    sentence = (
        "--jobs 2 needs CREATEDB to restore into a new database; restoring in one "
        "transaction instead."
    )
    assert said.count(sentence) == 1
    assert "Row counts match the backup" in result.stdout
    assert scalar(url, "SELECT count(*) FROM t") == 300


def test_a_session_on_the_target_at_the_start_means_one_transaction(
    project: Project, app_db: str, postgres: PostgresServer
) -> None:
    backed_up(project, app_db)
    execute(app_db, "DELETE FROM users WHERE id > 10")
    with psycopg.connect(app_db, autocommit=True):  # the app, connected
        result = project.run(*JOBS)
    assert result.returncode == 0, result.stderr
    said = "1 is connected now (stop the app, or pass --terminate-sessions); restoring in one"
    assert said in result.stderr
    assert scalar(app_db, "SELECT count(*) FROM users") == 500
    assert databases(postgres, f"{dbname(app_db)}_cosmic_") == []


def test_a_session_that_stays_at_the_swap_is_waited_for_then_refused(
    project: Project, big_db: str, postgres: PostgresServer
) -> None:
    backed_up(project, big_db, BACKUP_LOCK_WAIT_TIMEOUT="2")
    execute(big_db, "DELETE FROM big WHERE id > 1000")
    before = full_state(big_db)
    prefix = f"{dbname(big_db)}_cosmic_"
    running = project.popen(*JOBS)
    try:
        wait_until(lambda: bool(databases(postgres, prefix)) or running.poll() is not None)
        # the app comes back meanwhile
        with psycopg.connect(big_db, autocommit=True, application_name="late-app") as app:
            pid = app.info.backend_pid
            _, err = running.communicate(timeout=120)
    finally:
        running.kill()
    assert running.returncode == 1, err
    assert "1 other session(s) stayed connected to database" in err
    # Whom it waits for is said while it waits, and again in the final sentence.
    who = f"pid {pid} (user postgres, application late-app, idle since "
    assert "The swap is waiting for the session(s) connected to database" in err
    assert err.count(who) == 2, err
    assert "for 2 s (BACKUP_LOCK_WAIT_TIMEOUT)" in err and "--terminate-sessions" in err
    assert "Traceback" not in err
    assert full_state(big_db) == before
    assert databases(postgres, prefix) == []
    assert not list(project.backups.joinpath("database").glob(".dump-*"))


def test_terminate_sessions_ends_the_apps_sessions_and_swaps(
    project: Project, app_db: str, postgres: PostgresServer
) -> None:
    backed_up(project, app_db)
    execute(app_db, "DELETE FROM users WHERE id > 10")
    app = psycopg.connect(app_db, autocommit=True)
    try:
        result = project.run(*JOBS, "--terminate-sessions", "--keep-old")
        assert result.returncode == 0, result.stderr
        assert app.closed or _is_dead(app)
    finally:
        app.close()
    assert scalar(app_db, "SELECT count(*) FROM users") == 500
    kept = databases(postgres, f"{dbname(app_db)}_cosmic_old_")
    assert len(kept) == 1 and f"kept as {kept[0]} (--keep-old)" in result.stdout
    assert scalar(postgres.url(kept[0]), "SELECT count(*) FROM users") == 10  # as it was
    postgres.drop_database(kept[0])


def _is_dead(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def test_a_failing_pg_restore_leaves_the_target_unchanged_and_drops_the_new_database(
    project: Project, app_db: str, postgres: PostgresServer
) -> None:
    ghost = f"ghost_{dbname(app_db)}"
    execute(app_db, f"CREATE ROLE {ghost}", f"GRANT SELECT ON users TO {ghost}")
    backed_up(project, app_db)
    execute(app_db, f"REVOKE ALL ON users FROM {ghost}", f"DROP ROLE {ghost}")
    execute(app_db, "DELETE FROM users WHERE id > 10")
    before = full_state(app_db)

    result = project.run(*JOBS)
    assert result.returncode == 1, result.stderr
    assert "failed, so nothing was swapped" in result.stderr
    assert f'role "{ghost}" does not exist' in result.stderr and "--no-privileges" in result.stderr
    assert "Traceback" not in result.stderr
    assert full_state(app_db) == before
    assert databases(postgres, f"{dbname(app_db)}_cosmic_") == []


def test_pg_restore_killed_midway_leaves_the_target_unchanged(
    project: Project, big_db: str, postgres: PostgresServer
) -> None:
    backed_up(project, big_db)
    execute(big_db, "DELETE FROM big WHERE id > 1000")
    before = full_state(big_db)
    running = project.popen(*JOBS)
    try:
        wait_until(
            lambda: bool(pids_of("pg_restore", dbname(big_db))) or running.poll() is not None
        )
        for pid in pids_of("pg_restore", dbname(big_db)):
            os.kill(pid, signal.SIGKILL)
        _, err = running.communicate(timeout=120)
    finally:
        running.kill()
    assert running.returncode == 1, err
    assert "nothing was swapped" in err and "Traceback" not in err
    assert full_state(big_db) == before
    assert databases(postgres, f"{dbname(big_db)}_cosmic_") == []


def test_sigkill_of_the_cli_leaves_the_target_and_the_next_run_cleans_up(
    project: Project, big_db: str, postgres: PostgresServer
) -> None:
    backed_up(project, big_db)
    execute(big_db, "DELETE FROM big WHERE id > 1000")
    before = full_state(big_db)
    prefix = f"{dbname(big_db)}_cosmic_"
    running = project.popen(*JOBS)
    try:
        wait_until(
            lambda: bool(pids_of("pg_restore", dbname(big_db))) or running.poll() is not None
        )
        running.send_signal(signal.SIGKILL)
        running.communicate(timeout=60)
    finally:
        running.kill()
    assert full_state(big_db) == before
    assert len(databases(postgres, prefix)) == 1  # recognisable as ours
    assert len(list(project.backups.joinpath("database").glob(".dump-*"))) == 1

    again = project.run("list")  # a run that takes no lock does not touch them
    assert again.returncode == 0
    done = project.run(*RESTORE)  # the next restore (any restore) removes them
    assert done.returncode == 0, done.stderr
    assert databases(postgres, prefix) == []
    assert not list(project.backups.joinpath("database").glob(".dump-*"))
    assert scalar(big_db, "SELECT count(*) FROM big") > 1000


def test_the_password_never_reaches_an_argument_list(project: Project, app_db: str) -> None:
    backed_up(project, app_db)
    password = app_db.split(":")[2].split("@")[0]
    with CommandLineWatcher() as watcher:
        result = project.run(*JOBS)
    assert result.returncode == 0, result.stderr
    restores = watcher.programs("pg_restore", dbname(app_db))
    assert restores and any(b"--jobs=2" in line for line in restores)
    assert not [line for line in watcher.seen if password.encode() in line]
