"""The database component: PostgreSQL through pg_dump, pg_restore and psql."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

import psycopg

from cosmic_backup.components.base import (
    BackupRequest,
    Component,
    Produced,
    RestorePlan,
    RestoreReport,
    RestoreRequest,
)
from cosmic_backup.components.database.connection import ServerInfo, check_connection, connect
from cosmic_backup.components.database.directory_dump import (
    DirectoryDump,
    check_directory_payload,
    unpacked_dump,
)
from cosmic_backup.components.database.dump import DumpSettings, take_dump
from cosmic_backup.components.database.migrations import migration_head
from cosmic_backup.components.database.parallel_restore import (
    Fallback,
    Job,
    JobsOptions,
    describe_mismatches,
    mismatched_counts,
    remove_leftovers,
    restore_parallel,
)
from cosmic_backup.components.database.parallel_restore import (
    check_possible as parallel_possible,
)
from cosmic_backup.components.database.provenance import other_database_sentence, source_note
from cosmic_backup.components.database.replication import (
    Replication,
    jobs_obstacle,
    read_replication,
    restored_subscriptions_note,
    slots_note,
    subscriber_refusal,
)
from cosmic_backup.components.database.restore import (
    RestoreLimits,
    current_row_counts,
    restore_dump,
)
from cosmic_backup.components.database.row_order import RowOrderSettings
from cosmic_backup.components.database.source import DatabaseSource
from cosmic_backup.components.database.tools import Tool, find_tool
from cosmic_backup.components.database.url import Target, parse_database_url
from cosmic_backup.components.database.writes import (
    BEFORE_NOTE,
    mark_writes,
    one_transaction_note,
)
from cosmic_backup.errors import IntegrityError, NotConfigured, OperationFailed
from cosmic_backup.format.manifest import (
    MODE_FULL,
    MODE_SCHEMA_ONLY,
    TAG_OTHER_TARGET,
    TAG_PRE_RESTORE,
    Manifest,
)
from cosmic_backup.process import Child, pump, running
from cosmic_backup.redact import redact
from cosmic_backup.settings import Settings

__all__ = ["DatabaseComponent"]


class DatabaseComponent(Component):
    name = "database"
    payload = "dump"
    producer_cores = 2  # the server's COPY and pg_dump

    def __init__(self, settings: Settings, log: logging.Logger) -> None:
        super().__init__(settings, log)
        if settings.db_jobs > 1:
            # A parallel dump is a folder sealed as a tar: the artifact's name says so.
            self.payload = "dump.tar"  # type: ignore[misc]

    def _dump_folders(self) -> Path:
        """Where a dump's temporary folders go (directory_dump.py): beside the dumps."""
        return self.settings.path("backup_dir") / self.name

    # -- settings -----------------------------------------------------------------------
    def check_configured(self) -> None:
        if not self.settings.database_url:
            raise NotConfigured(
                "DATABASE_URL is not set, so there is no database to back up; set it to "
                "the app's PostgreSQL URL, in the environment or the app's .env."
            )

    def _target(self, url: str | None) -> Target:
        if not url:
            self.check_configured()
        target = parse_database_url(
            url or self.settings.database_url, "the --into URL" if url else "DATABASE_URL"
        )
        for note in target.notes:
            self.log.info("%s", note)
        return target

    def _connect_checked(self, target: Target) -> ServerInfo:
        return check_connection(
            target,
            timeout=self.settings.connect_timeout,
            attempts=self.settings.connect_retries,
            log=self.log,
            wait=self.settings.connect_wait,
        )

    def mode_for(self, target: Target, requested: str | None) -> str:
        """What was asked (--full, --schema-only); else Neon backups are schema-only (the
        seed's choice, to avoid timeouts) unless BACKUP_NEON_FULL, and others full."""
        if requested:
            return requested
        if target.is_neon and not self.settings.neon_full:
            return MODE_SCHEMA_ONLY
        return MODE_FULL

    # -- backup -------------------------------------------------------------------------
    def produce(self, out: BinaryIO, request: BackupRequest) -> Produced:
        target = self._target(request.source_override)
        mode = self.mode_for(target, request.mode)
        server = self._connect_checked(target)
        pg_dump = find_tool("pg_dump", server.major, self.settings.pg_bin_dir)
        self.log.info(
            "dumping %s (%s) with %s %s", target.describe(), mode, pg_dump.path, pg_dump.version
        )
        limits = DumpSettings(
            self.settings.connect_timeout, self.settings.lock_wait_timeout, self.settings.timeout
        )
        jobs = self.settings.db_jobs
        directory = DirectoryDump(jobs, self._dump_folders()) if jobs > 1 else None
        try:
            source = take_dump(
                out,
                target,
                mode=mode,
                server=server,
                pg_dump=pg_dump,
                limits=limits,
                log=self.log,
                directory=directory,
                row_order=RowOrderSettings(
                    self.settings.db_row_order,
                    self.settings.db_row_order_memory * 1024 * 1024,
                    self._dump_folders(),
                ),
            )
        except psycopg.Error as exc:
            raise OperationFailed(
                f"Reading {target.describe()} failed: {_first_line(exc)}."
            ) from None
        source = replace(source, neon=target.is_neon, pooler_switched=bool(target.notes))
        warnings = []
        if target.is_neon and mode == MODE_SCHEMA_ONLY and request.mode is None:
            warnings.append("Neon database: schema-only by default; pass --full for the data")
        return Produced(source, mode, warnings)

    # -- restore ------------------------------------------------------------------------
    def plan_restore(self, manifest: Manifest, request: RestoreRequest) -> RestorePlan:
        target = self._target(request.target)
        server = self._connect_checked(target)
        found = self._replication(target)  # before anything is changed
        remove_leftovers(target, self.settings.connect_timeout, self.log)
        private = {"target": target, "server": server, "request": request}
        source = DatabaseSource.of(manifest)
        consent = other_database_sentence(source, target, self.settings.connect_timeout)
        notes = [source_note(source), *([consent] if consent else [])]
        notes += self._jobs_plan(target, request, private, found)
        notes += self._migration_note(manifest, target)
        if request.safety_backup:
            notes.append(BEFORE_NOTE)
        if manifest.mode == MODE_SCHEMA_ONLY:
            notes.append(
                "This is a schema-only backup: structure only, no data; every table it "
                "restores will be empty."
            )
        # The database is overwritten, so a full copy of it comes first; the operation
        # leaves it out (and logs so) when the operator insists with --no-safety-backup.
        # A copy of another database (--into) is tagged so: it is not one of this app's.
        tags = (TAG_PRE_RESTORE, TAG_OTHER_TARGET) if request.target else (TAG_PRE_RESTORE,)
        safety = BackupRequest(mode=MODE_FULL, tags=tags, source_override=request.target)
        return RestorePlan(target.describe(), notes, safety, private, consent)

    def _replication(self, target: Target) -> Replication:
        """The target's slots, walsenders and subscriptions; a subscriber is refused."""
        try:
            with connect(target, self.settings.connect_timeout, autocommit=True) as conn:
                found = read_replication(conn, target.dbname)
        except psycopg.Error as exc:
            raise OperationFailed(
                f"Reading the replication state of {target.describe()} failed: "
                f"{_first_line(exc)}; nothing was changed."
            ) from None
        if found.subscriptions:
            raise OperationFailed(subscriber_refusal(target.dbname, found.subscriptions))
        return found

    def _jobs_plan(
        self,
        target: Target,
        request: RestoreRequest,
        private: dict[str, Any],
        found: Replication,
    ) -> list[str]:
        """How the restore will run: --jobs N into a new database and a swap, when this
        server and role allow it; else in one transaction (saying why when --jobs asked)."""
        jobs = request.jobs if request.jobs is not None else self.settings.db_jobs
        one = [
            f"Everything in {target.describe()} is replaced by the backup, in one "
            "transaction: if anything fails, the database stays as it is.",
            *slots_note(found),
        ]
        if jobs <= 1:
            return one
        obstacle = jobs_obstacle(jobs, target.dbname, found)
        if obstacle:
            self.log.warning("%s", obstacle)
            return [obstacle, *one]
        options = JobsOptions(jobs, request.keep_old, request.terminate_sessions)
        try:
            private["parallel"] = (
                options,
                parallel_possible(target, options, self.settings.connect_timeout),
            )
        except Fallback as fallback:
            self.log.warning("%s", fallback.sentence)
            return [fallback.sentence, *one]
        return [
            f"Everything in {target.describe()} is replaced by the backup: restored with "
            f"{jobs} parallel jobs into a new database, which takes its name at the end (no "
            "other session may be connected then); if anything fails first, the database "
            "stays as it is."
        ]

    def before_safety_backup(self, plan: RestorePlan) -> None:
        """Mark the server's transactions now, to count those the restore loses."""
        target: Target = plan.private["target"]
        try:
            with connect(target, self.settings.connect_timeout, autocommit=True) as conn:
                plan.private["writes"] = mark_writes(conn, target.dbname)
        except psycopg.Error as exc:  # the count is information: never fail the restore
            self.log.info("writes after the pre-restore backup will not be counted: %s", exc)

    def _subscriptions(self, target: Target) -> list[str]:
        try:
            with connect(target, self.settings.connect_timeout, autocommit=True) as conn:
                return restored_subscriptions_note(conn, target.dbname)
        except psycopg.Error as exc:  # a note only: never fail a restore that is done
            self.log.info("subscriptions after the restore not read: %s", exc)
            return []

    def _lost_writes(self, plan: RestorePlan) -> list[str]:
        """After a one-transaction restore: the writes it lost, when they were marked."""
        mark = plan.private.get("writes")
        if mark is None:
            return []
        target: Target = plan.private["target"]
        try:
            with connect(target, self.settings.connect_timeout, autocommit=True) as conn:
                note = one_transaction_note(conn, mark)
        except psycopg.Error as exc:
            self.log.info("writes after the pre-restore backup were not counted: %s", exc)
            return []
        self.log.warning("%s", note)
        return [note]

    def _migration_note(self, manifest: Manifest, target: Target) -> list[str]:
        saved = DatabaseSource.of(manifest).migration_head
        try:
            with connect(target, self.settings.connect_timeout, autocommit=True) as conn:
                now = migration_head(conn)
        except psycopg.Error:
            now = None
        if not saved and not now:
            return []
        return [
            f"The backup was taken at migration {saved or 'unknown'}; the database is now "
            f"at {now or 'unknown'}."
        ]

    def consume(self, payload: BinaryIO, manifest: Manifest, plan: RestorePlan) -> RestoreReport:
        target: Target = plan.private["target"]
        server: ServerInfo = plan.private["server"]
        request: RestoreRequest = plan.private.get("request", RestoreRequest())
        source = DatabaseSource.of(manifest)
        pg_restore = find_tool(
            "pg_restore", max(server.major, source.pg_dump_major), self.settings.pg_bin_dir
        )
        psql = find_tool("psql", server.major, self.settings.pg_bin_dir)
        began = time.monotonic()
        if "parallel" in plan.private:
            return self._consume_parallel(payload, manifest, plan, pg_restore, psql)
        try:
            with contextlib.ExitStack() as stack:
                # A directory-format dump is unpacked (and its SHA-256 checked) first.
                dump_dir = None
                if source.is_directory:
                    dump_dir = stack.enter_context(unpacked_dump(payload, self._dump_folders()))
                outcome = restore_dump(
                    payload,
                    target,
                    schemas=source.schemas,
                    pg_restore=pg_restore,
                    psql=psql,
                    server_major=server.major,
                    limits=RestoreLimits(
                        self.settings.connect_timeout,
                        self.settings.lock_wait_timeout,
                        self.settings.timeout,
                    ),
                    log=self.log,
                    drop_dependents=request.drop_dependents,
                    no_privileges=request.no_privileges,
                    dump_dir=dump_dir,
                    say=self.say,
                )
            lost = self._lost_writes(plan)
            notes = [*outcome.notes, *self._subscriptions(target), *lost]
            try:
                return self._report(manifest, target, notes, time.monotonic() - began)
            except IntegrityError as exc:  # the app writing on may be why: say what it did
                raise IntegrityError(" ".join([exc.message, *lost])) from None
        except psycopg.Error as exc:
            raise OperationFailed(
                f"The restore into {target.describe()} failed: {_first_line(exc)}; the "
                "database is unchanged."
            ) from None
        except OperationFailed as exc:
            raise _with_advice(exc, request.no_privileges) from None

    def _consume_parallel(
        self,
        payload: BinaryIO,
        manifest: Manifest,
        plan: RestorePlan,
        pg_restore: Tool,
        psql: Tool,
    ) -> RestoreReport:
        target: Target = plan.private["target"]
        options, shape = plan.private["parallel"]
        request: RestoreRequest = plan.private["request"]
        source = DatabaseSource.of(manifest)
        limits = RestoreLimits(
            self.settings.connect_timeout, self.settings.lock_wait_timeout, self.settings.timeout
        )
        extra = ("--no-privileges",) if request.no_privileges else ()
        job = Job(
            target,
            shape,
            options,
            pg_restore,
            limits,
            list(source.row_counts),
            source.row_counts,
            extra,
            plan.private.get("writes"),
            self.say,
        )

        def one_transaction(dump: Path, why: str) -> list[str]:
            # A directory-format dump was read to its end: pg_restore reads its folder.
            folder = dump if source.is_directory else None
            with io.BytesIO() if folder else open(dump, "rb") as stream:
                outcome = restore_dump(
                    stream,
                    target,
                    schemas=source.schemas,
                    pg_restore=pg_restore,
                    psql=psql,
                    server_major=plan.private["server"].major,
                    limits=limits,
                    log=self.log,
                    drop_dependents=request.drop_dependents,
                    no_privileges=request.no_privileges,
                    dump_dir=folder,
                    say=self.say,
                )
            return [why, *outcome.notes, *self._lost_writes(plan)]

        began = time.monotonic()
        try:
            done = restore_parallel(
                payload,
                job,
                self._dump_folders(),
                self.log,
                one_transaction,
                directory=source.is_directory,
            )
        except psycopg.Error as exc:
            raise OperationFailed(
                f"The --jobs restore into {target.describe()} failed: {_first_line(exc)}; the "
                "database is unchanged."
            ) from None
        except OperationFailed as exc:
            raise _with_advice(exc, request.no_privileges) from None
        if request.no_privileges:
            done.notes.append(
                "Restored without the backup's privileges (--no-privileges): grant what the "
                "app's roles need on this server."
            )
        done.notes += self._subscriptions(target)
        return self._report(manifest, target, done.notes, time.monotonic() - began, done.counts)

    def _report(
        self,
        manifest: Manifest,
        target: Target,
        notes: list[str],
        seconds: float,
        counts: dict[str, int | None] | None = None,
    ) -> RestoreReport:
        source = DatabaseSource.of(manifest)
        tables = source.tables
        lines = [
            f"Restored {len(tables)} table(s) into {target.describe()} from {manifest.id} "
            f"({manifest.mode}) in {seconds:.1f}s.",
            *notes,
        ]
        details: dict[str, Any] = {"tables": tables, "seconds": round(seconds, 3)}
        if manifest.mode == MODE_SCHEMA_ONLY:
            lines.append("Schema-only backup: the structure was restored, no data.")
            return RestoreReport(lines, details)
        expected = source.row_counts
        # A --jobs restore counted its new database before the swap: no second count.
        if counts is None:
            counts = current_row_counts(target, list(expected), self.settings.connect_timeout)
        now = counts
        mismatched = mismatched_counts(expected, now)
        details["row_counts"] = now
        if mismatched:
            # The restore committed, but what it brought back is not what was backed up:
            # that is an integrity failure (exit 6), never a success with a remark.
            shown = describe_mismatches(mismatched)
            raise IntegrityError(
                f"The restore into {target.describe()} finished, but row counts differ from "
                f"the backup {manifest.id}: {shown}; check the backup with `cosmic-backup "
                "verify`, and restore the pre-restore backup or another one."
            )
        lines.append(
            f"Row counts match the backup: {sum(expected.values())} rows in "
            f"{len(expected)} table(s)."
        )
        return RestoreReport(lines, details)

    # -- verify -------------------------------------------------------------------------
    def check_payload(self, payload: BinaryIO, manifest: Manifest) -> dict[str, Any]:
        """`pg_restore --list` must parse the dump's table of contents."""
        source = DatabaseSource.of(manifest)
        pg_restore = find_tool("pg_restore", source.pg_dump_major, self.settings.pg_bin_dir)
        if source.is_directory:
            return check_directory_payload(payload, pg_restore, self.settings.timeout)
        with tempfile.TemporaryFile() as listing:
            child = Child(
                [pg_restore.path, "--list"],
                env={},
                timeout=self.settings.timeout,
                log=self.log,
                stdin=subprocess.PIPE,
                stdout=listing,
            )
            assert child.process.stdin is not None
            with running(child):
                pump(payload, child.process.stdin)
                code = child.wait()
            if code != 0:
                raise OperationFailed(
                    f"pg_restore --list cannot read the dump: {child.stderr_tail()}."
                )
            listing.seek(0)
            entries = sum(1 for line in listing if line.strip() and not line.startswith(b";"))
        return {"toc_entries": entries}


def _first_line(exc: Exception) -> str:
    """The server's message, and its HINT when it has one (e.g. "increase
    max_locks_per_transaction"): that is often the fix."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    hint = exc.diag.message_hint if isinstance(exc, psycopg.Error) else None
    if hint:
        line = f"{line.rstrip('.')} (HINT: {hint.rstrip('.')})"
    return redact(line).rstrip(".")


_MISSING_ROLE = re.compile(r'role "[^"]*" does not exist')


def _with_advice(exc: OperationFailed, no_privileges: bool) -> OperationFailed:
    """Add the way around to a failure that has one: a role the backup grants to (or
    names in default privileges) that does not exist on this server."""
    if not _MISSING_ROLE.search(exc.message):
        return exc
    if no_privileges:  # then something other than a GRANT names it (a policy...)
        advice = "Create that role on this server: the backup names it beyond its GRANTs."
    else:
        advice = (
            "Create that role on this server, or pass --no-privileges to restore without "
            "the backup's GRANTs."
        )
    return OperationFailed(f"{exc.message.rstrip('.')}. {advice}")
