"""`cosmic-backup demo`: a newcomer's first minute, on an embedded default.

In a new folder it makes a small, realistic app (a PostgreSQL database on a throwaway
server, an uploads folder with a few images, a `.env`), then runs the main job as the
commands a user would type: back up, list, the whole-app restore drill, damage the app,
restore it, and show that every row count and file hash is back.

Each command runs as its own process (`python -m cosmic_backup -C APP ...`), exactly as
typed, with an environment scrubbed of the operator's own settings (BACKUP_*, PG*,
DATABASE_URL), so the demo reads and writes nothing outside its folder; the throwaway
servers live in their own temporary folders and are removed at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from cosmic_backup.errors import OperationFailed, UsageError
from cosmic_backup.process import run_shown

COMMAND_TIMEOUT = 600  # seconds; each step takes a few
APP_TABLES = ("public.users", "public.posts", "public.comments")
# A small app's schema: an enum, jsonb, foreign keys, an index, a view and a large object.
APP_SCHEMA = """
CREATE TYPE role AS ENUM ('reader', 'writer', 'admin');
CREATE TABLE users (
    id serial PRIMARY KEY, email text UNIQUE NOT NULL, role role NOT NULL DEFAULT 'reader',
    profile jsonb NOT NULL DEFAULT '{}', avatar_oid oid, created_at timestamptz DEFAULT now()
);
CREATE TABLE posts (
    id serial PRIMARY KEY, author_id integer NOT NULL REFERENCES users(id),
    title text NOT NULL, body text, meta jsonb, published_at timestamptz DEFAULT now()
);
CREATE TABLE comments (
    id serial PRIMARY KEY, post_id integer NOT NULL REFERENCES posts(id) ON DELETE CASCADE,
    user_id integer REFERENCES users(id), body text NOT NULL
);
CREATE INDEX comments_post_idx ON comments (post_id);
CREATE VIEW post_stats AS
    SELECT p.id, p.title, count(c.id) AS comments FROM posts p
    LEFT JOIN comments c ON c.post_id = p.id GROUP BY p.id;
INSERT INTO users (email, role, profile)
SELECT 'user' || g || '@example.com', (ARRAY['reader', 'writer', 'admin'])[1 + g % 3]::role,
       jsonb_build_object('name', 'User ' || g, 'newsletter', g % 2 = 0)
FROM generate_series(1, 300) g;
INSERT INTO posts (author_id, title, body, meta)
SELECT 1 + g % 300, 'Post ' || g, repeat('Lorem ipsum ', 20 + g % 30),
       jsonb_build_object('tags', jsonb_build_array('t' || g % 7, 'space'), 'views', g * 13)
FROM generate_series(1, 1200) g;
INSERT INTO comments (post_id, user_id, body)
SELECT 1 + g % 1200, 1 + g % 300, 'Comment ' || g FROM generate_series(1, 3500) g;
UPDATE users SET avatar_oid = lo_from_bytea(0, '\\x89504e470d0a1a0a'::bytea) WHERE id = 1;
"""
IMAGES = {"logo.png": (64, 32), "avatars/alice.png": (48, 48), "avatars/bob.png": (40, 40)}
ENV_FILE = "SECRET_KEY=demo-not-secret\nDEBUG=false\nMAIL_HOST=smtp.example.com\n"


@dataclass
class DemoResult:
    folder: Path
    kept: bool
    rows: dict[str, int]
    files: dict[str, str]
    review_folder: Path | None
    seconds: float
    steps: list[str] = field(default_factory=list)
    server_version: str = ""
    report: Path | None = None  # the HTML report, when the [report] extra is installed


class Demo:
    """One run: the app, the environment its commands run in, and how they are shown."""

    def __init__(self, folder: Path, show: Callable[[str], None], out: IO[str] | None):
        self.folder, self.show, self.out = folder, show, out
        self.app = folder / "app"
        self.env: dict[str, str] = {}
        self.steps: list[str] = []

    def command(self, *args: str, check: bool = True) -> int:
        """Run `cosmic-backup ARGS` in the app as the user would, its output shown."""
        shown = "cosmic-backup " + " ".join(shlex.quote(a) for a in args)
        self.steps.append(shown)
        self.show(f"\n$ {shown}")
        argv = [sys.executable, "-m", "cosmic_backup", "-C", str(self.app), *args]
        # In exactly the demo's environment: its commands must not see the operator's
        # BACKUP_* settings (a BACKUP_DIR elsewhere).
        errors: list[str] = []
        code = run_shown(
            argv, env=self.env, cwd=self.app, out=self.out, timeout=COMMAND_TIMEOUT, errors=errors
        )
        if check and code != 0:
            # The command said why in its own sentence (a server's error is the server's,
            # not a fault of the demo); only a command that could not say why is ours.
            why = errors[-1] if errors else "it printed no error (see its output above)"
            raise OperationFailed(f"The demo stopped: `{shown}` failed: {why.rstrip('.')}.")
        return code

    def narrate(self, shown: str) -> None:
        self.steps.append(shown)
        self.show(f"\n$ {shown}")


def run_demo(
    keep: Path | None, show: Callable[[str], None], out: IO[str] | None = None
) -> DemoResult:
    from cosmic_backup.components.database.throwaway import throwaway_server

    began = time.monotonic()
    with _folder(keep) as folder, throwaway_server() as server:
        demo = Demo(folder, show, out)
        show(f"A throwaway PostgreSQL {server.version} started; the demo app is in {demo.app}.")
        url = server.url(server.create_database("app"))
        _make_app(demo.app, url)
        demo.env = _environment(url)
        before_rows, before_files = _row_counts(url), _file_hashes(demo.app)
        demo.command("backup", "all")
        demo.command("list")
        demo.command("verify", "--restore-test", "all")
        _damage(demo, url)
        demo.command("restore", "database", "latest", "--yes")
        demo.command("restore", "files", "latest", "--yes")
        demo.command("restore", "config", "latest", "--yes")
        rows, files = _row_counts(url), _file_hashes(demo.app)
        _check_back(before_rows, rows, before_files, files)
        review = _review_folder(demo.app)
        report = _report(demo, keep)
        _finish(demo, rows, files, review, keep)
        if report is not None:
            show(f"The HTML report of these backups: {report} (open it in a browser).")
        return DemoResult(
            folder,
            keep is not None,
            rows,
            files,
            review,
            time.monotonic() - began,
            demo.steps,
            server.version,
            report,
        )


@contextlib.contextmanager
def _folder(keep: Path | None) -> Iterator[Path]:
    if keep is None:
        folder = Path(tempfile.mkdtemp(prefix="cosmic-backup-demo-"))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    if keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
        raise UsageError(f"{keep} is not a new or empty folder; give --keep one that is.")
    keep.mkdir(parents=True, exist_ok=True)
    yield keep.resolve()


def _environment(url: str) -> dict[str, str]:
    """The operator's environment without their backup settings: only the demo's."""
    scrubbed = ("BACKUP_", "DATABASE_URL", "PG", "RETENTION_DAYS", "APP_VERSION")
    env = {k: v for k, v in os.environ.items() if not k.startswith(scrubbed)}
    if os.environ.get("BACKUP_PG_BIN_DIR"):  # where the tools are: read, never written
        env["BACKUP_PG_BIN_DIR"] = os.environ["BACKUP_PG_BIN_DIR"]
    env["DATABASE_URL"] = url
    env["BACKUP_ENV_INCLUDE"] = "DEMO_*"  # the environment snapshot: the demo's own only
    env["DEMO_MODE"] = "1"
    return env


# -- the app -----------------------------------------------------------------------------
def _make_app(app: Path, url: str) -> None:
    import psycopg

    app.mkdir(parents=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(APP_SCHEMA)  # type: ignore[arg-type]
    for name, (width, height) in IMAGES.items():
        path = app / "uploads" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(width, height, seed=len(name)))
    (app / "static").mkdir()
    (app / "static" / "app.css").write_text("body { font-family: sans-serif; }\n")
    (app / ".env").write_text(ENV_FILE)
    (app / "config").mkdir()
    (app / "config" / "settings.toml").write_text('[mail]\nfrom = "hello@example.com"\n')


def _png(width: int, height: int, seed: int) -> bytes:
    """A small valid PNG: a colour gradient."""
    raw = b"".join(
        b"\x00"
        + b"".join(
            bytes((x * 255 // width, y * 255 // height, (seed * 40) % 256)) for x in range(width)
        )
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _row_counts(url: str) -> dict[str, int]:
    import psycopg
    from psycopg import sql

    counts: dict[str, int] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for name in APP_TABLES:
            exists = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
            if not exists or exists[0] is None:
                counts[name] = -1
                continue
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*name.split(".")))
            row = conn.execute(query).fetchone()
            counts[name] = int(row[0]) if row else 0
    return counts


def _file_hashes(app: Path) -> dict[str, str]:
    hashes = {}
    for path in sorted((app / "uploads").rglob("*")):
        if path.is_file():
            hashes[str(path.relative_to(app))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


# -- damage, and proof of repair -----------------------------------------------------------
def _damage(demo: Demo, url: str) -> None:
    import psycopg

    demo.show("\nNow something goes wrong: a table is dropped, uploads deleted, .env edited.")
    demo.narrate("psql \"$DATABASE_URL\" -c 'DROP TABLE comments CASCADE'")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE comments CASCADE")
    demo.narrate("rm -r uploads/avatars")
    shutil.rmtree(demo.app / "uploads" / "avatars")
    demo.narrate("echo 'DEBUG=true' >> .env")
    with open(demo.app / ".env", "a") as handle:
        handle.write("DEBUG=true\n")


def _check_back(
    rows_before: dict[str, int],
    rows: dict[str, int],
    files_before: dict[str, str],
    files: dict[str, str],
) -> None:
    if rows != rows_before or files != files_before:
        raise OperationFailed(
            f"The demo's restore did not bring everything back (rows {rows_before} -> {rows}, "
            f"{len(files_before)} -> {len(files)} files); this is a bug, please report it."
        )


def _review_folder(app: Path) -> Path | None:
    from cosmic_backup.components.config import REVIEW_ROOT

    found = sorted((app / REVIEW_ROOT).glob("config-*"))
    return found[-1] if found else None


def _report(demo: Demo, keep: Path | None) -> Path | None:
    """The last step: `report --html`, in the kept app, or beside the removed folder (so
    it outlives it); skipped with a word when the [report] extra is not installed."""
    try:
        import jinja2  # noqa: F401
        import pygal  # noqa: F401
    except ImportError:
        demo.show(
            "\n(For the HTML report of these backups, pip install 'cosmic-backup[report]' "
            "and run 'cosmic-backup report --html FILE'.)"
        )
        return None
    if keep is not None:
        path = demo.app / "tmp" / "report.html"
    else:
        path = Path(tempfile.mkdtemp(prefix="cosmic-backup-demo-report-")) / "report.html"
    demo.command("report", "--html", str(path))
    return path


def _finish(
    demo: Demo, rows: dict[str, int], files: dict[str, str], review: Path | None, keep: Path | None
) -> None:
    show = demo.show
    show("\nEverything is back:")
    for table, count in rows.items():
        show(f"  {table:<18} {count:>6} rows, as before the damage")
    for name, digest in files.items():
        show(f"  {name:<26} sha256 {digest[:16]}..., as before")
    if review is not None:
        show(
            f"  The configuration was restored for review (never in place) into "
            f"{review.relative_to(demo.app)}: compare its files/.env with .env and copy back "
            "what you need."
        )
    if keep is not None:
        show(
            f"\nThe demo app and its backups stay in {demo.app} (cd there and explore; its "
            "throwaway database server has stopped, so restore the database --into another)."
        )
    else:
        show("\nThe demo folder has been removed; keep it next time with --keep DIR.")
