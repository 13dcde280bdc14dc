"""`restore database --jobs N`, through the real CLI on a real server: pg_restore -j N into
a new database, its row counts checked, then the names swapped in one transaction; the
fallback to the one-transaction restore when the server or the role does not allow it."""

from __future__ import annotations

import pytest

from tests.conftest import Project
from tests.integration.database.appdb import execute, full_state, scalar
from tests.integration.database.conftest import PostgresServer

KEY = "jobs restore passphrase 0123456789"
RESTORE = ("restore", "database", "latest", "--yes", "--no-safety-backup")


def databases(server: PostgresServer, like: str) -> list[str]:
    with server.admin() as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", [f"{like}%"]
        ).fetchall()
    return [row[0] for row in rows]


def catalog_row(server: PostgresServer, name: str) -> tuple[int, str | None] | None:
    """The oid and comment of database `name`, or None when there is none by that name."""
    with server.admin() as conn:
        return conn.execute(
            "SELECT oid::int, shobj_description(oid, 'pg_database') FROM pg_database "
            "WHERE datname = %s",
            [name],
        ).fetchone()


def dbname(url: str) -> str:
    return url.rsplit("/", 1)[1]


@pytest.fixture
def db_project(project: Project, app_db: str) -> Project:
    project.env.update({"DATABASE_URL": app_db, "BACKUP_KEY": KEY})
    assert project.run("backup", "database").returncode == 0
    return project


def test_jobs_2_restores_the_same_content_under_the_same_name(
    db_project: Project, app_db: str, postgres: PostgresServer
) -> None:
    # Database-level settings and comments live outside the dump (set after the backup):
    # the new database must carry them over, or the app would find another search_path.
    execute(
        app_db,
        f'ALTER DATABASE {dbname(app_db)} SET search_path = billing, "$user", public',
        f"COMMENT ON DATABASE {dbname(app_db)} IS 'the app''s own'",
        f"ALTER DATABASE {dbname(app_db)} CONNECTION LIMIT 1",
    )
    expected = full_state(app_db)
    execute(app_db, "DELETE FROM users WHERE id > 10", "CREATE TABLE added_since (id int)")
    before = catalog_row(postgres, dbname(app_db))

    result = db_project.run(*RESTORE, "--jobs", "2")
    assert result.returncode == 0, result.stderr
    assert "Row counts match the backup" in result.stdout
    assert "2 parallel jobs" in result.stdout + result.stderr
    assert full_state(app_db) == expected  # the same name now holds the backup's content
    assert scalar(app_db, "SELECT to_regclass('public.added_since')") is None
    after = catalog_row(postgres, dbname(app_db))
    assert before and after and after[0] != before[0]  # a new database took the name
    assert databases(postgres, f"{dbname(app_db)}_cosmic_") == []
    # What lives outside the dump came along: the database's settings and comment.
    assert scalar(app_db, "SHOW search_path") == 'billing, "$user", public'
    assert after[1] == "the app's own"
    limit = "SELECT datconnlimit FROM pg_database WHERE datname = current_database()"
    assert scalar(app_db, limit) == 1
    assert not list(db_project.backups.joinpath("database").glob(".dump-*"))


def test_a_directory_format_backup_restores_with_jobs_too(
    project: Project, app_db: str, postgres: PostgresServer
) -> None:
    """A `backup database --jobs 2` (a sealed directory-format dump) is unpacked into the
    private folder and restored with pg_restore -j 2, BACKUP_DB_JOBS asking for it."""
    project.env.update({"DATABASE_URL": app_db, "BACKUP_KEY": KEY, "BACKUP_DB_JOBS": "2"})
    assert project.run("backup", "database").returncode == 0
    expected = full_state(app_db)
    execute(app_db, "DELETE FROM users WHERE id > 10")

    result = project.run(*RESTORE)
    assert result.returncode == 0, result.stderr
    assert "2 parallel jobs" in result.stdout + result.stderr
    assert "Row counts match the backup" in result.stdout
    assert full_state(app_db) == expected
    assert databases(postgres, f"{dbname(app_db)}_cosmic_") == []
    assert not list(project.backups.joinpath("database").glob(".dump-*"))


def test_into_url_swaps_the_database_the_url_names(
    db_project: Project, app_db: str, postgres: PostgresServer
) -> None:
    expected = full_state(app_db)
    other = postgres.create_database("into")
    execute(postgres.url(other), "CREATE TABLE stale (id int)")
    # The password in PGPASSWORD, not in the --into URL (argv). The database holds a
    # table and is not the backup's: replacing it takes --from-other-database.
    url = f"postgresql://postgres@127.0.0.1:{postgres.port}/{other}"
    args = (*RESTORE, "--into", url, "--jobs", "2", "--from-other-database")
    result = db_project.run(*args, env={"PGPASSWORD": postgres.password})
    assert result.returncode == 0, result.stderr
    assert "2 parallel jobs" in result.stdout
    assert full_state(postgres.url(other)) == expected
    assert databases(postgres, f"{other}_cosmic_") == []
    assert full_state(app_db) == expected  # the configured database was not touched


def test_jobs_is_checked_before_anything_runs(project: Project) -> None:
    for args, said in [
        (("restore", "database", "latest", "--jobs", "0"), "from 1 to 64"),
        (("restore", "files", "latest", "--jobs", "2"), "for the database only"),
        (("restore", "config", "latest", "--keep-old"), "for the database only"),
    ]:
        result = project.run(*args, "--yes")
        assert result.returncode == 2, result.stderr
        assert said in result.stderr and "Traceback" not in result.stderr
