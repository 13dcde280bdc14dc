"""PostgreSQL's own regression database, restored every way cosmic-backup restores.

The dump in tests/data (made by tests/data/make_regression_dump.sh: pg_regress's whole
parallel schedule, 684 tables of every kind PostgreSQL 15 has) restores with plain
pg_restore without an error. Every path of ours must restore it too, with exactly the
content plain pg_restore gives, and the restore test must pass it: a backup tool restores
whatever its database can hold, and its checks never cry wolf.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Project
from tests.integration.database.conftest import PostgresServer

DATA = Path(__file__).parents[2] / "data"
DUMP = DATA / "regression-pg15.dump"
# The dump's C functions name this folder (tests/data/regress/README.md says why).
LIBRARY_FOLDER = Path("/tmp/cb-regress")
KEY = "regression database passphrase 0123456789"

pytestmark = pytest.mark.slow


def _tool(server: PostgresServer, name: str) -> str:
    return str(server.bin_dir / name)


def _env(server: PostgresServer) -> dict[str, str]:
    return {"PGPASSWORD": server.password, "PATH": "/usr/bin:/bin"}


def schema_and_data(server: PostgresServer, dbname: str) -> str:
    """The database as plain SQL, less the per-run \\restrict key of newer pg_dumps."""
    out = subprocess.run(
        [_tool(server, "pg_dump"), "-Fp", "--no-password", server.url(dbname, password="")],
        capture_output=True,
        text=True,
        check=True,
        env=_env(server),
    ).stdout
    return "\n".join(line for line in out.splitlines() if not line.startswith("\\"))


def _pg_restore(server: PostgresServer, dbname: str, *options: str) -> float:
    """Plain pg_restore of the dump into `dbname`; the seconds it took."""
    dsn = server.url(dbname, password="")  # the password in PGPASSWORD, not in argv
    argv = [_tool(server, "pg_restore"), "--no-password", "--exit-on-error", *options]
    started = time.monotonic()
    subprocess.run(
        [*argv, "-d", dsn, str(DUMP)],
        check=True,
        env=_env(server),
    )
    return time.monotonic() - started


def build_regress_libraries(server: PostgresServer) -> None:
    """regress.so from the vendored source, with the server's own headers, and the two
    contrib libraries the server ships, into the folder the dump names."""
    pg_config = _tool(server, "pg_config")
    headers = Path(
        subprocess.run(
            [pg_config, "--includedir-server"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    if not (headers / "postgres.h").exists():
        pytest.fail(
            f"{headers}/postgres.h is missing: install the server headers "
            "(apt-get install postgresql-server-dev-15 pinned to the server's version)"
        )
    server_libraries = Path(
        subprocess.run(
            [pg_config, "--pkglibdir"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    LIBRARY_FOLDER.mkdir(exist_ok=True)
    # Built beside and renamed, so a concurrent run never loads a half-written library.
    partial = LIBRARY_FOLDER / f".regress-{os.getpid()}.so"
    source = DATA / "regress" / "regress.c"
    subprocess.run(
        ["gcc", "-O2", "-fPIC", "-shared", f"-I{headers}", str(source), "-o", str(partial)],
        check=True,
    )
    os.replace(partial, LIBRARY_FOLDER / "regress.so")
    for name in ("autoinc.so", "refint.so"):
        shutil.copyfile(server_libraries / name, LIBRARY_FOLDER / f".{name}-{os.getpid()}")
        os.replace(LIBRARY_FOLDER / f".{name}-{os.getpid()}", LIBRARY_FOLDER / name)
    for built in LIBRARY_FOLDER.iterdir():
        built.chmod(0o755)


@pytest.fixture(scope="module")
def regression(postgres: PostgresServer) -> tuple[str, str, float]:
    """A database restored from the dump by plain pg_restore; the SQL that plain
    `pg_restore --no-owner` gives (our restores run as the target's user, see
    docs/database.md); plain pg_restore's time."""
    if postgres.major < 15:
        pytest.fail("the regression dump needs a PostgreSQL 15 or newer test server")
    build_regress_libraries(postgres)
    name = postgres.create_database("regression")
    seconds = _pg_restore(postgres, name)
    reference = postgres.create_database("regnoowner")
    _pg_restore(postgres, reference, "--no-owner")
    no_owner = schema_and_data(postgres, reference)
    # The one difference --no-owner makes: the table pg_regress gives to pg_database_owner.
    changed = set(schema_and_data(postgres, name).splitlines()) ^ set(no_owner.splitlines())
    assert {line for line in changed if "datdba_only" in line} == changed
    return name, no_owner, seconds


@pytest.fixture
def reg_project(project: Project, postgres: PostgresServer, regression) -> Project:
    template, _, _ = regression
    source = postgres.create_database("regapp", template=template)
    project.env.update({"DATABASE_URL": postgres.url(source), "BACKUP_KEY": KEY})
    return project


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_regression_database_restores_every_way_with_plain_pg_restores_content(
    reg_project: Project, postgres: PostgresServer, regression
) -> None:
    _, expected, plain_seconds = regression
    source = reg_project.env["DATABASE_URL"].rsplit("/", 1)[1]
    _ok(reg_project.run("backup", "database"))

    _ok(reg_project.run("verify", "--restore-test", "database", "latest"))

    started = time.monotonic()
    _ok(reg_project.run("restore", "database", "latest", "--yes"))
    in_place_seconds = time.monotonic() - started
    assert schema_and_data(postgres, source) == expected

    other = postgres.create_database("reginto")
    _ok(reg_project.run("restore", "database", "latest", "--yes", "--into", postgres.url(other)))
    assert schema_and_data(postgres, other) == expected

    _ok(reg_project.run("restore", "database", "latest", "--yes", "--jobs", "2"))
    assert schema_and_data(postgres, source) == expected

    print(  # the figures the closing note quotes (pytest -s shows them)
        f"regression database: plain pg_restore {plain_seconds:.2f} s, "
        f"cosmic-backup in place {in_place_seconds:.2f} s"
    )
