"""Restoring a dump in ONE transaction, so a failure anywhere leaves the database as it was.

pg_restore turns the custom-format dump (read from our verified stream) into SQL, which
psql runs with --single-transaction and ON_ERROR_STOP, after a prelude that drops the
schemas the backup recreates and recreates ``public``. When this user may not drop the
schemas (managed databases), the prelude is left out and ``--clean --if-exists`` replaces
the backup's objects one by one; the report says so.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass, field
from typing import BinaryIO

import psycopg
from psycopg import sql

from cosmic_backup.components.database.connection import connect
from cosmic_backup.components.database.dump import count_rows
from cosmic_backup.components.database.tools import Tool
from cosmic_backup.components.database.url import Target
from cosmic_backup.errors import OperationFailed
from cosmic_backup.process import Child, pump, running


@dataclass
class RestoreOutcome:
    reset: bool  # whether the schemas were dropped and recreated
    notes: list[str] = field(default_factory=list)


def reset_statements(schemas: list[str]) -> str:
    """Drop every schema the backup recreates (and public), then recreate public."""
    names = sorted(set(schemas) | {"public"})
    drops = [
        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE;").format(sql.Identifier(name)).as_string(None)
        for name in names
    ]
    return " ".join([*drops, "CREATE SCHEMA public;"])


def can_reset(target: Target, schemas: list[str], timeout: int) -> bool:
    """Try the reset in a transaction that is always rolled back."""
    with connect(target, timeout) as conn:
        try:
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(reset_statements(schemas))
        except psycopg.errors.InsufficientPrivilege:
            return False
        finally:
            conn.rollback()
    return True


def restore_dump(
    payload: BinaryIO,
    target: Target,
    *,
    schemas: list[str],
    pg_restore: Tool,
    psql: Tool,
    connect_timeout: int,
    lock_wait_timeout: int,
    timeout: int,
    log: logging.Logger,
) -> RestoreOutcome:
    reset = can_reset(target, schemas, connect_timeout)
    outcome = RestoreOutcome(reset)
    if not reset:
        outcome.notes.append(
            "This user may not drop and recreate the schemas, so the restore replaced the "
            "backup's objects one by one; objects created since the backup were left in place."
        )
        log.warning("schema reset not permitted on %s; restoring without it", target.describe())
    env = {
        **target.tool_environment(),
        "PGOPTIONS": f"-c statement_timeout=0 -c lock_timeout={lock_wait_timeout}s",
    }
    restore_argv = [
        pg_restore.path,
        "--file=-",
        "--no-owner",
        "--clean",
        "--if-exists",
        "--exit-on-error",
    ]
    psql_argv = [
        psql.path,
        "--no-psqlrc",
        "--quiet",
        "--no-password",
        "--set=ON_ERROR_STOP=1",
        "--single-transaction",
        f"--dbname={target.conninfo()}",
    ]
    if reset:
        psql_argv += ["--command", reset_statements(schemas)]
    psql_argv += ["--file=-"]
    converter = Child(restore_argv, env=env, timeout=timeout, log=log, stdin=subprocess.PIPE)
    assert converter.process.stdout is not None and converter.process.stdin is not None
    runner = Child(
        psql_argv,
        env=env,
        timeout=timeout,
        log=log,
        stdin=converter.process.stdout,
        stdout=subprocess.DEVNULL,
    )
    converter.process.stdout.close()  # psql owns it now; pg_restore sees psql exit
    with running(converter, runner):
        pump(payload, converter.process.stdin)  # its last read checks the size and SHA-256
        restore_code, psql_code = converter.wait(), runner.wait()
    if converter.timed_out or runner.timed_out:
        raise OperationFailed(
            f"The restore did not finish within {timeout} s (BACKUP_TIMEOUT) and was rolled "
            "back; the database is unchanged."
        )
    if psql_code != 0 or restore_code != 0:
        failed = runner if psql_code != 0 else converter
        raise OperationFailed(
            f"The restore failed and was rolled back; the database is unchanged. "
            f"{failed.name}: {failed.stderr_tail()}."
        )
    return outcome


def current_row_counts(target: Target, tables: list[str], timeout: int) -> dict[str, int | None]:
    """Row counts of `tables` in the target now (None for a table that is missing)."""
    pairs = [tuple(name.split(".", 1)) for name in tables]
    counts: dict[str, int | None] = {}
    with connect(target, timeout, autocommit=True) as conn:
        for schema, table in pairs:
            try:
                counts.update(count_rows(conn, [(schema, table)], 60))
            except psycopg.errors.UndefinedTable:
                counts[f"{schema}.{table}"] = None
    return counts
