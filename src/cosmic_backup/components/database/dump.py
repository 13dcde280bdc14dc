"""Taking a dump: pg_dump (custom format, uncompressed) streamed into the sealing pipeline.

A REPEATABLE READ transaction exports a snapshot (and holds no table lock); the tables,
schemas and migration head are read in it (a short catalog read that ends before pg_dump
starts) and pg_dump dumps exactly that snapshot. The row counts are taken from the dump
itself as it passes through (stream_counts.py), so a restore can be checked against them
without a second scan of the data; only if the stream cannot be read do they fall back to
count(*) in the same snapshot. The dump goes straight from pg_dump's stdout into our
stream: the plain dump never touches the disk.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import psycopg
from psycopg import sql

from cosmic_backup.components.database.connection import ServerInfo, connect
from cosmic_backup.components.database.directory_dump import (
    DirectoryDump,
    counted_files,
    disk_full_message,
    filled_the_disk,
    folder_bytes,
    private_dump_folder,
    run_pg_dump_into,
    write_dump_tar,
)
from cosmic_backup.components.database.migrations import migration_head
from cosmic_backup.components.database.row_order import (
    ORDER_PRIMARY_KEY,
    PrimaryKey,
    RowOrderSettings,
    RowOrderWriter,
    read_primary_keys,
)
from cosmic_backup.components.database.source import CUSTOM, DIRECTORY, DatabaseSource
from cosmic_backup.components.database.stream_counts import StreamCounter
from cosmic_backup.components.database.tools import Tool
from cosmic_backup.components.database.url import Target
from cosmic_backup.errors import OperationFailed
from cosmic_backup.format.manifest import MODE_SCHEMA_ONLY
from cosmic_backup.process import PUMP_CHUNK, Child, running
from cosmic_backup.sizes import free_space

SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")
# Tables counted per transaction: its locks (each table and its indexes) are released
# at its end, so a backup never holds many more locks than pg_dump does.
COUNT_BATCH = 100

TABLES_QUERY = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""

SCHEMAS_QUERY = """
SELECT n.nspname FROM pg_namespace n
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid
                    AND d.deptype = 'e')
ORDER BY 1
"""


@dataclass(frozen=True)
class DumpSettings:
    connect_timeout: int
    lock_wait_timeout: int
    timeout: int


def lock_message(what: str, seconds: int) -> str:
    return (
        f"{what} is locked by another session and the dump gave up after waiting "
        f"{seconds} s (BACKUP_LOCK_WAIT_TIMEOUT); try again when it is free, or find the "
        "blocking session in pg_stat_activity."
    )


def timeout_message(seconds: int) -> str:
    return (
        f"The dump did not finish within {seconds} s (BACKUP_TIMEOUT) and was stopped; raise "
        "the limit, or take a --schema-only backup at a quieter time."
    )


def _remaining_ms(deadline: float) -> int:
    return max(1, int((deadline - time.monotonic()) * 1000))


def list_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return [(str(s), str(t)) for s, t in conn.execute(TABLES_QUERY).fetchall()]


def count_rows(
    conn: psycopg.Connection, tables: list[tuple[str, str]], lock_wait: int
) -> dict[str, int]:
    """Each table's own rows: ONLY, so that an inheritance parent's count leaves out its
    children's rows, as the dump (and the manifest) counts each table alone."""
    counts = {}
    for schema, table in tables:
        query = sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(schema, table))
        try:
            row = conn.execute(query).fetchone()
        except psycopg.errors.LockNotAvailable:
            raise OperationFailed(lock_message(f"The table {schema}.{table}", lock_wait)) from None
        counts[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


def take_dump(
    out: BinaryIO,
    target: Target,
    *,
    mode: str,
    server: ServerInfo,
    pg_dump: Tool,
    limits: DumpSettings,
    log: logging.Logger,
    directory: DirectoryDump | None = None,
    row_order: RowOrderSettings | None = None,
) -> DatabaseSource:
    """Dump `target` into `out`; return what the manifest records of the source.

    With `directory`, pg_dump runs its jobs in parallel into a temporary folder, sealed
    as one tar (directory_dump.py); the rows are counted in the tables' data files as
    they are sealed.

    BACKUP_TIMEOUT bounds the whole of it: pg_dump gets what is left after the catalog
    reads, and a count(*) fallback (only if the stream could not be read) what is left
    after pg_dump.

    With `row_order` (primary-key), each table's rows are put in key order on their way
    (row_order.py); the keys are read in the same snapshot.
    """
    sorting = row_order if row_order and row_order.order == ORDER_PRIMARY_KEY else None
    if mode == MODE_SCHEMA_ONLY or directory is not None:
        sorting = None  # no rows; --jobs dumps keep pg_dump's order (docs/format.md)
    deadline = time.monotonic() + limits.timeout
    with connect(target, limits.connect_timeout) as exporter:
        # This transaction only keeps the snapshot alive while pg_dump reads it: it takes
        # no lock on any table, so a backup needs no more locks than pg_dump itself.
        exporter.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        exporter.read_only = True
        exporter.execute("SET idle_in_transaction_session_timeout = 0")
        exporter.execute("SET statement_timeout = 0")
        snapshot = str(exporter.execute("SELECT pg_export_snapshot()").fetchone()[0])  # type: ignore[index]
        tables, facts, keys = _read_snapshot(target, snapshot, limits, sorting is not None)
        remaining = max(1.0, deadline - time.monotonic())
        if directory is not None:
            size = functools.partial(_database_size, exporter)  # asked if the disk fills
            dumped = DirectoryRun(snapshot, mode, remaining, tables, size)
            rows = _run_pg_dump_directory(out, target, dumped, pg_dump, limits, log, directory)
            if mode != MODE_SCHEMA_ONLY:
                facts["row_counts"] = _directory_counts(
                    target, snapshot, tables, rows, limits, log, deadline
                )
            exporter.rollback()
            return _source(target, server, pg_dump, facts, directory)
        counter = StreamCounter()
        ordered = (sorting, keys) if sorting is not None else None
        _run_pg_dump(out, target, snapshot, mode, pg_dump, limits, log, remaining, counter, ordered)
        if mode != MODE_SCHEMA_ONLY:
            facts["row_counts"] = _row_counts(
                target, snapshot, tables, counter, limits, log, deadline
            )
        exporter.rollback()
    return DatabaseSource(
        database=target.dbname,
        host=target.host,
        server_version=server.version,
        pg_dump_version=pg_dump.version,
        **facts,
    )


def _database_size(conn: psycopg.Connection) -> int | None:
    """The database's size on the server (pg_database_size), None if it cannot be read."""
    try:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row else None


def _read_snapshot(
    target: Target, snapshot: str, limits: DumpSettings, with_keys: bool
) -> tuple[list[tuple[str, str]], dict[str, Any], dict[tuple[str, str], PrimaryKey]]:
    """Tables, schemas, migration head (and with `with_keys`, the primary keys), read in
    the exported snapshot, so they describe exactly what pg_dump dumps. Catalog reads
    only, in a transaction that ends before pg_dump starts (the migration head reads one
    small table)."""
    with connect(target, limits.connect_timeout) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        _begin_in(conn, snapshot)
        conn.execute(
            sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{limits.lock_wait_timeout}s"))
        )
        tables = list_tables(conn)
        schemas = [str(row[0]) for row in conn.execute(SCHEMAS_QUERY).fetchall()]
        head = migration_head(conn)
        keys = read_primary_keys(conn) if with_keys else {}
        conn.commit()
    return (
        tables,
        {
            "tables": [f"{s}.{t}" for s, t in tables],
            "row_counts": {},
            "schemas": schemas,
            "migration_head": head,
        },
        keys,
    )


def _row_counts(
    target: Target,
    snapshot: str,
    tables: list[tuple[str, str]],
    counter: StreamCounter,
    limits: DumpSettings,
    log: logging.Logger,
    deadline: float,
) -> dict[str, int]:
    """The rows of every listed table, as counted in the dump's stream.

    A table the stream did not carry (or a stream we could not read) is counted with
    count(*) in the same snapshot, still held open by the exporting transaction.
    """
    streamed = counter.counts()
    if streamed is None:
        log.info("row counts: %s; counting with count(*) instead", counter.failure)
        streamed = {}
    names = [f"{s}.{t}" for s, t in tables]
    missing = [table for table, name in zip(tables, names, strict=True) if name not in streamed]
    counts = {name: streamed[name] for name in names if name in streamed}
    if missing:
        if counter.failure is None:
            log.info(
                "row counts: %d table(s) not in the dump's stream; counting them", len(missing)
            )
        counts.update(_count_in_snapshot(target, snapshot, missing, limits, deadline))
    return {name: counts[name] for name in names}


def _count_in_snapshot(
    target: Target,
    snapshot: str,
    tables: list[tuple[str, str]],
    limits: DumpSettings,
    deadline: float,
) -> dict[str, int]:
    """count(*) of `names` in the snapshot, COUNT_BATCH tables per transaction: counting
    locks each table and its indexes until the transaction ends, and holding those for
    thousands of tables at once ran out of lock slots ("out of shared memory")."""
    counts: dict[str, int] = {}
    with connect(target, limits.connect_timeout) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        for first in range(0, len(tables), COUNT_BATCH):
            _begin_in(conn, snapshot)
            conn.execute(
                sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(f"{limits.lock_wait_timeout}s")
                )
            )
            counts.update(_count_batch(conn, tables[first : first + COUNT_BATCH], limits, deadline))
            conn.commit()
    return counts


def _begin_in(conn: psycopg.Connection, snapshot: str) -> None:
    """Start a transaction that sees the exported snapshot (its first statement)."""
    conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))


def _count_batch(
    conn: psycopg.Connection,
    tables: list[tuple[str, str]],
    limits: DumpSettings,
    deadline: float,
) -> dict[str, int]:
    conn.execute(
        sql.SQL("SET LOCAL statement_timeout = {}").format(
            sql.Literal(f"{_remaining_ms(deadline)}ms")
        )
    )
    try:
        return count_rows(conn, tables, limits.lock_wait_timeout)
    except psycopg.errors.QueryCanceled:
        raise OperationFailed(timeout_message(limits.timeout)) from None


def _pg_dump_command(
    pg_dump: Tool, target: Target, snapshot: str, mode: str, limits: DumpSettings, *fmt: str
) -> tuple[list[str], dict[str, str]]:
    """pg_dump's argv and environment for `fmt` (the format, and the jobs if parallel).

    Uncompressed: our pipeline compresses, faster and beside the dump. Every job of a
    parallel dump reads the same exported snapshot. The password stays in the environment.
    """
    argv = [
        pg_dump.path,
        *fmt,
        "--compress=0",
        f"--snapshot={snapshot}",
        f"--lock-wait-timeout={limits.lock_wait_timeout}s",
        "--no-password",
        f"--dbname={target.conninfo()}",
    ]
    if mode == MODE_SCHEMA_ONLY:
        argv.append("--schema-only")
    env = {**target.tool_environment(limits.connect_timeout), "PGOPTIONS": "-c statement_timeout=0"}
    return argv, env


def _run_pg_dump(
    out: BinaryIO,
    target: Target,
    snapshot: str,
    mode: str,
    pg_dump: Tool,
    limits: DumpSettings,
    log: logging.Logger,
    seconds_left: float,
    counter: StreamCounter,
    ordered: tuple[RowOrderSettings, dict[tuple[str, str], PrimaryKey]] | None = None,
) -> None:
    argv, env = _pg_dump_command(pg_dump, target, snapshot, mode, limits, "--format=custom")
    counted = _Tee(out, counter)
    if ordered is None:
        code, child = _pump(argv, env, seconds_left, log, counted)
    else:
        settings, keys = ordered
        try:
            with private_dump_folder(settings.spill_parent) as folder:
                sink = RowOrderWriter(counted, keys, folder, settings.memory)
                try:
                    code, child = _pump(argv, env, seconds_left, log, sink)
                    if code == 0 and not child.timed_out:
                        sink.finish()
                finally:
                    sink.close()
                _log_order(sink, log)
        except OSError as exc:
            if getattr(exc, "from_pipeline", False):
                raise  # the store's own fault: its caller says what it is
            raise OperationFailed(sort_failed_message(settings.spill_parent, exc)) from None
    if child.timed_out:
        raise OperationFailed(timeout_message(limits.timeout))
    if code != 0:
        raise OperationFailed(_pg_dump_error(child, limits.lock_wait_timeout))


@dataclass(frozen=True)
class _Tee:
    """The dump's bytes into the pipeline and the row counter."""

    out: BinaryIO
    counter: StreamCounter

    def write(self, data: bytes) -> int:
        try:
            self.out.write(data)
        except OSError as exc:
            exc.from_pipeline = True  # type: ignore[attr-defined]  # not the row sort's
            raise
        self.counter.feed(data)
        return len(data)


def sort_failed_message(parent: Path, exc: OSError) -> str:
    return (
        f"Putting the dump's rows in primary-key order failed in its temporary folder "
        f"under {parent} ({exc.strerror or exc}; {free_space(parent)} free there); free "
        "some space (prune old backups), set BACKUP_DIR to a larger disk or "
        "BACKUP_DB_ROW_ORDER=dump, then run the backup again; nothing partial was kept."
    )


def _pump(
    argv: list[str], env: dict[str, str], seconds_left: float, log: logging.Logger, sink: Any
) -> tuple[int, Child]:
    """Run pg_dump, its stdout into `sink`; its exit code."""
    child = Child(argv, env=env, timeout=seconds_left, log=log)
    assert child.process.stdout is not None
    with running(child):
        while chunk := child.process.stdout.read(PUMP_CHUNK):
            sink.write(chunk)
        code = child.wait()
    return code, child


def _log_order(sink: RowOrderWriter, log: logging.Logger) -> None:
    stats = sink.stats
    log.info(
        "row order: %d table(s) in primary-key order, %d spilled %d sorted run(s)",
        stats.sorted_tables,
        stats.spilled_tables,
        stats.runs,
    )
    if stats.kept_dump_order:
        log.info("row order: pg_dump's order kept for %s", ", ".join(stats.kept_dump_order))
    if stats.passed_through:
        log.info("row order: the rest of the dump left as it was: %s", stats.passed_through)


def _source(
    target: Target,
    server: ServerInfo,
    pg_dump: Tool,
    facts: dict[str, Any],
    directory: DirectoryDump | None,
) -> DatabaseSource:
    return DatabaseSource(
        database=target.dbname,
        host=target.host,
        server_version=server.version,
        pg_dump_version=pg_dump.version,
        dump_format=DIRECTORY if directory is not None else CUSTOM,
        **facts,
    )


@dataclass(frozen=True)
class DirectoryRun:
    """What one directory-format dump is of: the snapshot, the mode, the seconds left of
    BACKUP_TIMEOUT, and the tables whose rows are counted."""

    snapshot: str
    mode: str
    seconds_left: float
    tables: list[tuple[str, str]]
    size: Callable[[], int | None]  # the database's size, asked only when it is needed


def _run_pg_dump_directory(
    out: BinaryIO,
    target: Target,
    run: DirectoryRun,
    pg_dump: Tool,
    limits: DumpSettings,
    log: logging.Logger,
    directory: DirectoryDump,
) -> dict[str, int]:
    """pg_dump -Fd -j N of the exported snapshot into a private folder (removed whatever
    happens), then the folder as one tar into `out`; the rows counted on the way."""
    snapshot, mode = run.snapshot, run.mode
    argv, env = _pg_dump_command(
        pg_dump, target, snapshot, mode, limits, "--format=directory", f"--jobs={directory.jobs}"
    )
    with private_dump_folder(directory.parent) as folder:
        child, dump = run_pg_dump_into(argv, folder, env=env, timeout=run.seconds_left, log=log)
        if child.timed_out:
            raise OperationFailed(timeout_message(limits.timeout))
        if child.process.returncode != 0 and filled_the_disk(child.stderr_text):
            written = folder_bytes(folder)  # before the folder is removed
            raise OperationFailed(disk_full_message(directory.parent, written, run.size()))
        if child.process.returncode != 0:
            raise OperationFailed(_pg_dump_error(child, limits.lock_wait_timeout))
        counted = {}
        if mode != MODE_SCHEMA_ONLY:
            counted = counted_files(dump, pg_dump, run.tables, limits.timeout, log)
        return write_dump_tar(out, dump, counted)


def _directory_counts(
    target: Target,
    snapshot: str,
    tables: list[tuple[str, str]],
    rows: dict[str, int],
    limits: DumpSettings,
    log: logging.Logger,
    deadline: float,
) -> dict[str, int]:
    """The rows counted in the data files; count(*) in the snapshot (still held open)
    for a table they did not give (its name read two ways, a file not as expected)."""
    names = [f"{s}.{t}" for s, t in tables]
    missing = [table for table, name in zip(tables, names, strict=True) if name not in rows]
    counts = dict(rows)
    if missing:
        log.info("row counts: %d table(s) not counted in the dump's files; counting", len(missing))
        counts.update(_count_in_snapshot(target, snapshot, missing, limits, deadline))
    return {name: counts[name] for name in names}


def _pg_dump_error(child: Child, lock_wait: int) -> str:
    text = child.stderr_text.lower()
    # pg_dump's --lock-wait-timeout is a statement timeout on its LOCK TABLE.
    waited = "statement timeout" in text and "lock table" in text
    if "lock timeout" in text or "could not obtain lock" in text or waited:
        locked = re.search(r"lock table (\S+)", text)
        return lock_message(f"The table {locked.group(1)}" if locked else "A table", lock_wait)
    if "server version mismatch" in text:
        return f"pg_dump is older than the server: {child.stderr_tail(1)}."
    return f"pg_dump failed (exit code {child.process.returncode}): {child.said()}."
