"""`cosmic-backup restore database|files|config latest|YYYY-MM-DD|ID`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cosmic_backup.cli.common import (
    check_component,
    emit_json,
    open_cli_runtime,
    say,
    settings_for,
    state,
    stdout,
)
from cosmic_backup.clock import parse_iso
from cosmic_backup.components.base import RestoreRequest
from cosmic_backup.errors import UsageError
from cosmic_backup.operations.restore import Confirm, RestorePreview, restore_component
from cosmic_backup.redact import mask_connection_string

MAX_JOBS = 64


def restore(
    ctx: typer.Context,
    what: Annotated[str, typer.Argument(help="database, files or config.")],
    selector: Annotated[
        str, typer.Argument(help="latest, a local date YYYY-MM-DD, or a backup id.")
    ] = "latest",
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask; needed when not on a terminal.")
    ] = False,
    into: Annotated[
        str | None, typer.Option(help="Database: restore into this database URL instead.")
    ] = None,
    target_dir: Annotated[
        str | None, typer.Option(help="Files, config: restore into this folder instead.")
    ] = None,
    no_safety_backup: Annotated[
        bool, typer.Option("--no-safety-backup", help="Restore without a pre-restore backup.")
    ] = False,
    drop_dependents: Annotated[
        bool,
        typer.Option(
            "--drop-dependents",
            help="Database: let the reset drop objects outside the backup's schemas that "
            "depend on objects in them (a view, a foreign key); without it they are listed "
            "and nothing is restored.",
        ),
    ] = False,
    no_privileges: Annotated[
        bool,
        typer.Option(
            "--no-privileges",
            help="Database: leave out the backup's GRANTs (for roles this server lacks).",
        ),
    ] = False,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            help="Database: restore with N parallel pg_restore jobs into a new database that "
            "then takes the target's name (needs CREATEDB, owning the target and no other "
            "sessions at the swap; else one transaction, saying why).",
        ),
    ] = None,
    keep_old: Annotated[
        bool,
        typer.Option(
            "--keep-old", help="Database, --jobs: keep the replaced database under a new name."
        ),
    ] = False,
    terminate_sessions: Annotated[
        bool,
        typer.Option(
            "--terminate-sessions",
            help="Database, --jobs: end other sessions on the target at the swap instead of "
            "waiting for them.",
        ),
    ] = False,
    from_other_database: Annotated[
        bool,
        typer.Option(
            "--from-other-database",
            help="Database: with --yes, restore a backup taken from another database over "
            "this one's content (a terminal asks instead).",
        ),
    ] = False,
    no_restore_owner: Annotated[
        bool,
        typer.Option(
            "--no-restore-owner",
            help="Files: as root, leave restored files owned by root instead of their owners "
            "in the backup (BACKUP_FILES_RESTORE_OWNER=false).",
        ),
    ] = False,
) -> None:
    """Restore a backup (./scripts/restore.sh database|files|config latest|DATE|ID)."""
    check_component(what, "something to restore")
    if into and what != "database":
        raise UsageError("--into is for the database; use --target-dir for files and config.")
    if target_dir and what == "database":
        raise UsageError("--target-dir is for files and config; use --into for the database.")
    if into and mask_connection_string(into) != into:
        say(
            "warning: the --into URL carries a password, which other users can see in the "
            "process list; give it in PGPASSWORD or ~/.pgpass instead."
        )
    if (drop_dependents or no_privileges or from_other_database) and what != "database":
        raise UsageError(
            "--drop-dependents, --no-privileges and --from-other-database are for the "
            "database only."
        )
    _check_jobs(what, jobs, keep_old or terminate_sessions)
    request = RestoreRequest(
        target=into or target_dir,
        safety_backup=not no_safety_backup,
        drop_dependents=drop_dependents,
        no_privileges=no_privileges,
        jobs=jobs,
        keep_old=keep_old,
        terminate_sessions=terminate_sessions,
        from_other_database=from_other_database,
    )
    owner = False if no_restore_owner else None  # None: the setting decides
    runtime = open_cli_runtime(ctx, settings_for(ctx, files_restore_owner=owner), opens_store=True)
    outcome = restore_component(
        runtime, what, selector, request, _confirmer(yes, from_other_database)
    )
    if state(ctx).json:
        emit_json(outcome.to_dict())
    else:
        for line in outcome.report.lines:
            stdout.print(line, markup=False)
        stdout.print(f"Restored {outcome.manifest.id} in {outcome.duration:.1f}s.", markup=False)


def _check_jobs(what: str, jobs: int | None, jobs_options: bool) -> None:
    if (jobs is not None or jobs_options) and what != "database":
        raise UsageError("--jobs, --keep-old and --terminate-sessions are for the database only.")
    if jobs is not None and not 1 <= jobs <= MAX_JOBS:
        raise UsageError(f"--jobs takes a number of parallel jobs from 1 to {MAX_JOBS}.")


def _confirmer(yes: bool, from_other_database: bool = False) -> Confirm:
    def confirm(preview: RestorePreview) -> bool:
        manifest = preview.manifest
        taken = parse_iso(manifest.started_at).astimezone()
        say(f"Backup: {manifest.id} ({manifest.mode}), taken {taken:%Y-%m-%d %H:%M:%S %Z}.")
        say(f"Target: {preview.plan.target_description}")
        for note in preview.plan.notes:
            say(f"  {note}")
        consent = preview.plan.consent if not from_other_database else None
        if consent and (yes or not sys.stdin.isatty()):
            raise UsageError(
                f"{consent.rstrip('.')}; nothing was changed. Pass --from-other-database "
                "with --yes if that is what you want, or choose a backup of this database "
                "(`cosmic-backup list database`)."
            )
        if preview.plan.safety_backup is None or yes:  # nothing live is overwritten
            return True
        if not sys.stdin.isatty():
            raise UsageError(
                f"This restore overwrites {preview.plan.target_description}; run it on a "
                "terminal to confirm, or pass --yes for unattended runs."
            )
        safety = "after a pre-restore backup" if preview.safety_backup else "WITHOUT a safety copy"
        other = " (a backup of another database)" if consent else ""
        return typer.confirm(
            f"Replace {preview.plan.target_description} with {manifest.id}{other} ({safety})?",
            default=False,
        )

    return confirm


def register(app: typer.Typer) -> None:
    app.command()(restore)
