"""`restore database --jobs N`: pg_restore -j N, kept atomic by a new database and a swap.

A parallel pg_restore cannot run in one transaction and needs a file it can seek in, not
a pipe. So:

1. The verified plaintext (its MAC was checked before a byte of it was decrypted, and
   its SHA-256 is checked when it has been read to the end) is written to a 0600 file in
   a private 0700 folder beside the dumps (directory_dump.private_dump_folder, the one a
   parallel dump uses). The folder is removed in every case; one left by a run killed
   with SIGKILL is removed by the next command that takes the backup folder's lock.
2. A new database ``<target>_cosmic_<token>`` is created like the target (newdb.py),
   ``pg_restore -j N --exit-on-error`` fills it, and its row counts are compared with the
   manifest's.
3. The names are swapped in one short transaction once no other session is connected;
   then the old database is dropped (or kept with --keep-old). Any failure before the
   swap drops the new database: the target is never touched until the swap.

What it needs (CREATEDB, owning the target, the `postgres` database, no other sessions)
is checked before any work; when something is missing the restore falls back to the
one-transaction restore, and one sentence says why.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import psycopg

from cosmic_backup.components.database import newdb
from cosmic_backup.components.database.blockers import Blocker, describe_all
from cosmic_backup.components.database.directory_dump import (
    private_dump_folder,
    unpack_directory_dump,
)
from cosmic_backup.components.database.newdb import Shape
from cosmic_backup.components.database.restore import RestoreLimits, current_row_counts
from cosmic_backup.components.database.toc_offsets import set_data_offsets
from cosmic_backup.components.database.tools import Tool
from cosmic_backup.components.database.url import Target
from cosmic_backup.components.database.writes import WritesMark, swapped_note
from cosmic_backup.errors import IntegrityError, OperationFailed
from cosmic_backup.process import PUMP_CHUNK, Child, running

DUMP_FILE = "database.dump"


@dataclass(frozen=True)
class JobsOptions:
    jobs: int
    keep_old: bool = False
    terminate_sessions: bool = False


@dataclass
class ParallelOutcome:
    # The new database's row counts, checked before the swap; None when the restore fell
    # back to one transaction (from the same file) and the counts are still to be taken.
    counts: dict[str, int | None] | None
    notes: list[str] = field(default_factory=list)


# The one-transaction restore, given the dump (a file, or the folder of a directory-format
# dump) and the sentence saying why; its notes.
OneTransaction = Callable[[Path, str], list[str]]


class Fallback(Exception):
    """The parallel restore is not possible here; `sentence` says why."""

    def __init__(self, sentence: str) -> None:
        super().__init__(sentence)
        self.sentence = sentence


# -- before any work ---------------------------------------------------------------------
def check_possible(target: Target, options: JobsOptions, connect_timeout: int) -> Shape:
    """The target's shape when a parallel restore can run; else `Fallback` with the reason."""
    n = options.jobs
    try:
        with newdb.connect_maintenance(target, connect_timeout) as conn:
            shape = newdb.read_shape(conn, target.dbname)
            sessions = newdb.other_sessions(conn, [target.dbname])
    except psycopg.Error:
        raise Fallback(
            f"--jobs {n} needs to connect to the postgres maintenance database of this server "
            "to create the new database, and cannot; restoring in one transaction instead."
        ) from None
    if shape is None:
        raise Fallback(
            f"--jobs {n} restores into a new database and renames it to {target.dbname}, "
            "which was not found on the server; restoring in one transaction instead."
        )
    if not (shape.superuser or shape.createdb):
        raise Fallback(
            f"--jobs {n} needs CREATEDB to restore into a new database; restoring in one "
            "transaction instead."
        )
    if not (shape.superuser or shape.owns):
        raise Fallback(
            f"--jobs {n} needs to own database {target.dbname} (or be a superuser) to rename "
            f"it, and its owner is {shape.owner}; restoring in one transaction instead."
        )
    if sessions and not options.terminate_sessions:
        raise Fallback(
            f"--jobs {n} needs no other sessions on database {target.dbname} at the swap and "
            f"{sessions} {'is' if sessions == 1 else 'are'} connected now (stop the app, or "
            "pass --terminate-sessions); "
            "restoring in one transaction instead."
        )
    return shape


def remove_leftovers(target: Target, timeout: int, log: logging.Logger) -> None:
    """Drop the new database a killed --jobs restore of `target` left (its folder goes
    with the other dump folders, see directory_dump.remove_leftover_folders).

    Call only while holding the backup root's lock. Never fails the run: it only logs."""
    try:
        with newdb.connect_maintenance(target, timeout) as conn:
            gone, kept = newdb.leftover_databases(conn, target.dbname)
            for name in gone:
                if newdb.drop(conn, name, log, ours_on=target, timeout=timeout):
                    log.info("dropped %s, left by an interrupted --jobs restore", name)
    except psycopg.Error as exc:
        log.info("leftovers of --jobs restores not checked on the server: %s", exc)
        return
    for name in kept:
        log.warning("%s, the old copy of an earlier --jobs restore, is still there", name)


# -- the restore -------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    target: Target
    shape: Shape
    options: JobsOptions
    pg_restore: Tool
    limits: RestoreLimits
    tables: list[str]  # whose rows the manifest counted
    expected: dict[str, int]
    extra: tuple[str, ...] = ()  # e.g. --no-privileges
    writes: WritesMark | None = None  # taken when the pre-restore backup began
    say: Callable[[str], None] = lambda _notice: None  # notices while it waits


def restore_parallel(
    payload: BinaryIO,
    job: Job,
    folders: Path,
    log: logging.Logger,
    one_transaction: OneTransaction,
    *,
    directory: bool = False,
) -> ParallelOutcome:
    """Write the dump to a private file (a directory-format dump: unpack it into a private
    folder), then restore it into a new database and swap.

    When the server refuses the new database after all (a managed server may refuse
    CREATE DATABASE to a role with CREATEDB), the same dump goes through the
    one-transaction restore instead."""
    with private_dump_folder(folders) as folder:
        if directory:
            dump = unpack_directory_dump(payload, folder / "unpacked")
        else:
            dump = folder / DUMP_FILE
            write_private(payload, dump, job.target)
            # pg_dump wrote it through a pipe: without data offsets pg_restore -j would
            # scan the file for every table.
            log.info("data offsets filled in for %d TOC entries", set_data_offsets(dump))
        try:
            return _into_new_database(dump, job, log)
        except Fallback as fallback:
            log.warning("%s", fallback.sentence)
            try:
                return ParallelOutcome(None, one_transaction(dump, fallback.sentence))
            except OperationFailed as exc:
                # The operator asked for --jobs: the failure says why it ran otherwise.
                raise type(exc)(f"{fallback.sentence} {exc.message}") from None


def write_private(payload: BinaryIO, path: Path, target: Target) -> None:
    """Copy the verified stream into a new 0600 file; reading it to the end checks its size
    and SHA-256 against the manifest."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as sink:
            while chunk := payload.read(PUMP_CHUNK):
                sink.write(chunk)
    except OSError as exc:
        raise OperationFailed(
            f"The dump could not be written to {path.parent} for the --jobs restore: "
            f"{exc.strerror or exc}; {target.describe()} is unchanged. Free some space "
            "there, or restore without --jobs."
        ) from None


def _into_new_database(dump: Path, job: Job, log: logging.Logger) -> ParallelOutcome:
    token = secrets.token_hex(3)
    name = job.target.dbname
    new, old = newdb.new_name(name, token), newdb.old_name(name, token)
    timeout = job.limits.connect_timeout
    with newdb.connect_maintenance(job.target, timeout) as conn:
        try:
            newdb.create_like(conn, job.shape, new)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise Fallback(
                f"--jobs {job.options.jobs} could not create the new database "
                f"({str(exc).strip().splitlines()[0]}); restoring in one transaction instead."
            ) from None
    log.info("restoring into the new database %s with %d jobs", new, job.options.jobs)
    result, dropped = newdb.SwapResult(False, 0), False
    try:
        newdb_target = Target({**job.target.params, "dbname": new}, job.target.notes)
        with newdb.connect_maintenance(job.target, timeout) as conn:
            newdb.copy_properties(conn, job.shape, new)
        _run_pg_restore(dump, newdb_target, job, log)
        counts = _checked_counts(newdb_target, job)
        result = _swap(job, new, old, log)
    finally:
        if not result.done:
            dropped = _drop_quietly(job.target, new, timeout, log)
    if not result.done:
        raise OperationFailed(_not_swapped(job, result, new, dropped))
    return ParallelOutcome(counts, _after_swap(job, old, log))


def _drop_quietly(target: Target, name: str, timeout: int, log: logging.Logger) -> bool:
    """Drop our new database on the way out of a failure, never hiding that failure;
    True when it is gone."""
    try:
        with newdb.connect_maintenance(target, timeout) as conn:
            return newdb.drop(conn, name, log, ours_on=target, timeout=timeout)
    except psycopg.Error as exc:
        log.warning("could not drop %s (the next restore will): %s", name, exc)
        return False


# pg_restore -j runs a post-data entry as soon as what it depends on is restored, and a
# domain's ADD CONSTRAINT ... NOT VALID depends on the domain only: run alongside the data,
# it makes the COPY of the rows that break it fail. So the data is loaded first, then the
# post-data entries (indexes, constraints, triggers), each pass with N jobs.
PASSES = (("--section=pre-data", "--section=data"), ("--section=post-data",))


def _run_pg_restore(dump: Path, into: Target, job: Job, log: logging.Logger) -> None:
    began = time.monotonic()
    for sections in PASSES:
        left = max(1, job.limits.timeout - int(time.monotonic() - began))
        _run_pass(dump, into, job, log, sections, left)


def _run_pass(
    dump: Path, into: Target, job: Job, log: logging.Logger, sections: tuple[str, ...], left: int
) -> None:
    argv = [job.pg_restore.path, f"--jobs={job.options.jobs}", "--exit-on-error", *sections]
    argv += ["--no-owner", "--no-password", *job.extra, f"--dbname={into.conninfo()}", str(dump)]
    env = {
        **job.target.tool_environment(job.limits.connect_timeout),
        "PGOPTIONS": "-c statement_timeout=0",
    }
    child = Child(argv, env=env, timeout=left, log=log, stdout=subprocess.DEVNULL)
    with running(child):
        code = child.wait()
    unchanged = f"{job.target.describe()} is unchanged"
    if child.timed_out:
        raise OperationFailed(
            f"The --jobs restore did not finish within {job.limits.timeout} s "
            f"(BACKUP_TIMEOUT); nothing was swapped and {unchanged}."
        )
    if code != 0:
        tail = child.stderr_tail()
        said = (tail if tail.startswith(child.name) else f"{child.name}: {tail}").rstrip(".")
        raise OperationFailed(
            f"The --jobs restore into a new database failed, so nothing was swapped and "
            f"{unchanged}. {said}."
        )


def _checked_counts(into: Target, job: Job) -> dict[str, int | None]:
    now = current_row_counts(into, job.tables, job.limits.connect_timeout)
    differ = mismatched_counts(job.expected, now)
    if differ:
        raise IntegrityError(
            f"The --jobs restore finished in a new database, but its row counts differ from "
            f"the backup: {describe_mismatches(differ)}; nothing was swapped and "
            f"{job.target.describe()} is unchanged. Check the backup with `cosmic-backup "
            "verify`."
        )
    return now


def _swap(job: Job, new: str, old: str, log: logging.Logger) -> newdb.SwapResult:
    def waiting(sessions: list[Blocker]) -> None:
        notice = (
            f"The swap is waiting for the session(s) connected to database "
            f"{job.shape.name} to end: {describe_all(sessions)}; it gives up after "
            f"{_swap_wait(job)} s (BACKUP_LOCK_WAIT_TIMEOUT)."
        )
        log.warning("%s", notice)
        job.say(notice)

    return newdb.swap(
        job.target,
        job.shape,
        new,
        old,
        wait=_swap_wait(job),
        terminate=job.options.terminate_sessions,
        timeout=job.limits.connect_timeout,
        on_wait=waiting,
    )


def _swap_wait(job: Job) -> int:
    return min(job.limits.lock_wait_timeout, job.limits.timeout)


def _not_swapped(job: Job, result: newdb.SwapResult, new: str, dropped: bool) -> str:
    """The swap gave up: say what became of the restored copy as it is, not as hoped."""
    copy = "and was dropped" if dropped else f"and is left as {new} (drop it by hand)"
    who = f" ({describe_all(list(result.who))})" if result.who else ""
    return (
        f"{result.sessions} other session(s) stayed connected to database "
        f"{job.shape.name}{who} for "
        f"{_swap_wait(job)} s (BACKUP_LOCK_WAIT_TIMEOUT), so the restored copy was not "
        f"swapped in {copy}; the database is unchanged. Stop the app and run again, or "
        "pass --terminate-sessions to end those sessions."
    )


def _after_swap(job: Job, old: str, log: logging.Logger) -> list[str]:
    n, name = job.options.jobs, job.shape.name
    notes = [f"Restored with {n} parallel jobs into a new database, swapped in as {name}."]
    with newdb.connect_maintenance(job.target, job.limits.connect_timeout) as conn:
        if job.writes is not None:  # read before the old database and its counts go
            lost = swapped_note(conn, job.writes, old, kept=job.options.keep_old)
            notes += [lost] if lost else []
        if job.options.keep_old:
            notes.append(
                f"The database as it was before is kept as {old} (--keep-old); drop it when "
                "you no longer need it."
            )
            return notes
        dropped = newdb.drop(conn, old, log)
    if dropped:
        notes.append(f"The database as it was before ({old}) was dropped.")
    else:
        notes.append(f"The database as it was before is kept as {old}: it could not be dropped.")
    return notes


# -- row counts: the same comparison as the one-transaction restore ----------------------
def mismatched_counts(
    expected: dict[str, int], now: dict[str, int | None]
) -> dict[str, tuple[int, int | None]]:
    return {
        name: (count, now.get(name)) for name, count in expected.items() if now.get(name) != count
    }


def describe_mismatches(mismatched: dict[str, tuple[int, int | None]]) -> str:
    return ", ".join(
        f"{n} {'missing' if got is None else f'{got} rows'} (backup had {want})"
        for n, (want, got) in sorted(mismatched.items())
    )
