"""Restoring a dump in ONE transaction, so a failure anywhere leaves the database as it was.

``pg_restore --single-transaction --file=-`` turns the custom-format dump (read from our
verified stream) into SQL wrapped in one BEGIN ... COMMIT, which we relay to psql
(ON_ERROR_STOP) after a prelude: our own ``BEGIN`` (pg_restore's then only warns), then
the reset (reset.py): drop the schemas the backup recreates (and ``public``) and the
large objects, recreate ``public`` as it was, refuse to drop objects outside those
schemas, and never queue for a lock while holding others.

The COMMIT is in the last bytes of pg_restore's output, and the relay holds those back
until pg_restore has ended well and our stream has passed its size and SHA-256 check. If
anything fails first (a truncated stream, a timeout, an interrupt), psql reaches the end
of its input inside the open transaction and the server rolls it back. (``psql
--single-transaction`` would COMMIT whatever had arrived; and without ``-1`` pg_restore
wraps large objects in a BEGIN/COMMIT of its own, which would commit half a restore.)

When this user may not drop the schemas (managed databases), the reset is left out and
``--clean --if-exists`` replaces the backup's objects one by one; the report says so.
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

import psycopg

from cosmic_backup.components.database.connection import connect
from cosmic_backup.components.database.dump import count_rows
from cosmic_backup.components.database.reset import lock_block, reset_block
from cosmic_backup.components.database.tools import Tool
from cosmic_backup.components.database.url import Target
from cosmic_backup.errors import OperationFailed
from cosmic_backup.process import PUMP_CHUNK, Child, pump, running

# pg_restore's COMMIT and the comments after it are its last ~200 bytes.
HELD_BACK = 64 * 1024
CLIENT_CHECK_MS = 1000


@dataclass
class RestoreOutcome:
    reset: bool  # whether the schemas were dropped and recreated
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RestoreLimits:
    connect_timeout: int
    lock_wait_timeout: int
    timeout: int


def can_reset(
    target: Target, schemas: list[str], limits: RestoreLimits, *, drop_dependents: bool
) -> bool:
    """Try the reset in a transaction that is always rolled back: False when this user
    may not drop the schemas; one sentence when it would drop objects outside them or
    the locks it needs are not granted."""
    wait = min(limits.lock_wait_timeout, limits.timeout)
    block = reset_block(schemas, lock_wait=wait, drop_dependents=drop_dependents)
    try:
        _trial(target, block, limits)
    except psycopg.errors.InsufficientPrivilege:
        _trial(target, lock_block(schemas, lock_wait=wait), limits)  # the way without it
        return False
    except psycopg.errors.DependentObjectsStillExist as exc:
        raise OperationFailed(_dependents_message(target, exc)) from None
    return True


def _trial(target: Target, statement: str, limits: RestoreLimits) -> None:
    """Run `statement` in a transaction that is always rolled back."""
    wait = min(limits.lock_wait_timeout, limits.timeout)
    with connect(target, limits.connect_timeout) as conn:
        try:
            conn.execute("SET LOCAL statement_timeout = 0")  # as the restore itself runs
            conn.execute(statement)
        except psycopg.errors.LockNotAvailable:
            raise OperationFailed(
                f"Objects in {target.describe()} are locked by another session and the "
                f"restore gave up after waiting {wait} s (BACKUP_LOCK_WAIT_TIMEOUT); the "
                "database is unchanged. Try again when they are free."
            ) from None
        finally:
            conn.rollback()


def _dependents_message(target: Target, exc: psycopg.Error) -> str:
    found = re.search(r"would drop (\d+) object", exc.diag.message_primary or "")
    count = found.group(1) if found else "some"
    return (
        f"The restore would drop {count} object(s) in {target.describe()} that are outside "
        "the schemas the backup holds but depend on objects in them: "
        f"{exc.diag.message_detail or 'see the server log'}; the database is unchanged. "
        "Move or drop them first (or back them up), or pass --drop-dependents to let the "
        "restore drop them."
    )


def restore_dump(
    payload: BinaryIO,
    target: Target,
    *,
    schemas: list[str],
    pg_restore: Tool,
    psql: Tool,
    server_major: int,
    limits: RestoreLimits,
    log: logging.Logger,
    drop_dependents: bool = False,
    no_privileges: bool = False,
    dump_dir: Path | None = None,
) -> RestoreOutcome:
    """Restore the custom-format dump `payload`; or, with `dump_dir`, the directory-format
    dump unpacked there (directory_dump.py), `payload` then being read to its end already."""
    reset = can_reset(target, schemas, limits, drop_dependents=drop_dependents)
    outcome = RestoreOutcome(reset)
    if not reset:
        outcome.notes.append(
            "This user may not drop and recreate the schemas, so the restore replaced the "
            "backup's objects one by one; objects created since the backup were left in place."
        )
        log.warning("schema reset not permitted on %s; restoring without it", target.describe())
    wait = min(limits.lock_wait_timeout, limits.timeout)
    if reset:
        first = reset_block(schemas, lock_wait=wait, drop_dependents=drop_dependents)
    else:
        first = lock_block(schemas, lock_wait=wait)
    prelude = f"BEGIN;\n{first}\n"
    options = f"-c statement_timeout=0 -c lock_timeout={limits.lock_wait_timeout}s"
    if server_major >= 14:
        # When psql is stopped (time limit, interrupt), the server notices within a second
        # and rolls back, instead of finishing a long CREATE INDEX with the locks held.
        options += f" -c client_connection_check_interval={CLIENT_CHECK_MS}"
    # --no-privileges: no GRANT/REVOKE and no default privileges from the backup, for
    # roles it names that this server does not have.
    extra = ("--no-privileges",) if no_privileges else ()
    if no_privileges:
        outcome.notes.append(
            "Restored without the backup's privileges (--no-privileges): grant what the "
            "app's roles need on this server."
        )
    if dump_dir is not None:
        extra = (*extra, str(dump_dir))  # pg_restore reads the folder, not its stdin
    _run_restore(payload, target, prelude, options, (pg_restore, psql), limits, log, extra)
    return outcome


def _run_restore(
    payload: BinaryIO,
    target: Target,
    prelude: str,
    options: str,
    tools: tuple[Tool, Tool],
    limits: RestoreLimits,
    log: logging.Logger,
    extra: tuple[str, ...] = (),
) -> None:
    pg_restore, psql = tools
    env = {**target.tool_environment(limits.connect_timeout), "PGOPTIONS": options}
    restore_argv = [pg_restore.path, "--file=-", "--single-transaction", "--exit-on-error"]
    restore_argv += ["--no-owner", "--clean", "--if-exists", *extra]
    psql_argv = [psql.path, "--no-psqlrc", "--quiet", "--no-password", "--set=ON_ERROR_STOP=1"]
    psql_argv += [f"--dbname={target.conninfo()}", "--file=-"]
    converter = Child(restore_argv, env=env, timeout=limits.timeout, log=log, stdin=subprocess.PIPE)
    runner = Child(
        psql_argv,
        env=env,
        timeout=limits.timeout,
        log=log,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    assert converter.process.stdin and converter.process.stdout and runner.process.stdin
    relay = _Relay(prelude.encode(), converter.process.stdout, runner.process.stdin)
    with running(converter, runner):
        relay.start()
        pump(payload, converter.process.stdin)
        if not (converter.ended_badly or runner.ended_badly):
            while payload.read(PUMP_CHUNK):  # pg_restore may stop early; the last read checks
                pass  # the stream's size and SHA-256, and must happen before any COMMIT
        restore_code = converter.wait()
        relay.join()
        complete = restore_code == 0 and not converter.timed_out and relay.tail is not None
        _finish(runner.process.stdin, relay.tail if complete else None)
        runner.wait()
    _check_outcome(converter, runner, limits.timeout)


class _Relay(threading.Thread):
    """The prelude, then pg_restore's SQL, into psql: all but the last HELD_BACK bytes."""

    def __init__(self, prelude: bytes, source: IO[bytes], sink: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self.prelude, self.source, self.sink = prelude, source, sink
        self.tail: bytes | None = None  # what was held back, once the source has ended

    def run(self) -> None:
        try:
            self.sink.write(self.prelude)
            pending = b""
            while chunk := self.source.read(PUMP_CHUNK):
                pending += chunk
                if len(pending) > HELD_BACK:
                    self.sink.write(memoryview(pending)[:-HELD_BACK])
                    pending = pending[-HELD_BACK:]
            self.tail = pending
        except BrokenPipeError:
            pass  # psql stopped (and pg_restore with it): psql's exit code and stderr say why


def _finish(sink: IO[bytes], tail: bytes | None) -> None:
    """End psql's input: with the tail (and its COMMIT) when all is well, else bare."""
    with contextlib.suppress(BrokenPipeError):
        if tail is not None:
            if b"\nCOMMIT;\n" not in tail:
                raise OperationFailed(
                    "pg_restore's output did not end with its COMMIT, so the restore was "
                    "rolled back; the database is unchanged."
                )
            sink.write(tail)
        sink.close()


def _check_outcome(converter: Child, runner: Child, timeout: int) -> None:
    if converter.timed_out or runner.timed_out:
        raise OperationFailed(
            f"The restore did not finish within {timeout} s (BACKUP_TIMEOUT) and was rolled "
            "back; the database is unchanged."
        )
    # The child that failed first says why; the other was stopped because of it. When
    # both failed of themselves, psql's error explains pg_restore's broken pipe.
    failed = [c for c in (runner, converter) if c.failed_by_itself]
    failed += [c for c in (runner, converter) if c.process.returncode != 0]
    if failed:
        child = failed[0]
        tail = child.stderr_tail()  # its lines usually begin with its own name
        said = (tail if tail.startswith(child.name) else f"{child.name}: {tail}").rstrip(".")
        raise OperationFailed(
            f"The restore failed and was rolled back; the database is unchanged. {said}."
        )


def current_row_counts(target: Target, tables: list[str], timeout: int) -> dict[str, int | None]:
    """Row counts of `tables` ("schema.table" names) in the target now; None for a table
    that is missing.

    Schema and table names may themselves hold dots, so a name is not split: it is
    matched against the target's own (schema, table) pairs.
    """
    counts: dict[str, int | None] = dict.fromkeys(tables)
    with connect(target, timeout, autocommit=True) as conn:
        pairs = conn.execute(QUALIFIED_TABLES, [tables]).fetchall()
        for name, schema, table in pairs:
            if counts.get(name) is None:
                try:
                    counts.update({name: count_rows(conn, [(schema, table)], 60)[name]})
                except psycopg.errors.UndefinedTable:
                    counts[name] = None
    return counts


# The tables whose "schema.table" name is one of those asked for, as the dump names them.
QUALIFIED_TABLES = """
SELECT n.nspname || '.' || c.relname, n.nspname, c.relname
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname || '.' || c.relname = ANY (%s)
ORDER BY 2, 3
"""
