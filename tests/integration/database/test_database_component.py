"""The database component on its own, against a real server: dumps produced into files
and pipes and restored from them, no encryption and no CLI in between."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cosmic_backup.components.base import BackupRequest, Produced, RestoreRequest
from cosmic_backup.components.database.connection import ConnectionFailed, check_connection
from cosmic_backup.components.database.dump import _pg_dump_error
from cosmic_backup.components.database.tools import candidates, find_tool
from cosmic_backup.components.database.url import parse_database_url
from cosmic_backup.errors import ExitCode, IntegrityError, OperationFailed
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.process import PUMP_CHUNK, Child
from tests.integration.database.appdb import (
    DESTRUCTIVE_CHANGES,
    create_app_database,
    execute,
    full_state,
    scalar,
    table_contents,
)
from tests.integration.database.conftest import ComponentFactory, PostgresServer
from tests.integration.database.procwatch import CommandLineWatcher

NO_SAFETY = RestoreRequest(safety_backup=False)


def dbname(url: str) -> str:
    return url.rsplit("/", 1)[1]


def manifest_of(produced: Produced) -> Manifest:
    return Manifest(
        id="database-20261124T020000Z",
        component="database",
        status="ok",
        mode=produced.mode,
        tags=["manual"],
        started_at="2026-11-24T02:00:00Z",
        finished_at="2026-11-24T02:00:01Z",
        tool_version="test",
        source=produced.source.to_dict(),
    )


def dump_into_memory(make: ComponentFactory, url: str, **request: Any) -> tuple[bytes, Manifest]:
    out = io.BytesIO()
    produced = make(url).produce(out, BackupRequest(**request))
    return out.getvalue(), manifest_of(produced)


def test_round_trip_through_a_file(
    component: ComponentFactory, app_db: str, tmp_path: Path
) -> None:
    original = full_state(app_db)
    dump = tmp_path / "app.dump"
    with dump.open("wb") as out:
        produced = component(app_db).produce(out, BackupRequest())
    source = produced.source
    assert produced.mode == "full" and produced.warnings == []
    assert source.row_counts == {t: len(rows) for t, rows in original[0].items()}
    assert source.row_counts["public.users"] == 500
    assert source.migration_head == "django_migrations: core.0002_more"
    assert source.host == "127.0.0.1" and source.database == dbname(app_db)
    assert source.neon is False and source.pooler_switched is False
    assert source.server_version.split(".")[0] == source.pg_dump_version.split(".")[0]
    assert {"public", "billing", "audit", "extensions"} <= set(source.schemas)
    manifest = manifest_of(produced)
    with dump.open("rb") as payload:
        assert component(app_db).check_payload(payload, manifest)["toc_entries"] > 30

    execute(app_db, *DESTRUCTIVE_CHANGES)
    plan = component(app_db).plan_restore(manifest, RestoreRequest())
    assert plan.safety_backup == BackupRequest(mode="full", tags=("pre-restore",))
    assert any(
        "migration django_migrations: core.0002_more; the database is now at "
        "django_migrations: core.0003_oops" in note
        for note in plan.notes
    )
    with dump.open("rb") as payload:
        report = component(app_db).consume(payload, manifest, plan)
    assert full_state(app_db) == original
    assert report.details["tables"] == source.tables
    assert f"Row counts match the backup: {sum(source.row_counts.values())} rows" in "\n".join(
        report.lines
    )


class BoundedPipeWriter(io.RawIOBase):
    """The write end of a real pipe, remembering the largest single write."""

    def __init__(self, fd: int) -> None:
        self.fd, self.largest = fd, 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.largest = max(self.largest, len(data))
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        return len(data)


def test_dump_streams_through_a_pipe_into_another_database(
    component: ComponentFactory, app_db: str, postgres: PostgresServer
) -> None:
    """pg_dump's output is handed on in bounded chunks, never written to a file."""
    read_fd, write_fd = os.pipe()
    received = io.BytesIO()
    reader = threading.Thread(
        target=lambda: received.write(os.fdopen(read_fd, "rb").read()), daemon=True
    )
    reader.start()
    writer = BoundedPipeWriter(write_fd)
    try:
        with CommandLineWatcher() as watcher:
            produced = component(app_db).produce(writer, BackupRequest())  # type: ignore[arg-type]
    finally:
        os.close(write_fd)
    reader.join()
    assert 0 < writer.largest <= PUMP_CHUNK
    [line] = watcher.programs("pg_dump", dbname(app_db))
    pg_dump = line.split(b"\0")
    assert not [arg for arg in pg_dump if arg.startswith((b"--file", b"-f"))]
    assert b"--format=custom" in pg_dump and b"--compress=0" in pg_dump
    assert b"--no-password" in pg_dump and any(a.startswith(b"--snapshot=") for a in pg_dump)

    other = postgres.url(postgres.create_database("into"))
    request = RestoreRequest(target=other, safety_backup=False)
    plan = component(app_db).plan_restore(manifest_of(produced), request)
    assert "into_" in plan.target_description
    assert plan.safety_backup == BackupRequest(
        mode="full", tags=("pre-restore", "other-target"), source_override=other
    )  # a copy of another database than the app's: tagged so
    received.seek(0)
    component(app_db).consume(received, manifest_of(produced), plan)
    assert full_state(other) == full_state(app_db)


def test_a_truncated_dump_leaves_the_target_exactly_as_it_was(
    component: ComponentFactory, app_db: str
) -> None:
    """psql must never commit what arrived before pg_restore died."""
    dump, manifest = dump_into_memory(component, app_db)
    execute(app_db, "DELETE FROM billing.invoices WHERE id % 2 = 0", "DROP VIEW billing.totals")
    before = full_state(app_db)
    plan = component(app_db).plan_restore(manifest, NO_SAFETY)
    with pytest.raises(OperationFailed, match="rolled back; the database is unchanged"):
        component(app_db).consume(io.BytesIO(dump[: len(dump) * 2 // 3]), manifest, plan)
    assert full_state(app_db) == before


class FailsAtTheEnd(io.BytesIO):
    """A payload whose final read fails, as our reader does when the SHA-256 differs."""

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if not data:
            raise IntegrityError("The restored stream's SHA-256 differs from the manifest's.")
        return data


def test_nothing_is_committed_before_the_stream_passed_its_final_check(
    component: ComponentFactory, app_db: str
) -> None:
    dump, manifest = dump_into_memory(component, app_db)
    execute(app_db, "DELETE FROM users WHERE id > 10")
    before = full_state(app_db)
    plan = component(app_db).plan_restore(manifest, NO_SAFETY)
    with pytest.raises(IntegrityError, match="SHA-256 differs"):
        component(app_db).consume(FailsAtTheEnd(dump), manifest, plan)
    assert full_state(app_db) == before


def freeze(url: str, tag: str, body: str = "RAISE EXCEPTION 'frozen: %', tg_tag;") -> None:
    """An event trigger (in a schema the backup does not hold, so the reset keeps it)
    that acts on every `tag` command: the restore meets it midway."""
    execute(
        url,
        "CREATE SCHEMA guard",
        "CREATE FUNCTION guard.frozen() RETURNS event_trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN IF tg_tag = '{tag}' THEN {body} END IF; END $$",
        "CREATE EVENT TRIGGER frozen ON ddl_command_end EXECUTE FUNCTION guard.frozen()",
    )


def test_a_failure_after_the_data_and_large_objects_is_rolled_back(
    component: ComponentFactory, app_db: str
) -> None:
    """Triggers come after every row and large object: nothing of those may stay."""
    dump, manifest = dump_into_memory(component, app_db)
    execute(app_db, *DESTRUCTIVE_CHANGES)
    freeze(app_db, "CREATE TRIGGER")
    before = full_state(app_db)
    plan = component(app_db).plan_restore(manifest, NO_SAFETY)
    with pytest.raises(OperationFailed, match="frozen: CREATE TRIGGER") as failure:
        component(app_db).consume(io.BytesIO(dump), manifest, plan)
    assert "rolled back; the database is unchanged" in failure.value.message
    assert full_state(app_db) == before


def test_the_time_limit_stops_a_restore_and_rolls_it_back(
    component: ComponentFactory, app_db: str
) -> None:
    dump, manifest = dump_into_memory(component, app_db)
    execute(app_db, "DELETE FROM users WHERE id > 10")
    freeze(app_db, "CREATE VIEW", "PERFORM pg_sleep(60);")
    before = table_contents(app_db)
    slow = component(app_db, BACKUP_TIMEOUT="2")
    plan = slow.plan_restore(manifest, NO_SAFETY)
    began = time.monotonic()
    with pytest.raises(OperationFailed, match=r"did not finish within 2 s \(BACKUP_TIMEOUT\)"):
        slow.consume(io.BytesIO(dump), manifest, plan)
    # The server noticed psql was gone and let go of its locks: this read does not wait.
    assert table_contents(app_db) == before
    assert time.monotonic() - began < 15


def test_the_password_is_in_no_argument_list_and_no_log_line(
    component: ComponentFactory,
    postgres: PostgresServer,
    big_db: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    password = "Qx7-component-role-secret"
    name = dbname(big_db)
    execute(
        big_db,
        f"CREATE ROLE big_owner LOGIN PASSWORD '{password}'",
        f'ALTER DATABASE "{name}" OWNER TO big_owner',
        "ALTER TABLE big OWNER TO big_owner",
    )
    url = postgres.url(name, "big_owner", password)
    caplog.set_level(logging.DEBUG, logger="cosmic_backup")
    with CommandLineWatcher() as watcher:
        dump, manifest = dump_into_memory(component, url)
        plan = component(url).plan_restore(manifest, NO_SAFETY)
        component(url).consume(io.BytesIO(dump), manifest, plan)
    # pg_restore converts stdin to stdout: its arguments name no database.
    for program, mentioning in (("pg_dump", name), ("pg_restore", "--file=-"), ("psql", name)):
        assert watcher.programs(program, mentioning), f"{program} ended before it was seen"
    assert not [line for line in watcher.seen if password.encode() in line]
    assert password not in caplog.text and "big_owner" in caplog.text
    assert password not in json.dumps(manifest.to_dict())


def test_schema_only_dump_restores_structure_without_rows(
    component: ComponentFactory, app_db: str, postgres: PostgresServer
) -> None:
    dump, manifest = dump_into_memory(component, app_db, mode="schema-only")
    assert manifest.mode == "schema-only" and manifest.source["row_counts"] == {}
    other = postgres.url(postgres.create_database("schema"))
    plan = component(app_db).plan_restore(manifest, RestoreRequest(target=other))
    assert any("schema-only backup: structure only, no data" in note for note in plan.notes)
    report = component(app_db).consume(io.BytesIO(dump), manifest, plan)
    assert "Schema-only backup: the structure was restored, no data." in report.lines
    contents = table_contents(other)
    assert set(contents) == set(table_contents(app_db))
    assert all(rows == [] for rows in contents.values())


def test_no_database_url_is_not_configured(component: ComponentFactory) -> None:
    with pytest.raises(OperationFailed, match="DATABASE_URL is not set"):
        component(None).check_configured()


def test_something_that_is_not_postgresql_is_named_so() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)

        def answer() -> None:
            client, _ = server.accept()
            with client:
                client.recv(64)
                client.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        target = parse_database_url(f"postgresql://u:p@127.0.0.1:{server.getsockname()[1]}/a")
        began = time.monotonic()
        with pytest.raises(ConnectionFailed, match="it is not a PostgreSQL server"):
            check_connection(target, timeout=5, attempts=3, log=logging.getLogger("test"))
        assert time.monotonic() - began < 2  # permanent: not retried


def write_tool(folder: Path, name: str, version: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / name
    tool.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
    tool.chmod(0o755)
    return tool


def test_debian_wrapper_links_are_not_taken_for_tools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres: PostgresServer
) -> None:
    wrapper = write_tool(tmp_path / "share" / "postgresql-common", "pg_wrapper", "99.0")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "pg_dump").symlink_to(wrapper)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    found = candidates("pg_dump", None)
    assert found and not [t for t in found if str(tmp_path) in t.path]
    assert find_tool("pg_dump", postgres.major, None).major == postgres.major


def test_an_old_client_names_the_package_to_install(tmp_path: Path) -> None:
    write_tool(tmp_path, "pg_dump", "12.0")
    with pytest.raises(OperationFailed) as failure:
        find_tool("pg_dump", 15, str(tmp_path))
    message = failure.value.message
    assert "Install postgresql-client-15" in message and f"12.0 ({tmp_path}" in message


def test_every_app_table_is_counted_in_the_dump_snapshot(
    component: ComponentFactory, postgres: PostgresServer
) -> None:
    """Rows written while the dump runs are in neither the dump nor its counts."""
    url = postgres.url(postgres.create_database())
    create_app_database(url)

    class SlowSink(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            execute(url, "INSERT INTO billing.invoices (user_id, amount) VALUES (1, 1)")
            self.data = getattr(self, "data", b"") + bytes(data)
            return len(data)

    sink = SlowSink()
    produced = component(url).produce(sink, BackupRequest())  # type: ignore[arg-type]
    assert scalar(url, "SELECT count(*) FROM billing.invoices") > 800
    assert produced.source.row_counts["billing.invoices"] == 800
    other = postgres.url(postgres.create_database("snap"))
    plan = component(url).plan_restore(manifest_of(produced), RestoreRequest(target=other))
    report = component(url).consume(io.BytesIO(sink.data), manifest_of(produced), plan)
    assert scalar(other, "SELECT count(*) FROM billing.invoices") == 800
    assert any(line.startswith("Row counts match the backup") for line in report.lines)


def test_restore_counts_that_differ_are_named_and_an_integrity_failure(
    component: ComponentFactory, app_db: str
) -> None:
    """A mismatch is exit 6 (INTEGRITY), never a success with a remark."""
    dump, manifest = dump_into_memory(component, app_db)
    manifest.source["row_counts"]["public.users"] = 499  # as if the dump had lost a row
    plan = component(app_db).plan_restore(manifest, NO_SAFETY)
    with pytest.raises(IntegrityError, match=r"public.users 500 rows \(backup had 499\)") as err:
        component(app_db).consume(io.BytesIO(dump), manifest, plan)
    assert err.value.exit_code == ExitCode.INTEGRITY
    assert "billing.invoices" not in err.value.message  # only the table that differs


def test_a_url_without_password_uses_pgpassword(
    component: ComponentFactory,
    app_db: str,
    postgres: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the docs advise for --into: the password in PGPASSWORD, not in the URL."""
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    bare = f"postgresql://postgres@127.0.0.1:{postgres.port}/{dbname(app_db)}"
    dump, manifest = dump_into_memory(component, bare)
    assert manifest.source["row_counts"]["public.users"] == 500
    other = f"postgresql://postgres@127.0.0.1:{postgres.port}/{postgres.create_database('pw')}"
    plan = component(bare).plan_restore(manifest, RestoreRequest(target=other))
    component(bare).consume(io.BytesIO(dump), manifest, plan)
    assert table_contents(other) == table_contents(app_db)


MIGRATION_TABLES = [
    (  # Django records a squashed migration last, after the newer ones of its run
        "CREATE TABLE django_migrations (id serial, app text, name text, applied timestamptz);"
        "INSERT INTO django_migrations (app, name, applied) VALUES "
        "('core', '0001_initial', '2026-01-01 10:00'), "
        "('wagtailcore', '0016_change_url_path', '2026-01-01 10:01'), "
        "('wagtailcore', '0090_latest', '2026-01-01 10:02'), "
        "('wagtailcore', '0001_squashed_0016_change_url_path', '2026-01-01 10:03')",
        "django_migrations: wagtailcore.0090_latest",
    ),
    (
        "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);"
        "INSERT INTO alembic_version VALUES ('ae1027a6acf')",
        "alembic_version: ae1027a6acf",
    ),
    (
        "CREATE TABLE _prisma_migrations (id text, migration_name text, finished_at "
        "timestamptz); INSERT INTO _prisma_migrations VALUES "
        "('1', '20260101_init', '2026-01-01'), ('2', '20260301_users', '2026-03-01'), "
        "('3', '20260401_failed', NULL)",
        "_prisma_migrations: 20260301_users",
    ),
    (
        "CREATE TABLE schema_migrations (version varchar PRIMARY KEY);"
        "INSERT INTO schema_migrations VALUES ('20250101000000'), ('20260102000000')",
        "schema_migrations: 20260102000000",
    ),
    (
        "CREATE TABLE knex_migrations (id serial, name text);"
        "INSERT INTO knex_migrations (name) VALUES ('001_init.js'), ('002_more.js')",
        "knex_migrations: 002_more.js",
    ),
    (
        "CREATE TABLE flyway_schema_history (installed_rank int, version text, success bool);"
        "INSERT INTO flyway_schema_history VALUES (1, '1', true), (2, '2.1', true), "
        "(3, '3', false), (4, NULL, true)",
        "flyway_schema_history: 2.1",
    ),
]


@pytest.mark.parametrize(("ddl", "head"), MIGRATION_TABLES)
def test_the_migration_head_of_each_known_tool(
    component: ComponentFactory, postgres: PostgresServer, ddl: str, head: str
) -> None:
    url = postgres.url(postgres.create_database("migrations"))
    execute(url, ddl)
    _, manifest = dump_into_memory(component, url, mode="schema-only")
    assert manifest.source["migration_head"] == head


def test_pg_dumps_own_lock_wait_timeout_is_named_as_a_locked_table() -> None:
    """pg_dump --lock-wait-timeout cancels its LOCK TABLE as a statement timeout."""
    script = (
        "echo 'pg_dump: error: query failed: ERROR:  canceling statement due to statement "
        "timeout' >&2; echo 'pg_dump: detail: Query was: LOCK TABLE public.orders IN ACCESS "
        "SHARE MODE' >&2; exit 1"
    )
    child = Child(["/bin/sh", "-c", script], env={}, timeout=10, log=logging.getLogger("test"))
    assert child.wait() == 1
    message = _pg_dump_error(child, 5)
    assert "public.orders" in message and "locked by another session" in message
