"""Restore options for what the schema reset or the backup's GRANTs would trip over,
through the real CLI: --drop-dependents and --no-privileges."""

from __future__ import annotations

import psycopg
import pytest

from tests.conftest import Project
from tests.integration.database.appdb import execute, full_state, scalar
from tests.integration.database.test_restore_reset import DEPENDENTS

KEY = "restore options passphrase 0123456789"


@pytest.fixture
def db_project(project: Project, app_db: str) -> Project:
    project.env.update({"DATABASE_URL": app_db, "BACKUP_KEY": KEY})
    return project


def test_dependents_outside_the_backup_are_listed_and_kept_unless_allowed(
    db_project: Project, app_db: str
) -> None:
    assert db_project.run("backup", "database").returncode == 0
    execute(app_db, "DELETE FROM users WHERE id > 10", *DEPENDENTS)
    before = full_state(app_db)
    refused = db_project.run("restore", "database", "latest", "--yes", "--no-safety-backup")
    assert refused.returncode == 1, refused.stderr
    assert "view reports.rich" in refused.stderr and "--drop-dependents" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert full_state(app_db) == before

    args = ("restore", "database", "latest", "--yes", "--no-safety-backup", "--drop-dependents")
    allowed = db_project.run(*args)
    assert allowed.returncode == 0, allowed.stderr
    assert scalar(app_db, "SELECT count(*) FROM users") == 500
    assert scalar(app_db, "SELECT to_regclass('reports.rich')") is None


def test_a_role_missing_on_the_target_suggests_no_privileges_which_works(
    db_project: Project, app_db: str
) -> None:
    ghost = f"ghost_{app_db.rsplit('/', 1)[1]}"
    execute(app_db, f"CREATE ROLE {ghost}", f"GRANT SELECT ON users TO {ghost}")
    assert db_project.run("backup", "database").returncode == 0
    execute(app_db, f"REVOKE ALL ON users FROM {ghost}", f"DROP ROLE {ghost}")
    execute(app_db, "DELETE FROM users WHERE id > 10")
    before = full_state(app_db)

    failed = db_project.run("restore", "database", "latest", "--yes", "--no-safety-backup")
    assert failed.returncode == 1, failed.stderr
    assert f'role "{ghost}" does not exist' in failed.stderr
    assert "pass --no-privileges" in failed.stderr and "Traceback" not in failed.stderr
    assert full_state(app_db) == before

    args = ("restore", "database", "latest", "--yes", "--no-safety-backup", "--no-privileges")
    done = db_project.run(*args)
    assert done.returncode == 0, done.stderr
    assert "Row counts match the backup" in done.stdout
    assert "without the backup's privileges" in done.stdout + done.stderr
    with psycopg.connect(app_db, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (500,)


def test_the_database_options_are_refused_for_files(project: Project) -> None:
    result = project.run("restore", "files", "latest", "--drop-dependents", "--yes")
    assert result.returncode == 2
    assert "for the database only" in result.stderr


SNEAK_A_ROW_IN = (
    "CREATE SCHEMA guard",
    "CREATE FUNCTION guard.sneak() RETURNS event_trigger LANGUAGE plpgsql AS $$ "
    "BEGIN IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() "
    "WHERE command_tag = 'CREATE TABLE' AND object_identity = 'audit.log') THEN "
    "INSERT INTO audit.log (id, what) VALUES (999999, 'sneaked in'); END IF; END $$",
    "CREATE EVENT TRIGGER sneak ON ddl_command_end EXECUTE FUNCTION guard.sneak()",
)


def test_a_restore_whose_row_counts_differ_exits_6(db_project: Project, app_db: str) -> None:
    """Something on the server (here an event trigger) adds a row while the restore loads
    the data: the restore must not report success."""
    assert db_project.run("backup", "database").returncode == 0
    execute(app_db, *SNEAK_A_ROW_IN)
    result = db_project.run("restore", "database", "latest", "--yes", "--no-safety-backup")
    assert result.returncode == 6, result.stderr
    assert "audit.log 801 rows (backup had 800)" in result.stderr
    assert "Traceback" not in result.stderr
