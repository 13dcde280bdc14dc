"""Database backup and restore through the real CLI, against a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from tests.conftest import Project
from tests.integration.database.appdb import (
    DESTRUCTIVE_CHANGES,
    execute,
    full_state,
    table_contents,
)
from tests.integration.database.conftest import PostgresServer, free_port
from tests.integration.database.late_server import LateServer
from tests.integration.database.procwatch import CommandLineWatcher, running

KEY = "database tests passphrase 0123456789"


@pytest.fixture
def db_project(project: Project, app_db: str) -> Project:
    project.env.update({"DATABASE_URL": app_db, "BACKUP_KEY": KEY})
    return project


def listed(project: Project) -> list[dict]:
    result = project.run("--json", "list", "database")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_app_database_round_trip_after_destructive_changes(
    db_project: Project, app_db: str
) -> None:
    original = full_state(app_db)
    backup = db_project.run("backup", "database")
    assert backup.returncode == 0, backup.stderr
    [entry] = listed(db_project)
    source = entry["source"]
    assert source["row_counts"]["public.users"] == 500
    assert source["row_counts"]["billing.invoices"] == 800
    assert source["migration_head"] == "django_migrations: core.0002_more"
    with psycopg.connect(app_db) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    assert row is not None and source["server_version"] == str(row[0]).split()[0]
    assert source["host"] == "127.0.0.1"
    assert entry["mode"] == "full"

    execute(app_db, *DESTRUCTIVE_CHANGES)
    changed = full_state(app_db)

    restore = db_project.run("restore", "database", "latest", "--yes")
    assert restore.returncode == 0, restore.stderr
    assert "Row counts match the backup" in restore.stdout
    assert (
        "migration django_migrations: core.0002_more; the database is now at "
        "django_migrations: core.0003_oops" in restore.stderr
    )
    restored = full_state(app_db)
    assert restored[0] == original[0]  # every table, row by row
    assert restored[1] == original[1]  # sequences continue where they were
    assert restored[2] == original[2]  # columns, views, triggers, enum, extensions, LOs, FKs
    with psycopg.connect(app_db, autocommit=True) as conn:
        assert conn.execute("SELECT nextval('users_id_seq')").fetchone()[0] == 123456790
        conn.execute("INSERT INTO billing.invoices (user_id, amount) VALUES (1, 1)")
        assert conn.execute("SELECT count(*) FROM audit.log").fetchone()[0] == 801

    # The pre-restore backup holds the changed state and restores it.
    safety = [e for e in listed(db_project) if "pre-restore" in e["tags"]]
    assert len(safety) == 1
    back = db_project.run("restore", "database", safety[0]["id"], "--yes", "--no-safety-backup")
    assert back.returncode == 0, back.stderr
    assert full_state(app_db) == changed
    assert db_project.run("verify", "database").returncode == 0


def test_a_failing_restore_leaves_the_database_exactly_as_it_was(
    db_project: Project, app_db: str
) -> None:
    assert db_project.run("backup", "database").returncode == 0
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute("DELETE FROM billing.invoices WHERE id % 2 = 0")
        # An event trigger whose function lives in a schema the backup does not hold (so
        # the reset keeps it) refuses to create views: the restore fails after the tables
        # and their data were already loaded.
        conn.execute("CREATE SCHEMA guard")
        conn.execute(
            "CREATE FUNCTION guard.no_views() RETURNS event_trigger LANGUAGE plpgsql AS $$ "
            "BEGIN IF tg_tag = 'CREATE VIEW' THEN RAISE EXCEPTION 'views are frozen'; END IF; "
            "END $$"
        )
        conn.execute(
            "CREATE EVENT TRIGGER freeze_views ON ddl_command_end EXECUTE FUNCTION guard.no_views()"
        )
    before = full_state(app_db)
    result = db_project.run("restore", "database", "latest", "--yes", "--no-safety-backup")
    assert result.returncode == 1, result.stderr
    assert "rolled back; the database is unchanged" in result.stderr
    assert "views are frozen" in result.stderr
    assert full_state(app_db) == before


def test_schema_only_backup_and_restore(db_project: Project, postgres: PostgresServer) -> None:
    result = db_project.run("backup", "database", "--schema-only")
    assert result.returncode == 0, result.stderr
    [entry] = listed(db_project)
    assert entry["mode"] == "schema-only" and entry["source"]["row_counts"] == {}
    empty = postgres.url(postgres.create_database("empty"))
    restore = db_project.run("restore", "database", "latest", "--into", empty, "--yes")
    assert restore.returncode == 0, restore.stderr
    assert "no data" in restore.stdout
    assert "--into URL carries a password" in restore.stderr
    contents = table_contents(empty)
    assert "public.users" in contents and "billing.invoices" in contents
    assert all(rows == [] for rows in contents.values())
    listing = db_project.run("list", "database")
    assert "schema-only" in listing.stdout
    # The pre-restore copy is of the other database: tagged so, and not counted as the app's.
    [copy] = [e for e in listed(db_project) if "pre-restore" in e["tags"]]
    assert "other-target" in copy["tags"]
    status = json.loads(db_project.run("--json", "status").stdout)
    [database] = [s for s in status["components"] if s["component"] == "database"]
    assert database["backups"] == 1


def owned_by_role(postgres: PostgresServer, url: str, role: str, password: str) -> str:
    """Give the database at `url` and its table to a new password-protected role."""
    name = url.rsplit("/", 1)[1]
    execute(
        url,
        f"CREATE ROLE {role} LOGIN PASSWORD '{password}'",
        f'ALTER DATABASE "{name}" OWNER TO {role}',
        f"ALTER TABLE big OWNER TO {role}",
    )
    return postgres.url(name, role, password)


def test_the_password_never_appears_in_argv_logs_or_manifests(
    project: Project, postgres: PostgresServer, big_db: str
) -> None:
    password = "Zr9-secret-of-app-role"
    url = owned_by_role(postgres, big_db, "app_owner", password)
    project.env.update({"DATABASE_URL": url, "BACKUP_KEY": KEY})
    with CommandLineWatcher() as watcher:
        backup = project.run("backup", "database")
        restore = project.run("restore", "database", "latest", "--yes")  # and its safety copy
    assert backup.returncode == 0, backup.stderr
    assert restore.returncode == 0, restore.stderr
    name = big_db.rsplit("/", 1)[1]
    assert len(watcher.programs("pg_dump", name)) == 2, "a dump ended before it was seen"
    assert not [line for line in watcher.seen if password.encode() in line]
    texts = [p.read_text() for p in (project.root / "logs").iterdir()]
    texts += [p.read_text() for p in project.backups.rglob("*.json")]
    texts += [project.run("--json", "list").stdout, project.run("doctor").stdout]
    texts += [backup.stdout, backup.stderr, restore.stdout, restore.stderr]
    assert all(password not in text for text in texts)
    assert "app_owner" in texts[0]  # the logs do speak of the role


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong password", "Authentication failed for user postgres"),
        ("missing database", "does not exist"),
        ("closed port", "connection refused"),
        ("unresolvable host", "cannot be resolved"),
        ("silent server", "timed out after 2 s"),
    ],
)
def test_connection_failures_are_one_sentence_and_a_failure_record(
    project: Project, postgres: PostgresServer, case: str, expected: str
) -> None:
    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    urls = {
        "wrong password": postgres.url("postgres", "postgres", "not-the-password"),
        "missing database": postgres.url("no_such_db"),
        "closed port": f"postgresql://postgres:x@127.0.0.1:{free_port()}/postgres",
        "unresolvable host": "postgresql://postgres:x@no-such-host.invalid/postgres",
        "silent server": f"postgresql://u:x@127.0.0.1:{silent.getsockname()[1]}/app",
    }
    project.env.update(
        {
            "DATABASE_URL": urls[case],
            "BACKUP_KEY": KEY,
            "BACKUP_CONNECT_RETRIES": "2",
            "BACKUP_CONNECT_TIMEOUT": "2",
        }
    )
    began = time.monotonic()
    with silent:
        result = project.run("backup", "database")
    assert time.monotonic() - began < 15  # two attempts of at most 2 s, 1 s apart
    assert result.returncode == 1, result.stderr
    assert expected in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    [record] = listed(project)
    assert record["status"] == "failed" and expected in record["error"]
    assert "not-the-password" not in json.dumps(record)


def test_a_server_that_accepts_connections_5_s_late_is_waited_for(
    db_project: Project, postgres: PostgresServer, app_db: str
) -> None:
    """A waking serverless compute: connections are refused for 5 s after the backup
    starts, then reach the server; with the default retry window (BACKUP_CONNECT_WAIT,
    30 s) the backup waits and succeeds."""
    with LateServer(postgres.port) as late:
        db_project.env["DATABASE_URL"] = app_db.replace(f":{postgres.port}/", f":{late.port}/")
        began = time.monotonic()
        backup = db_project.popen("backup", "database")
        time.sleep(5)  # the compute's wake-up time: the condition under test, not a wait
        late.open()
        _, err = backup.communicate(timeout=120)
        elapsed = time.monotonic() - began
    assert backup.returncode == 0, err
    assert elapsed >= 5
    [entry] = listed(db_project)
    assert entry["status"] == "ok"
    log = "".join(p.read_text() for p in (db_project.root / "logs").iterdir())
    assert "connection attempt 1 failed: Nothing accepts connections" in log


def test_a_locked_table_fails_within_the_lock_wait_timeout(
    db_project: Project, app_db: str
) -> None:
    db_project.env["BACKUP_LOCK_WAIT_TIMEOUT"] = "1"
    with psycopg.connect(app_db) as blocker:
        blocker.execute("LOCK TABLE billing.invoices IN ACCESS EXCLUSIVE MODE")
        began = time.monotonic()
        result = db_project.run("backup", "database")
        elapsed = time.monotonic() - began
        blocker.rollback()
    assert elapsed < 15
    assert result.returncode == 1, result.stderr
    assert "billing.invoices is locked by another session" in result.stderr
    entries = listed(db_project)
    assert [e["status"] for e in entries] == ["failed"]
    names = [p.name for p in (db_project.backups / "database").iterdir()]
    assert not [n for n in names if n.endswith(".gz.enc") or ".partial-" in n]


def test_a_pg_dump_older_than_the_server_names_the_version_to_install(
    db_project: Project, tmp_path: Path, postgres: PostgresServer
) -> None:
    shims = tmp_path / "old-client"
    shims.mkdir()
    for tool in ("pg_dump", "pg_restore", "psql"):  # only their --version is ever run
        shim = shims / tool
        shim.write_text(f"#!/bin/sh\necho '{tool} (PostgreSQL) 12.0'\n")
        shim.chmod(0o755)
    db_project.env["BACKUP_PG_BIN_DIR"] = str(shims)
    result = db_project.run("backup", "database")
    assert result.returncode == 1
    assert f"install postgresql-client-{postgres.major}" in result.stderr.lower()
    assert "12.0" in result.stderr


def test_restore_by_date_and_id_and_latest_skips_safety_copies(
    db_project: Project, app_db: str
) -> None:
    assert db_project.run("backup", "database").returncode == 0
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute("DELETE FROM users WHERE id > 250")
    assert db_project.run("backup", "database").returncode == 0
    first, second = (e["id"] for e in listed(db_project))
    by_id = db_project.run("restore", "database", first, "--yes")
    assert by_id.returncode == 0, by_id.stderr
    with psycopg.connect(app_db, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 500
    # latest is `second`, not the pre-restore copy taken just now
    latest = db_project.run("restore", "database", "latest", "--yes", "--no-safety-backup")
    assert f"from {second}" in latest.stdout
    today = time.strftime("%Y-%m-%d")
    by_date = db_project.run("restore", "database", today, "--yes", "--no-safety-backup")
    assert by_date.returncode == 0 and f"from {second}" in by_date.stdout
    missing = db_project.run("restore", "database", "2001-02-03", "--yes")
    assert missing.returncode == 4 and today in missing.stderr


def test_an_unattended_restore_needs_yes_even_without_a_safety_copy(
    db_project: Project, app_db: str
) -> None:
    assert db_project.run("backup", "database").returncode == 0
    execute(app_db, "DELETE FROM users WHERE id > 10")
    before = full_state(app_db)
    for extra in ([], ["--no-safety-backup"]):
        result = db_project.run("restore", "database", "latest", *extra)
        assert result.returncode == 2, result.stderr
        assert "pass --yes for unattended runs" in result.stderr
    assert full_state(app_db) == before
    assert [e["tags"] for e in listed(db_project)] == [["manual"]]  # no safety copy either


def test_backup_all_includes_the_database(db_project: Project) -> None:
    result = db_project.run("backup", "all")
    assert result.returncode == 0, result.stderr
    assert "database  ok" in result.stdout


def test_doctor_checks_the_database(db_project: Project, postgres: PostgresServer) -> None:
    good = db_project.run("doctor")
    assert good.returncode == 0, good.stdout
    assert f"PostgreSQL {postgres.major}" in good.stdout
    bad = db_project.run(
        "doctor", env={"DATABASE_URL": postgres.url("postgres", "postgres", "wrong-pw-doctor")}
    )
    assert bad.returncode == 1
    assert "Authentication failed" in bad.stdout and "wrong-pw-doctor" not in bad.stdout


def test_restore_falls_back_when_the_schema_reset_is_not_permitted(
    project: Project, postgres: PostgresServer
) -> None:
    """A role that owns its tables but not the public schema (as on managed databases)."""
    name = postgres.create_database()
    with postgres.admin(name) as conn:
        conn.execute("CREATE ROLE limited LOGIN PASSWORD 'limited-pw-1'")
        conn.execute("GRANT ALL ON SCHEMA public TO limited")
    url = postgres.url(name, "limited", "limited-pw-1")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 50) g")
    project.env.update({"DATABASE_URL": url, "BACKUP_KEY": KEY})
    assert project.run("backup", "database").returncode == 0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM notes WHERE id > 5")
    result = project.run("restore", "database", "latest", "--yes")
    assert result.returncode == 0, result.stderr
    assert "may not drop and recreate the schemas" in result.stdout
    assert "Row counts match the backup: 50 rows" in result.stdout


def test_the_app_version_is_recorded_and_listed(db_project: Project) -> None:
    assert db_project.run("backup", "database", env={"APP_VERSION": "v9.8.7"}).returncode == 0
    [entry] = listed(db_project)
    assert entry["source"]["app_version"] == "v9.8.7"
    assert "app version v9.8.7" in db_project.run("list").stdout
    assert "migration head django_migrations: core.0002_more" in db_project.run("list").stdout


def test_the_overall_time_limit_stops_the_dump_and_records_a_failure(
    db_project: Project, app_db: str
) -> None:
    db_project.env.update({"BACKUP_TIMEOUT": "2", "BACKUP_LOCK_WAIT_TIMEOUT": "60"})
    for mode in (["--schema-only"], []):  # pg_dump waiting, and our row counts waiting
        with psycopg.connect(app_db) as blocker:
            blocker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            began = time.monotonic()
            result = db_project.run("backup", "database", *mode)
            elapsed = time.monotonic() - began
            blocker.rollback()
        assert result.returncode == 1, result.stderr
        assert "did not finish within 2 s (BACKUP_TIMEOUT)" in result.stderr
        assert elapsed < 20
    assert [e["status"] for e in listed(db_project)] == ["failed", "failed"]
    assert not [
        p
        for p in (db_project.backups / "database").iterdir()
        if p.name.endswith(".gz.enc") or ".partial-" in p.name
    ]


def test_backup_all_goes_on_past_a_failed_component(
    project: Project, postgres: PostgresServer
) -> None:
    (project.root / ".env").write_text("A=1\n")
    project.env.update(
        {
            "BACKUP_KEY": KEY,
            "BACKUP_CONNECT_RETRIES": "1",
            "DATABASE_URL": postgres.url("postgres", "postgres", "wrong"),
        }
    )
    result = project.run("backup", "all")
    assert result.returncode == 3, result.stderr
    assert "database  failed   Authentication failed" in result.stdout
    assert "config    ok" in result.stdout and "Details are in logs/" in result.stdout
    statuses = {
        e["component"]: e["status"] for e in json.loads(project.run("--json", "list").stdout)
    }
    assert statuses == {"database": "failed", "config": "ok"}


def wait_for_program(name: str, mentioning: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not running(name, mentioning):
        assert time.monotonic() < deadline, f"{name} never started"
        time.sleep(0.002)


def digest(url: str) -> tuple[int, str]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY id)) FROM big t"
        ).fetchone()
        assert row is not None
        return int(row[0]), str(row[1])


def test_sigint_during_a_dump_stops_pg_dump_and_leaves_a_failure_record(
    project: Project, big_db: str
) -> None:
    project.env.update({"DATABASE_URL": big_db, "BACKUP_KEY": KEY})
    name = big_db.rsplit("/", 1)[1]
    process = project.popen("backup", "database")
    wait_for_program("pg_dump", name)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Stopped by SIGINT" in err and "Traceback" not in err
    assert not running("pg_dump", name)
    [record] = listed(project)
    assert record["status"] == "failed"
    assert not [p for p in (project.backups / "database").iterdir() if "json" not in p.name]


def test_sigterm_during_a_restore_leaves_the_database_as_it_was(
    project: Project, big_db: str
) -> None:
    project.env.update({"DATABASE_URL": big_db, "BACKUP_KEY": KEY})
    name = big_db.rsplit("/", 1)[1]
    assert project.run("backup", "database").returncode == 0
    execute(big_db, "DELETE FROM big WHERE id % 3 = 0")
    before = digest(big_db)
    process = project.popen("restore", "database", "latest", "--yes", "--no-safety-backup")
    wait_for_program("psql", name)
    time.sleep(0.3)  # the reset has run and rows are flowing
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Stopped by SIGTERM" in err
    assert not running("psql", name)
    assert digest(big_db) == before


def test_recovery_by_hand_with_openssl_gunzip_and_pg_restore(
    project: Project, app_db: str, postgres: PostgresServer
) -> None:
    """The documented emergency path (docs/database.md), with the key file on disk."""
    project.env["DATABASE_URL"] = app_db
    project.env["BACKUP_FORMAT"] = "single-file"  # an artifact (a chunked one: recover.sh)
    assert project.run("backup", "database").returncode == 0, "backup failed"
    [entry] = listed(project)
    artifact = project.backups / "database" / entry["artifact"]
    empty = postgres.create_database("byhand")
    pipeline = (
        f"openssl enc -d -aes-256-cbc -pbkdf2 -iter {entry['kdf']['iterations']} -md sha256 "
        f"-pass file:.backup_key -in {artifact} | gunzip | "
        f"{postgres.bin_dir}/pg_restore --no-owner --clean --if-exists --single-transaction "
        f"--host 127.0.0.1 --port {postgres.port} --username postgres --dbname {empty}"
    )
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", pipeline],
        cwd=project.root,
        env={**os.environ, "PGPASSWORD": postgres.password},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert full_state(postgres.url(empty)) == full_state(app_db)


def test_the_manifest_names_the_host_libpq_took_from_pghost(project: Project, app_db: str) -> None:
    """DATABASE_URL without a host: libpq takes PGHOST (and PGPORT...); so does the manifest."""
    params = psycopg.conninfo.conninfo_to_dict(app_db)
    project.env.update(
        {
            "BACKUP_KEY": KEY,
            "DATABASE_URL": f"postgresql:///{params['dbname']}",
            "PGHOST": str(params["host"]),
            "PGPORT": str(params["port"]),
            "PGUSER": str(params["user"]),
            "PGPASSWORD": str(params["password"]),
        }
    )
    backup = project.run("backup", "database", "--schema-only")
    assert backup.returncode == 0, backup.stderr
    [entry] = listed(project)
    assert entry["source"]["host"] == params["host"] != "localhost"
