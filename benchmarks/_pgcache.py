"""The benchmark database, built once and kept between runs in a cache folder.

Filling 1.3 GB takes minutes; starting a server on data already there takes a second or
two. So the database lives in CACHE (default /var/tmp/cosmic-bench-pg-UID-SIZE, one per
size, outside the throwaway sandbox whose leftovers the next run of the tool removes):

  CACHE/data/        the server's PGDATA (owned by the postgres user under root)
  CACHE/sockets/     its Unix sockets
  CACHE/server.log   its log
  CACHE/bench.json   what was built: shape version, size asked for, size on disk, the
                     server's password (a bench-only server on 127.0.0.1, stopped after)

One benchmark uses a cache at a time (a second one waits for CACHE.lock). bench.json is
written last, after the fill: a cache without it (a fill interrupted), or of another
size, shape or PostgreSQL major version, is built again from scratch; `--refill` forces
it. The server runs only while a benchmark runs (stopped cleanly at the end; one left
running by a killed run is stopped first), and databases a killed run left are dropped.

The data has the issue's shape: posts (text), users (jsonb profile, bytea), an audit
table (jsonb detail), in the issue's proportions (3 M posts : 750 k users : 3 M audit
rows at 1.3 GB), about as compressible as that app's dump (zlib 5.6x; the issue's 6.3x).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from cosmic_backup.components.database.throwaway import (
    ThrowawayServer,
    _run_as,
    find_server,
    free_port,
)

DBNAME = "bench"
KEEP = ("postgres", "template0", "template1", DBNAME)
# Rows per MiB on disk, calibrated (64 MiB and 1270 MiB fills) so the database comes out
# at about --size MiB: 3 M posts, 750 k users and 3 M audit rows at 1270 MiB.
POSTS_PER_MIB = 2360
USERS_PER_MIB = POSTS_PER_MIB // 4
AUDIT_PER_MIB = POSTS_PER_MIB
# Fast and throwaway, like the tool's own throwaway server (timings comparable with the
# earlier runs): no fsync, so the disk's noise stays out of the restore timings.
OPTIONS = "-c fsync=off -c full_page_writes=off -c synchronous_commit=off -c max_connections=50"

SENTENCES = [
    "Saw the comet again tonight from the ridge, clearer than last week.",
    "Does anyone know a good star chart app that works offline in the desert?",
    "Our meetup moves to the planetarium on Thursday, doors open at seven.",
    "New photos of the nebula are up in the gallery, stacked from forty frames.",
    "The telescope club is selling two old eyepieces, message me if interested.",
    "Clouds all weekend again. Spent the time cleaning mirrors and reading.",
    "Tip: let the optics cool for half an hour before you start observing.",
    "Thanks everyone for the warm welcome, first post here after years of lurking.",
]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64)", "Mozilla/5.0 (Macintosh)", "okhttp/4.12", "curl/8"]


def default_cache(mib: int) -> Path:
    """One folder per size: a 5 GB run does not throw the 1.3 GB database away."""
    return Path("/var/tmp") / f"cosmic-bench-pg-{os.geteuid()}-{mib}"


Statement = tuple[str, tuple[object, ...]]


def fill_statements(mib: int) -> list[Statement]:
    """The SQL that builds the tables for `mib` MiB: generate_series, one pass each."""
    posts, users, audit = mib * POSTS_PER_MIB, mib * USERS_PER_MIB, mib * AUDIT_PER_MIB
    return [
        (
            "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, name text, "
            "profile jsonb, avatar bytea, created_at timestamptz)",
            (),
        ),
        # The avatar: 64 bytes that do not compress (a thumbnail hash, a public key).
        (
            "INSERT INTO users SELECT g, 'user' || g || '@example.com', "
            "'Member ' || (g %% 9973), jsonb_build_object('theme', "
            "(ARRAY['dark','light'])[1 + g %% 2], 'locale', (ARRAY['en','de','fr','es'])"
            "[1 + g %% 4], 'bio', (%s::text[])[1 + g %% 8], 'newsletter', g %% 3 = 0, "
            "'score', g %% 1000), sha256(g::text::bytea) || sha256((-g)::text::bytea), "
            "timestamptz '2020-01-01' + g * interval '1 minute' "
            "FROM generate_series(1, %s) g",
            (SENTENCES, users),
        ),
        (
            "CREATE TABLE posts (id bigint PRIMARY KEY, user_id bigint NOT NULL, title text, "
            "body text, likes int, created_at timestamptz)",
            (),
        ),
        (
            "INSERT INTO posts SELECT g, 1 + g %% %s, 'Post ' || g, "
            "(%s::text[])[1 + g %% 8] || ' #' || left(md5(g::text), 16), "
            "g %% 311, timestamptz '2020-01-01' + g * interval '10 seconds' "
            "FROM generate_series(1, %s) g",
            (users, SENTENCES, posts),
        ),
        ("CREATE INDEX posts_user ON posts (user_id)", ()),
        (
            "CREATE TABLE audit (id bigint PRIMARY KEY, at timestamptz, actor bigint, "
            "action text, entity text, entity_id bigint, detail jsonb)",
            (),
        ),
        (
            "INSERT INTO audit SELECT g, timestamptz '2020-01-01' + g * interval '10 seconds', "
            "1 + g %% %s, (ARRAY['create','update','delete','login'])[1 + g %% 4], "
            "(ARRAY['post','user','comment'])[1 + g %% 3], g %% %s, jsonb_build_object("
            "'ip', '10.' || (g %% 256) || '.' || (g / 256 %% 256) || '.' || (g / 65536 %% 256), "
            "'agent', (%s::text[])[1 + g %% 4], 'ok', g %% 17 <> 0) "
            "FROM generate_series(1, %s) g",
            (users, posts, AGENTS, audit),
        ),
        ("VACUUM ANALYZE", ()),
    ]


class Cache:
    """The cache folder and the commands that run its server (as postgres under root)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.sockets = folder / "sockets"
        self.meta_file = folder / "bench.json"
        self.prefix, self.uid, self.gid = _run_as()
        self.tool = find_server(0, os.environ.get("BACKUP_PG_BIN_DIR"))
        self.bin_dir = Path(self.tool.path).parent

    def pg_ctl(self, *args: str) -> list[str]:
        return [*self.prefix, str(self.bin_dir / "pg_ctl"), "-D", str(self.data), *args]

    def meta(self) -> dict[str, object]:
        try:
            return dict(json.loads(self.meta_file.read_text()))
        except (OSError, ValueError):
            return {}

    def stop(self) -> None:
        """Stop the server if one runs on this data (ours, or one a killed run left)."""
        if not self.data.is_dir():
            return
        status = subprocess.run(self.pg_ctl("status"), capture_output=True, check=False)
        if status.returncode == 0:
            _run(self.pg_ctl("-m", "fast", "-w", "stop"))

    def start(self, password: str) -> ThrowawayServer:
        port = free_port()
        options = f"-p {port} -k {self.sockets} -c listen_addresses=127.0.0.1 {OPTIONS}"
        log = str(self.folder / "server.log")
        _run(self.pg_ctl("-o", options, "-l", log, "-w", "start"))
        return ThrowawayServer(port, self.bin_dir, password, self.folder, self.tool.version)

    def create(self) -> str:
        """An empty cluster in a new cache folder; returns its password."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(mode=0o700, parents=True)
        self.sockets.mkdir(mode=0o700)
        password = secrets.token_hex(16)
        pwfile = self.folder / "pwfile"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        if self.uid is not None and self.gid is not None:
            for path in (self.folder, self.sockets, pwfile):
                os.chown(path, self.uid, self.gid)
        initdb = [*self.prefix, str(self.bin_dir / "initdb"), "-D", str(self.data)]
        initdb += ["-U", "postgres", "--auth=scram-sha-256", f"--pwfile={pwfile}"]
        _run([*initdb, "-E", "UTF8", "--locale=C"])
        pwfile.unlink()
        return password


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{argv[-1]} failed: {(result.stderr or result.stdout).strip()}")


def _fill(server: ThrowawayServer, mib: int) -> int:
    with server.admin() as conn:
        conn.execute(f"CREATE DATABASE {DBNAME}")
    with server.admin(DBNAME) as conn:
        for statement, params in fill_statements(mib):
            conn.execute(statement, params or None)
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


def _drop_leftovers(server: ThrowawayServer) -> None:
    """Restore targets a killed run did not drop: nothing but the source is kept."""
    with server.admin() as conn:
        names = [row[0] for row in conn.execute("SELECT datname FROM pg_database")]
    for name in names:
        if name not in KEEP:
            server.drop_database(name)


BENCH_KEY = "bench key " * 4  # the throwaway roots' passphrase, not a secret


def client_env(server: ThrowawayServer, database: str) -> dict[str, str]:
    """The environment of ours and the plain tools for `database`: the password in the
    environment (libpq's PGPASSWORD), never in argv."""
    return {
        **os.environ,
        "PGHOST": "127.0.0.1",
        "PGPORT": str(server.port),
        "PGUSER": "postgres",
        "PGPASSWORD": server.password,
        "BACKUP_KEY": BENCH_KEY,
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{server.port}/{database}",
    }


@contextmanager
def bench_server(
    folder: Path, mib: int, refill: bool = False
) -> Iterator[tuple[ThrowawayServer, str, int]]:
    """(server, source database, its size in bytes): the cached one, or built now."""
    cache = Cache(folder)
    lock = _lock(folder)
    meta = cache.meta()
    # The SQL itself is the shape: a cache filled by other statements is built again.
    shape = hashlib.sha256(repr(fill_statements(1)).encode()).hexdigest()[:16]
    wanted = {"shape": shape, "mib": mib, "major": cache.tool.major}
    reuse = not refill and all(meta.get(k) == v for k, v in wanted.items())
    try:
        if reuse:
            cache.stop()  # one a killed run left running
            server = cache.start(str(meta["password"]))
            _drop_leftovers(server)
            size = int(str(meta["bytes"]))
            print(f"reusing the {size / 2**20:.0f} MiB database in {folder}", flush=True)
        else:
            password = cache.create()
            server = cache.start(password)
            began = time.perf_counter()
            size = _fill(server, mib)
            print(
                f"filled {size / 2**20:.0f} MiB in {time.perf_counter() - began:.0f} s "
                f"(kept in {folder}; the next run reuses it)",
                flush=True,
            )
            record = {**wanted, "bytes": size, "password": password}
            partial = cache.meta_file.with_suffix(".tmp")
            partial.write_text(json.dumps(record))
            partial.chmod(0o600)
            partial.replace(cache.meta_file)
        yield server, DBNAME, size
    finally:
        with contextlib.suppress(SystemExit):
            cache.stop()
        lock.close()


def _lock(folder: Path) -> IO[bytes]:
    """One benchmark at a time on a cache: a second one waits (flock, freed at exit)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    handle = open(folder.parent / f"{folder.name}.lock", "wb")  # noqa: SIM115 - held open
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"waiting for the other benchmark using {folder}", flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
    return handle
