"""Restoring a dump in ONE transaction, so a failure anywhere leaves the database as it was.

``pg_restore --single-transaction --file=-`` turns the custom-format dump (read from our
verified stream) into SQL wrapped in one BEGIN ... COMMIT, which psql (ON_ERROR_STOP)
reads straight from pg_restore's pipe after a prelude we write into that pipe first: our
own ``BEGIN`` (pg_restore's then only warns), then the reset (reset.py): drop the schemas
the backup recreates (and ``public``) and the large objects, recreate ``public`` as it
was, refuse to drop objects outside those schemas, and never queue for a lock while
holding others. No byte of the SQL passes through this process.

pg_restore writes its COMMIT only after it has read the whole dump (the last bytes end
the last data block, or the table of contents of a dump without data), so the pump
holds the dump's last HELD_BACK bytes back until our stream has passed its size and
SHA-256 check. If anything fails first (a truncated stream, a failed check, a timeout,
an interrupt), pg_restore never writes its COMMIT, psql reaches the end of its input
inside the open transaction (or is stopped), and the server rolls it back. (``psql
--single-transaction`` would COMMIT whatever had arrived; and without ``-1`` pg_restore
wraps large objects in a BEGIN/COMMIT of its own, which would commit half a restore.)

When this user may not drop the schemas (managed databases), the reset is left out and
``--clean --if-exists`` replaces the backup's objects one by one; the report says so
(clearing.py decides that, and what makes pg_restore's drops work either way).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

import psycopg

from cosmic_backup.components.database.blockers import (
    describe_all,
    find_blockers,
    restore_application_name,
    watching,
)
from cosmic_backup.components.database.clearing import clearing, dump_head
from cosmic_backup.components.database.connection import connect
from cosmic_backup.components.database.dump import count_rows
from cosmic_backup.components.database.reset import lock_block, reset_block, reset_schemas
from cosmic_backup.components.database.tools import Tool
from cosmic_backup.components.database.url import Target
from cosmic_backup.errors import OperationFailed
from cosmic_backup.process import PUMP_CHUNK, Child, running

# The dump's last bytes, held back from pg_restore until the stream passed its final
# check: without them pg_restore cannot finish, so it cannot write its COMMIT.
HELD_BACK = 64 * 1024
# Pipes of 1 MiB (Linux's default limit for a user) instead of 64 KiB: fewer wake-ups
# and stalls between us, pg_restore and psql.
PIPE_SIZE = 1024 * 1024
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
        _trial(target, block, limits, schemas)
    except psycopg.errors.InsufficientPrivilege:
        _trial(target, lock_block(schemas, lock_wait=wait), limits, schemas)  # without it
        return False
    except psycopg.errors.DependentObjectsStillExist as exc:
        raise OperationFailed(_dependents_message(target, exc)) from None
    return True


def _trial(target: Target, statement: str, limits: RestoreLimits, schemas: list[str]) -> None:
    """Run `statement` in a transaction that is always rolled back."""
    wait = min(limits.lock_wait_timeout, limits.timeout)
    app = restore_application_name()  # how the blocker watch knows our session
    with connect(target, limits.connect_timeout, application_name=app) as conn:
        try:
            conn.execute("SET LOCAL statement_timeout = 0")  # as the restore itself runs
            conn.execute(statement)
        except psycopg.errors.LockNotAvailable:
            conn.rollback()
            raise OperationFailed(_locked_message(target, conn, schemas, wait)) from None
        finally:
            conn.rollback()


def _locked_message(target: Target, conn: psycopg.Connection, schemas: list[str], wait: int) -> str:
    """The wait gave up: name the sessions still holding the locks, when any are."""
    blockers = find_blockers(conn, reset_schemas(schemas), anyway=True)
    who = f", {describe_all(blockers)}," if blockers else ""
    end = (
        f"End that session (SELECT pg_terminate_backend({blockers[0].pid})) or let its "
        "transaction finish, and try again."
        if blockers
        else "Try again when they are free."
    )
    return (
        f"Objects in {target.describe()} are locked by another session{who} and the "
        f"restore gave up after waiting {wait} s (BACKUP_LOCK_WAIT_TIMEOUT); the database "
        f"is unchanged. {end}"
    )


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
    say: Callable[[str], None] = lambda _notice: None,
) -> RestoreOutcome:
    """Restore the custom-format dump `payload`; or, with `dump_dir`, the directory-format
    dump unpacked there (directory_dump.py), `payload` then being read to its end already.

    While it waits for another session's locks, `say` (and the log) names that session."""
    wait = min(limits.lock_wait_timeout, limits.timeout)
    timeouts = (limits.connect_timeout, wait)
    with watching(target, reset_schemas(schemas), timeouts, log, say) as watch:
        try:
            return _restore_dump(
                payload,
                target,
                schemas=schemas,
                tools=(pg_restore, psql),
                server_major=server_major,
                limits=limits,
                log=log,
                options=(drop_dependents, no_privileges),
                dump_dir=dump_dir,
            )
        except OperationFailed as exc:
            named = watch.named(exc.message)
            if named == exc.message:
                raise
            raise OperationFailed(named) from None


def _restore_dump(
    payload: BinaryIO,
    target: Target,
    *,
    schemas: list[str],
    tools: tuple[Tool, Tool],
    server_major: int,
    limits: RestoreLimits,
    log: logging.Logger,
    options: tuple[bool, bool],  # (drop_dependents, no_privileges)
    dump_dir: Path | None,
) -> RestoreOutcome:
    pg_restore, psql = tools
    drop_dependents, no_privileges = options
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
    payload, head = dump_head(payload, dump_dir)
    clear = clearing(reset=reset, head=head)  # whether pg_restore --clean, and what first
    prelude = f"BEGIN;\n{first}\n{clear.sql}\n"
    options = f"-c statement_timeout=0 -c lock_timeout={limits.lock_wait_timeout}s"
    if server_major >= 14:
        # When psql is stopped (time limit, interrupt), the server notices within a second
        # and rolls back, instead of finishing a long CREATE INDEX with the locks held.
        options += f" -c client_connection_check_interval={CLIENT_CHECK_MS}"
    # --no-privileges: no GRANT/REVOKE and no default privileges from the backup, for
    # roles it names that this server does not have.
    extra = (*clear.options, *(("--no-privileges",) if no_privileges else ()))
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
    env["PGAPPNAME"] = restore_application_name()  # psql's session, for the blocker watch
    restore_argv = [pg_restore.path, "--file=-", "--single-transaction", "--exit-on-error"]
    restore_argv += ["--no-owner", *extra]
    psql_argv = [psql.path, "--no-psqlrc", "--quiet", "--no-password", "--set=ON_ERROR_STOP=1"]
    psql_argv += [f"--dbname={target.conninfo()}", "--file=-"]
    runner, converter = _start_joined(restore_argv, psql_argv, prelude.encode(), env, limits, log)
    assert converter.process.stdin is not None
    with running(runner, converter) as failures:
        if _pump_holding_back(payload, converter.process.stdin):
            converter.wait()
            if converter.process.returncode == 0:
                while payload.read(PUMP_CHUNK):  # pg_restore stopped reading, yet ended well:
                    pass  # the stream's size and SHA-256 are still checked to its end
        converter.wait()
        runner.wait()
    _check_outcome(converter, runner, failures.first_failure(), limits.timeout)


def _start_joined(
    restore_argv: list[str],
    psql_argv: list[str],
    prelude: bytes,
    env: dict[str, str],
    limits: RestoreLimits,
    log: logging.Logger,
) -> tuple[Child, Child]:
    """psql reading one pipe into which the prelude is written first, then pg_restore
    writing its SQL into the same pipe (our end closed, so psql sees the end of it when
    pg_restore ends)."""
    read_end, write_end = os.pipe()
    try:
        _widen(write_end)
        runner = Child(
            psql_argv,
            env=env,
            timeout=limits.timeout,
            log=log,
            stdin=read_end,
            stdout=subprocess.DEVNULL,
        )
        os.close(read_end)
        read_end = -1
        try:
            with contextlib.suppress(BrokenPipeError):  # psql ended: its stderr says why
                _write_all(write_end, prelude)
            converter = Child(
                restore_argv,
                env=env,
                timeout=limits.timeout,
                log=log,
                stdin=subprocess.PIPE,
                stdout=write_end,
            )
        except BaseException:
            runner.kill()
            runner.wait()
            raise
    finally:
        for end in (read_end, write_end):
            if end >= 0:
                os.close(end)
    return runner, converter


def _pump_holding_back(payload: BinaryIO, sink: IO[bytes]) -> bool:
    """Copy `payload` into pg_restore's stdin, its last HELD_BACK bytes only once the
    payload's final read (its size and SHA-256 check) has passed; then close it.

    True when pg_restore stopped reading first: its exit code and stderr say why.
    """
    fd = sink.fileno()
    _widen(fd)
    held: bytes | memoryview = b""
    try:
        while chunk := payload.read(PUMP_CHUNK):
            if len(chunk) >= HELD_BACK:
                _write_all(fd, held)
                _write_all(fd, memoryview(chunk)[:-HELD_BACK])
                held = memoryview(chunk)[-HELD_BACK:]
            else:  # a short read: the tail held is the last HELD_BACK bytes of both
                joined = bytes(held) + chunk
                _write_all(fd, memoryview(joined)[:-HELD_BACK])
                held = joined[-HELD_BACK:]
        _write_all(fd, held)  # the payload's last read passed: pg_restore may finish
    except BrokenPipeError:
        return True
    finally:
        with contextlib.suppress(BrokenPipeError):
            sink.close()
    return False


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _widen(fd: int) -> None:
    """Best effort: a pipe keeps its default size where the system refuses."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def _check_outcome(converter: Child, runner: Child, failed: Child | None, timeout: int) -> None:
    """`failed`, the child that failed first (see Failures), says why the restore failed;
    the other was stopped because of it, or died writing into psql's closed pipe."""
    if converter.timed_out or runner.timed_out:
        raise OperationFailed(
            f"The restore did not finish within {timeout} s (BACKUP_TIMEOUT) and was rolled "
            "back; the database is unchanged."
        )
    if failed is not None:
        tail = failed.stderr_tail()  # its lines usually begin with its own name
        said = (tail if tail.startswith(failed.name) else f"{failed.name}: {tail}").rstrip(".")
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
