"""Taking a dump: pg_dump (custom format, uncompressed) streamed into the sealing pipeline.

A REPEATABLE READ transaction exports a snapshot (and holds no table lock); the row
counts of every table are read in it (in short transactions of their own that import the
snapshot and end before pg_dump starts, so their locks are gone by then) and pg_dump
dumps exactly that snapshot, so a restore can be checked against the counts. The dump
goes straight from pg_dump's stdout into our stream: the plain dump never touches the
disk.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

import psycopg
from psycopg import sql

from cosmic_backup.components.database.connection import ServerInfo, connect
from cosmic_backup.components.database.migrations import migration_head
from cosmic_backup.components.database.source import DatabaseSource
from cosmic_backup.components.database.tools import Tool
from cosmic_backup.components.database.url import Target
from cosmic_backup.errors import OperationFailed
from cosmic_backup.format.manifest import MODE_SCHEMA_ONLY
from cosmic_backup.process import PUMP_CHUNK, Child, running

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
    counts = {}
    for schema, table in tables:
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
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
) -> DatabaseSource:
    """Dump `target` into `out`; return what the manifest records of the source.

    BACKUP_TIMEOUT bounds the whole of it: the row counts run under a statement timeout
    of what is left, and pg_dump gets the rest.
    """
    deadline = time.monotonic() + limits.timeout
    with connect(target, limits.connect_timeout) as exporter:
        # This transaction only keeps the snapshot alive while pg_dump reads it: it takes
        # no lock on any table, so a backup needs no more locks than pg_dump itself.
        exporter.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        exporter.read_only = True
        exporter.execute("SET idle_in_transaction_session_timeout = 0")
        exporter.execute("SET statement_timeout = 0")
        snapshot = str(exporter.execute("SELECT pg_export_snapshot()").fetchone()[0])  # type: ignore[index]
        facts = _read_snapshot(target, snapshot, mode, limits, deadline)
        remaining = max(1.0, deadline - time.monotonic())
        _run_pg_dump(out, target, snapshot, mode, pg_dump, limits, log, remaining)
        exporter.rollback()
    return DatabaseSource(
        database=target.dbname,
        host=target.host,
        server_version=server.version,
        pg_dump_version=pg_dump.version,
        **facts,
    )


def _read_snapshot(
    target: Target, snapshot: str, mode: str, limits: DumpSettings, deadline: float
) -> dict[str, Any]:
    """Tables, row counts, schemas and migration head, read in the exported snapshot, so
    they describe exactly what pg_dump dumps.

    Counting locks each table and (through the planner) its indexes until its transaction
    ends. Holding those for every table, next to pg_dump's own, ran out of lock slots
    ("out of shared memory") at a few thousand tables where pg_dump alone works; so the
    counts run in short transactions of COUNT_BATCH tables, each importing the snapshot,
    and all of them end before pg_dump starts.
    """
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
        conn.commit()  # a SET made in a transaction lasts the session only once committed
        counts = {}
        if mode != MODE_SCHEMA_ONLY:
            for first in range(0, len(tables), COUNT_BATCH):
                _begin_in(conn, snapshot)
                counts.update(
                    _count_batch(conn, tables[first : first + COUNT_BATCH], limits, deadline)
                )
                conn.commit()
    return {
        "tables": [f"{s}.{t}" for s, t in tables],
        "row_counts": counts,
        "schemas": schemas,
        "migration_head": head,
    }


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


def _run_pg_dump(
    out: BinaryIO,
    target: Target,
    snapshot: str,
    mode: str,
    pg_dump: Tool,
    limits: DumpSettings,
    log: logging.Logger,
    seconds_left: float,
) -> None:
    argv = [
        pg_dump.path,
        "--format=custom",
        "--compress=0",  # our pipeline compresses, faster and in parallel with the dump
        f"--snapshot={snapshot}",
        f"--lock-wait-timeout={limits.lock_wait_timeout}s",
        "--no-password",
        f"--dbname={target.conninfo()}",
    ]
    if mode == MODE_SCHEMA_ONLY:
        argv.append("--schema-only")
    env = {**target.tool_environment(limits.connect_timeout), "PGOPTIONS": "-c statement_timeout=0"}
    child = Child(argv, env=env, timeout=seconds_left, log=log)
    assert child.process.stdout is not None
    with running(child):
        while chunk := child.process.stdout.read(PUMP_CHUNK):
            out.write(chunk)
        code = child.wait()
    if child.timed_out:
        raise OperationFailed(timeout_message(limits.timeout))
    if code != 0:
        raise OperationFailed(_pg_dump_error(child, limits.lock_wait_timeout))


def _pg_dump_error(child: Child, lock_wait: int) -> str:
    text = child.stderr_text.lower()
    # pg_dump's --lock-wait-timeout is a statement timeout on its LOCK TABLE.
    waited = "statement timeout" in text and "lock table" in text
    if "lock timeout" in text or "could not obtain lock" in text or waited:
        locked = re.search(r"lock table (\S+)", text)
        return lock_message(f"The table {locked.group(1)}" if locked else "A table", lock_wait)
    if "server version mismatch" in text:
        return f"pg_dump is older than the server: {child.stderr_tail(1)}."
    return f"pg_dump failed (exit code {child.process.returncode}): {child.stderr_tail()}."
