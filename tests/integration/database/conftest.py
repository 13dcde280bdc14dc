"""A real PostgreSQL server for the database tests, started by the suite in a temp folder.

It uses the machine's server binaries (/usr/lib/postgresql/N/bin) when present, else the
ones the `pgserver` package ships. PostgreSQL refuses to run as root, so under root the
server runs as the `postgres` user (or `nobody`). It listens on 127.0.0.1 with password
(SCRAM) authentication, so tests exercise the same path as a remote database.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

SUPERUSER_PASSWORD = "pg-super-Secret-71"


def server_bin_dir() -> Path:
    system = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if system:
        return system[-1].parent
    import pgserver

    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    port: int
    bin_dir: Path
    _names: Iterator[int] = field(default_factory=itertools.count)

    def url(
        self, dbname: str = "postgres", user: str = "postgres", password: str = SUPERUSER_PASSWORD
    ) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{dbname}"

    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.url(dbname), autocommit=True)

    def create_database(self, prefix: str = "app") -> str:
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    @property
    def major(self) -> int:
        with self.admin() as conn:
            return int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000


def _runner() -> tuple[list[str], int | None, int | None]:
    if os.geteuid() != 0:
        return [], None, None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return (
            ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"],
            entry.pw_uid,
            entry.pw_gid,
        )
    raise RuntimeError("running as root without a postgres or nobody user to run the server")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bin_dir = server_bin_dir()
    prefix, uid, gid = _runner()
    base = Path(tempfile.mkdtemp(prefix="cosmic-pg-"))
    data, sockets = base / "data", base / "sockets"
    sockets.mkdir()
    pwfile = base / "pwfile"
    pwfile.write_text(SUPERUSER_PASSWORD + "\n")
    if uid is not None:
        for path in (base, sockets, pwfile):
            os.chown(path, uid, gid)
    port = free_port()
    run = {"check": True, "capture_output": True, "text": True}
    subprocess.run(
        [
            *prefix,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--locale=C",
        ],
        **run,
    )
    options = (
        f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c full_page_writes=off -c synchronous_commit=off -c max_connections=50"
    )
    subprocess.run(
        [
            *prefix,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(base / "server.log"),
            "-w",
            "start",
        ],
        **run,
    )
    try:
        yield PostgresServer(port, bin_dir)
    finally:
        subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)
