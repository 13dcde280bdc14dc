"""`verify --restore-test`: real restores into a throwaway server or a private folder,
through the real CLI, with the backups' own writer for the damaged cases."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cosmic_backup.components.database.throwaway import sandbox_root, throwaway_server
from cosmic_backup.format.pipeline import SealingWriter
from cosmic_backup.operations.artifacts import open_plaintext, trusted_key
from cosmic_backup.operations.context import open_runtime
from cosmic_backup.settings import load_settings
from tests.conftest import Project, clean_environ
from tests.integration.database.appdb import execute
from tests.integration.database.conftest import PostgresServer

KEY = "restore test passphrase 0123456789"


@pytest.fixture
def app_project(project: Project, app_db: str) -> Project:
    """An app with a database, an uploads folder and a .env, all backed up."""
    project.env.update({"DATABASE_URL": app_db, "BACKUP_KEY": KEY})
    uploads = project.root / "uploads"
    (uploads / "avatars").mkdir(parents=True)
    (uploads / "avatars" / "a.png").write_bytes(os.urandom(3000))
    (uploads / "notes.txt").write_text("hello\n")
    (uploads / "script.sh").write_text("#!/bin/sh\n")
    (uploads / "script.sh").chmod(0o750)
    (uploads / "latest").symlink_to("avatars/a.png")
    (project.root / ".env").write_text("SECRET_KEY=abc\n")
    return project


@pytest.fixture
def into(postgres: PostgresServer) -> str:
    """--into the session's server: the same restore, without starting a server."""
    return postgres.url("postgres")


def backed_up(project: Project, *what: str) -> Project:
    for component in what:
        result = project.run("backup", component)
        assert result.returncode == 0, result.stderr
    return project


def drill(project: Project, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    result = project.run("--debug", "--json", "verify", "--restore-test", *args)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result, (json.loads(result.stdout) if result.stdout.strip() else {})


def sandboxes() -> list[tuple[Path, int]]:
    """Every sandbox folder (throwaway servers, extractions) with the pid of its run."""
    found = []
    for folder in sandbox_root().iterdir() if sandbox_root().is_dir() else []:
        try:
            found.append((folder, int(json.loads((folder / "owner.json").read_text())["pid"])))
        except (OSError, ValueError, KeyError):
            continue
    return found


def leftovers(owner: int | None = None) -> list[Path]:
    """Sandbox folders left by runs that have ended, or owned by the run `owner`; live runs
    of other tests on this machine are not ours."""
    return [f for f, pid in sandboxes() if pid == owner or not Path(f"/proc/{pid}").exists()]


def owned_by(owner: int) -> list[Path]:
    """Sandbox folders of the run `owner` alone: other runs' leftovers, even of ended runs,
    are not this test's to judge (the next run of any of them removes those)."""
    return [folder for folder, pid in sandboxes() if pid == owner]


def reseal(
    project: Project,
    component: str,
    *,
    payload: Callable[[bytes], bytes] | None = None,
    source: Callable[[dict], None] | None = None,
) -> None:
    """Rewrite the latest backup with the project's own writer and a correct MAC."""
    env = {k: v for k, v in clean_environ(project.env).items()}
    rt = open_runtime(load_settings(project.root, environ=env))
    entry = rt.catalog.entries(component)[-1]
    manifest, key = entry.manifest, trusted_key(rt, entry)
    if payload is not None:  # an artifact's payload: a single-file backup (format 1)
        path = rt.catalog.artifact_path(entry)
        with open(path, "rb") as artifact:
            plain = open_plaintext(rt, artifact, manifest, key).read()
        with open(path, "wb") as sink, SealingWriter(sink, key, manifest.iterations) as writer:
            writer.write(payload(plain))
        sealed = writer.result
        assert sealed is not None
        manifest.plaintext_size, manifest.plaintext_sha256 = (
            sealed.plaintext_size,
            sealed.plaintext_sha256,
        )
        manifest.stored_size, manifest.artifact_mac = sealed.stored_size, sealed.mac
    if source is not None:
        source(manifest.source)
    rt.catalog.write_manifest(manifest, key)


GRANT_TO_AN_APP_ROLE = (
    "DO $$ BEGIN CREATE ROLE cosmic_test_reader; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    "GRANT SELECT ON users TO cosmic_test_reader",
)


def test_a_good_backup_of_each_component_passes_and_is_recorded(
    app_project: Project, app_db: str
) -> None:
    """The database's GRANTs name a role the throwaway server does not have: privileges
    are not what a restore test proves, so they are left out, not a failure."""
    execute(app_db, *GRANT_TO_AN_APP_ROLE)
    backed_up(app_project, "all")
    result, report = drill(app_project, "all")
    assert result.returncode == 0, [r["message"] for r in report["results"]]
    assert [r["component"] for r in report["results"]] == ["database", "files", "config"]
    assert all(r["status"] == "ok" for r in report["results"]), report
    database, files, _config = report["results"]
    listed = json.loads(app_project.run("--json", "list").stdout)
    assert database["figures"]["rows"] == sum(listed[0]["source"]["row_counts"].values())
    assert database["figures"]["objects"] > 20
    assert files["figures"]["files"] == 3
    assert all(entry["restore_tested_at"] for entry in listed), listed
    assert all(entry["restore_test"]["ok"] for entry in listed)
    assert not leftovers()


def test_row_counts_that_differ_from_the_dump_name_the_table_and_both_counts(
    app_project: Project, into: str
) -> None:
    backed_up(app_project, "database")

    def one_more_user(source: dict) -> None:
        source["row_counts"]["public.users"] = 501

    reseal(app_project, "database", source=one_more_user)
    result, report = drill(app_project, "database", "--into", into)
    assert result.returncode == 6, result.stderr
    message = report["results"][0]["message"]
    assert "public.users 500 rows (backup had 501)" in message
    assert "billing.invoices" not in message
    listed = json.loads(app_project.run("--json", "list", "database").stdout)
    assert listed[-1]["restore_tested_at"] is None
    assert listed[-1]["restore_test"]["ok"] is False
    assert not leftovers()


def test_an_object_the_table_of_contents_lists_but_the_dump_lacks_is_named(
    app_project: Project, app_db: str, into: str
) -> None:
    execute(app_db, "CREATE INDEX users_mood_idx ON users (mood)")
    app_project.env["BACKUP_FORMAT"] = "single-file"  # reseal rewrites the artifact
    backed_up(app_project, "database")
    definition = b"CREATE INDEX users_mood_idx"
    # The same length, so the dump's framing holds: psql now reads a comment.
    reseal(
        app_project,
        "database",
        payload=lambda dump: dump.replace(definition, b"-- ATE INDEX users_mood_idx"),
    )
    result, report = drill(app_project, "database", "latest", "--into", into)
    assert result.returncode == 6, result.stderr
    assert "index public.users_mood_idx" in report["results"][0]["message"]


def test_a_dump_newer_than_every_server_is_explained(app_project: Project) -> None:
    backed_up(app_project, "database")

    def from_the_future(source: dict) -> None:
        source["server_version"] = "99.1"

    reseal(app_project, "database", source=from_the_future)
    result, report = drill(app_project, "database")
    assert result.returncode == 1
    message = report["results"][0]["message"]
    assert "No PostgreSQL server of version 99 or newer" in message
    assert "apt install postgresql-99" in message


def test_a_dump_of_a_postgresql_18_server_is_restore_tested_on_an_18_server(
    project: Project,
) -> None:
    """The [embedded] extra (in [test] too) brings PostgreSQL 18: a dump of a current
    server can be restore-tested where the machine's packages are older (15 here)."""
    with throwaway_server(min_major=18) as server:
        url = server.url(server.create_database())
        # Not appdb's schema: the wheel is built without OpenSSL, so it has no pgcrypto.
        execute(url, "CREATE TABLE notes AS SELECT n, md5(n::text) FROM generate_series(1, 50) n")
        project.env.update({"DATABASE_URL": url, "BACKUP_KEY": KEY})
        backed_up(project, "database")
    result, report = drill(project, "database")
    assert result.returncode == 0, report
    [database] = report["results"]
    assert database["status"] == "ok" and database["figures"]["rows"] == 50
    [entry] = json.loads(project.run("--json", "list", "database").stdout)
    assert entry["source"]["server_version"].startswith("18.")


def test_into_a_server_of_the_users_choosing_creates_and_drops_its_own_database(
    app_project: Project, postgres: PostgresServer
) -> None:
    backed_up(app_project, "database")

    def databases() -> set[str]:
        with postgres.admin() as conn:
            return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}

    before = databases()
    result, report = drill(app_project, "database", "--into", postgres.url("postgres"))
    assert result.returncode == 0, result.stderr
    assert report["results"][0]["status"] == "ok"
    assert databases() == before
    assert postgres.password not in result.stdout + result.stderr


def postmasters(owner: int) -> set[int]:
    pids = set()
    for folder in leftovers(owner):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids.add(int((folder / "data" / "postmaster.pid").read_text().split()[0]))
    return pids


def wait_for_restore(process: subprocess.Popen[str]) -> set[int]:
    """Until the restore is under way (psql runs for this run); its server's pid."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        children = subprocess.run(
            ["pgrep", "-f", "--", "psql --no-psqlrc"], capture_output=True, text=True
        ).stdout.split()
        pids = postmasters(process.pid)
        if pids and any(_parent(int(child)) == process.pid for child in children):
            return pids
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("the restore never started")


def hold_restore(process: subprocess.Popen[str]) -> None:
    """Stop the run's psql (SIGSTOP), so the restore is still under way whenever the test
    signals the run: a fast restore test could otherwise have ended just before, and a
    signal during the interpreter's exit kills it (-2) instead of reaching our handler."""
    children = subprocess.run(
        ["pgrep", "-f", "--", "psql --no-psqlrc"], capture_output=True, text=True
    ).stdout.split()
    held = [int(child) for child in children if _parent(int(child)) == process.pid]
    assert held, "no psql of this run to hold"
    for pid in held:
        os.kill(pid, signal.SIGSTOP)  # the run's SIGKILL of its children still ends it


def alive(pid: int) -> bool:
    """Running (a zombie that init has not reaped yet is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


@pytest.fixture(scope="module")
def big_project(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer, big_template: str
) -> Project:
    """A database big enough that its restore lasts a moment, backed up once."""
    root = tmp_path_factory.mktemp("big") / "app"
    root.mkdir()
    url = postgres.url(postgres.create_database("bigtest", template=big_template))
    project = Project(root, {"DATABASE_URL": url, "BACKUP_KEY": KEY})
    (root / ".env").write_text("A=1\n")
    return backed_up(project, "database")


def test_sigint_leaves_nothing_and_a_backup_meanwhile_does_not_wait(big_project: Project) -> None:
    """The root's lock is not held during the restore: a backup started meanwhile runs at
    once. Then Ctrl-C: no server process, database or folder remains (by pid and folder)."""
    process = big_project.popen("verify", "--restore-test", "database")
    pids = wait_for_restore(process)
    hold_restore(process)
    began = time.monotonic()
    result = big_project.run("backup", "config")
    assert result.returncode == 0, result.stderr  # the lock is taken without waiting (LOCK_NB)
    assert time.monotonic() - began < 60  # a loaded machine, not a wait for the held restore
    assert process.poll() is None  # the test was still running all along
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert not owned_by(process.pid)
    for pid in pids:
        assert not alive(pid)


def test_sigterm_leaves_no_server_or_folder(big_project: Project) -> None:
    process = big_project.popen("verify", "--restore-test", "database")
    pids = wait_for_restore(process)
    hold_restore(process)
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert not owned_by(process.pid)
    for pid in pids:
        assert not alive(pid)


def test_a_killed_restore_test_is_cleaned_up_by_the_next_run(big_project: Project) -> None:
    process = big_project.popen("verify", "--restore-test", "database")
    pids = wait_for_restore(process)
    process.kill()
    process.communicate(timeout=30)
    left = leftovers(process.pid)
    assert left and all(alive(pid) for pid in pids)
    result = big_project.run("verify", "--restore-test", "files")  # no files backup: quick
    assert result.returncode == 4, result.stderr
    assert not any(folder.exists() for folder in left)
    for pid in pids:
        assert not alive(pid)
