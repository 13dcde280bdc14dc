"""A throwaway local PostgreSQL server in a temporary folder.

Used to prove backups restorable without touching production (restore tests), and by
the test suite and benchmarks. It uses the machine's server binaries
(/usr/lib/postgresql/N/bin) when present, else those the `pgserver` package ships.
PostgreSQL refuses to run as root, so under root the server runs as the `postgres` user
(or `nobody`). It listens on 127.0.0.1 with password (SCRAM) authentication.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import pwd
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from cosmic_backup.errors import OperationFailed
from cosmic_backup.process import run_captured


def server_bin_dir() -> Path:
    def major(path: Path) -> int:
        name = path.parent.parent.name
        return int(name) if name.isdigit() else 0

    system = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=major)
    if system:
        return system[-1].parent
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    raise OperationFailed(
        "No PostgreSQL server binaries were found for a scratch server; install "
        "postgresql (or pip install pgserver)."
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> tuple[list[str], int | None, int | None]:
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
    raise OperationFailed("Running as root without a postgres or nobody user to run a server.")


@dataclass
class ScratchServer:
    port: int
    bin_dir: Path
    password: str
    _names: Iterator[int] = field(default_factory=itertools.count)

    def url(
        self, dbname: str = "postgres", user: str = "postgres", password: str | None = None
    ) -> str:
        secret = self.password if password is None else password
        return f"postgresql://{user}:{secret}@127.0.0.1:{self.port}/{dbname}"

    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.url(dbname), autocommit=True)

    def create_database(self, prefix: str = "app", template: str | None = None) -> str:
        """A new database; a copy of `template` (fast: files are copied) when given."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with self.admin() as conn:
            conn.execute(query)
        return name

    @property
    def major(self) -> int:
        with self.admin() as conn:
            row = conn.execute("SHOW server_version_num").fetchone()
            return int(row[0]) // 10000 if row else 0


@contextmanager
def scratch_server(*, fast: bool = True) -> Iterator[ScratchServer]:
    """Start a server; stop it and delete its files on exit. `fast` trades durability."""
    bin_dir = server_bin_dir()
    prefix, uid, gid = _run_as()
    base = Path(tempfile.mkdtemp(prefix="cosmic-pg-"))
    data, sockets, pwfile = base / "data", base / "sockets", base / "pwfile"
    sockets.mkdir()
    password = secrets.token_hex(16)
    pwfile.write_text(password + "\n")
    if uid is not None and gid is not None:
        for path in (base, sockets, pwfile):
            os.chown(path, uid, gid)
    port = free_port()
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=50"
    if fast:
        options += " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres"]
    initdb += ["--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C"]
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        _checked([*prefix, *initdb])
        _checked([*prefix, *pg_ctl, "-o", options, "-l", str(base / "server.log"), "-w", "start"])
        yield ScratchServer(port, bin_dir, password)
    finally:
        run_captured([*prefix, *pg_ctl, "-m", "immediate", "stop"], timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def _checked(argv: list[str]) -> None:
    result = run_captured(argv, timeout=120)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise OperationFailed(f"The scratch server could not start: {' | '.join(tail)}.")
