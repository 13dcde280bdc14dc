"""`restore --jobs` for the owner it documents: a role with CREATEDB that owns the target
and is not a superuser (issue 18 item 6); and the fallback that the server forces at run
time, said on screen whether the one-transaction restore then succeeds or fails."""

from __future__ import annotations

import os

import pytest

from tests.conftest import Project
from tests.integration.database.appdb import execute, scalar
from tests.integration.database.conftest import PostgresServer
from tests.integration.database.test_jobs_restore import catalog_row, databases, dbname
from tests.integration.database.test_jobs_restore_safety import JOBS, backed_up

PASSWORD = "createdb-secret-1"
REFUSED = "--jobs 2 could not create the new database (permission denied for tablespace"


def createdb_owner(postgres: PostgresServer, prefix: str, tablespace: str = "") -> str:
    """The URL of a new database owned by a new CREATEDB role that is not superuser."""
    role = f"{prefix}_{os.getpid()}"
    name = postgres.create_database(prefix)
    with postgres.admin() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN CREATEDB NOSUPERUSER PASSWORD '{PASSWORD}'")
        conn.execute(f"ALTER DATABASE {name} OWNER TO {role}")
        if tablespace:
            conn.execute(f"ALTER DATABASE {name} SET TABLESPACE {tablespace}")
    url = postgres.url(name, user=role, password=PASSWORD)
    execute(url, "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 300) g")
    return url


def test_a_createdb_owner_restores_with_jobs_into_a_new_database(
    project: Project, postgres: PostgresServer
) -> None:
    url = createdb_owner(postgres, "cdbowner")
    assert scalar(url, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
    backed_up(project, url)
    execute(url, "DELETE FROM t WHERE id > 10")
    before = catalog_row(postgres, dbname(url))

    result = project.run(*JOBS)
    assert result.returncode == 0, result.stderr
    said = result.stdout + result.stderr
    assert "Restored with 2 parallel jobs into a new database" in result.stdout, said
    assert "one transaction instead" not in said
    assert scalar(url, "SELECT count(*) FROM t") == 300
    after = catalog_row(postgres, dbname(url))
    assert before and after and after[0] != before[0]  # a new database took the name
    assert databases(postgres, f"{dbname(url)}_cosmic_") == []


@pytest.fixture
def tablespace(postgres: PostgresServer) -> str:
    """A tablespace (a folder of the server's user) that no role but postgres may use."""
    folder = postgres.folder / f"ts_{os.getpid()}"
    folder.mkdir()
    owner = postgres.folder.stat()
    os.chown(folder, owner.st_uid, owner.st_gid)
    name = f"cosmic_ts_{os.getpid()}"
    with postgres.admin() as conn:
        conn.execute(f"CREATE TABLESPACE {name} LOCATION '{folder}'")
    return name


def test_a_new_database_the_server_refuses_falls_back_and_says_so_on_screen(
    project: Project, postgres: PostgresServer, tablespace: str
) -> None:
    """The target lives in a tablespace this role may not create in: CREATE DATABASE is
    refused only when it runs, and the one-transaction restore takes over."""
    url = createdb_owner(postgres, "cdbts", tablespace)
    reader = f"cdbts_reader_{os.getpid()}"
    execute(postgres.url(), f"CREATE ROLE {reader}")
    execute(url, f"CREATE POLICY p ON t TO {reader}")
    backed_up(project, url)
    execute(url, "DELETE FROM t WHERE id > 10")

    result = project.run(*JOBS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(REFUSED) == 1, result.stdout + result.stderr
    assert scalar(url, "SELECT count(*) FROM t") == 300

    # When the one-transaction restore then fails, its error still says why it ran.
    execute(url, "DELETE FROM t WHERE id > 10", "DROP POLICY p ON t")
    execute(postgres.url(), f"DROP ROLE {reader}")
    failed = project.run(*JOBS)
    assert failed.returncode == 1, failed.stderr
    assert REFUSED in failed.stderr and "Traceback" not in failed.stderr
    assert f'role "{reader}" does not exist' in failed.stderr
    assert scalar(url, "SELECT count(*) FROM t") == 10  # unchanged
    assert databases(postgres, f"{dbname(url)}_cosmic_") == []
