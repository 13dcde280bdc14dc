"""`cosmic-backup backup all|database|files|config`."""

from __future__ import annotations

from typing import Annotated

import typer

from cosmic_backup.cli.common import (
    emit_json,
    exit_with,
    human_size,
    open_cli_runtime,
    settings_for,
    stdout,
)
from cosmic_backup.components import COMPONENT_NAMES
from cosmic_backup.components.base import BackupRequest
from cosmic_backup.errors import ExitCode, UsageError
from cosmic_backup.format.manifest import MODE_FULL, MODE_SCHEMA_ONLY, TAG_MANUAL, TAG_SCHEDULED
from cosmic_backup.operations.backup import (
    BackupOutcome,
    backup_components,
)
from cosmic_backup.settings import SPEC_BY_NAME
from cosmic_backup.states import Outcome


def components_for(what: str) -> list[str]:
    if what == "all":
        return list(COMPONENT_NAMES)
    if what in COMPONENT_NAMES:
        return [what]
    raise UsageError(
        f"'{what}' is not something to back up; use one of: all, {', '.join(COMPONENT_NAMES)}."
    )


def backup(
    ctx: typer.Context,
    what: Annotated[str, typer.Argument(help="all, database, files or config.")],
    schema_only: Annotated[
        bool, typer.Option("--schema-only", help="Database: the structure alone, no rows.")
    ] = False,
    full: Annotated[
        bool, typer.Option("--full", help="Database: structure and rows (also on Neon).")
    ] = False,
    tag: Annotated[
        str, typer.Option(help="Tag recorded in the manifest: manual or scheduled.")
    ] = TAG_MANUAL,
    metrics_file: Annotated[
        str | None,
        typer.Option("--metrics-file", help="Prometheus textfile to rewrite after the run."),
    ] = None,
    jobs: Annotated[
        str | None,
        typer.Option(
            "--jobs",
            "-j",
            metavar="N",
            help="Database: N parallel pg_dump jobs (BACKUP_DB_JOBS); above 1 the dump goes "
            "through a temporary folder as large as the plain dump.",
        ),
    ] = None,
    force_read: Annotated[
        bool,
        typer.Option(
            "--force-read",
            help="Files and config: read every file, ignoring the files cache (BACKUP_FORCE_READ).",
        ),
    ] = False,
) -> None:
    """Take encrypted backups (./scripts/backup.sh all|database|files|config)."""
    names = components_for(what)
    if schema_only and full:
        raise UsageError("--schema-only and --full contradict each other; give one of them.")
    if tag not in (TAG_MANUAL, TAG_SCHEDULED):
        raise UsageError(f"--tag must be {TAG_MANUAL} or {TAG_SCHEDULED}, not '{tag}'.")
    mode = MODE_SCHEMA_ONLY if schema_only else MODE_FULL if full else None
    flags = {
        "metrics_file": metrics_file,
        "db_jobs": _jobs(jobs),
        "force_read": True if force_read else None,  # None: the setting decides
    }
    runtime = open_cli_runtime(ctx, settings_for(ctx, **flags), opens_store=True)
    outcomes = backup_components(runtime, names, BackupRequest(mode=mode, tags=(tag,)))
    _report(ctx, outcomes, runtime.relative(runtime.log_file))
    exit_with(_exit_code(what, outcomes))


def _jobs(text: str | None) -> int | None:
    """--jobs as a number within the setting's bounds (typer's own message for a bad
    number is a box, not our sentence and exit code)."""
    if text is None:
        return None
    low, high = SPEC_BY_NAME["db_jobs"].bounds or (1, 1)
    value = text.strip()
    if not value.isdigit() or not low <= int(value) <= high:
        raise UsageError(
            f"--jobs takes a number of parallel pg_dump jobs from {low} to {high}, not '{text}'."
        )
    return int(value)


def _report(ctx: typer.Context, outcomes: list[BackupOutcome], log_file: str) -> None:
    if ctx.find_root().obj.json:
        emit_json({"log_file": log_file, "components": [o.to_dict() for o in outcomes]})
        return
    for outcome in outcomes:
        manifest = outcome.manifest
        if outcome.status == Outcome.OK and manifest is not None:
            stdout.print(
                f"{outcome.component:<9} ok       {manifest.id}  {manifest.mode}  "
                f"{human_size(manifest.stored_size)}  {outcome.duration:.1f}s",
                markup=False,
            )
            for warning in manifest.warnings:
                stdout.print(f"{'':<9} warning  {warning}", markup=False)
        elif len(outcomes) > 1:  # a single failure is rendered as the error itself
            stdout.print(
                f"{outcome.component:<9} {outcome.status:<8} {outcome.message}", markup=False
            )
    if len(outcomes) > 1 and any(o.status == Outcome.FAILED for o in outcomes):
        stdout.print(f"Details are in {log_file}.", markup=False)


def _exit_code(what: str, outcomes: list[BackupOutcome]) -> int:
    if what != "all":  # one component: its own sentence and exit code
        error = outcomes[0].error
        if error is not None:
            raise error
        return int(ExitCode.OK)
    if any(o.status == Outcome.FAILED for o in outcomes):
        return int(ExitCode.PARTIAL)
    return int(ExitCode.OK)


def register(app: typer.Typer) -> None:
    app.command()(backup)
