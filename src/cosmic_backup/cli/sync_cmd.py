"""`cosmic-backup sync [COMPONENT] [--pull]`: complete the off-site copies, or fetch them back."""

from __future__ import annotations

from typing import Annotated

import typer

from cosmic_backup.cli.common import (
    check_component,
    emit_json,
    exit_with,
    open_cli_runtime,
    settings_for,
    state,
    stdout,
)
from cosmic_backup.components import COMPONENT_NAMES
from cosmic_backup.errors import ExitCode
from cosmic_backup.operations.offsite import remote_catalog, sync_pull, sync_push
from cosmic_backup.operations.offsite import take_over as offsite_take_over


def sync(
    ctx: typer.Context,
    what: Annotated[
        str | None, typer.Argument(help="database, files or config (default: all).")
    ] = None,
    pull: Annotated[
        bool,
        typer.Option(
            "--pull", help="Download the off-site backups missing here (each MAC-checked)."
        ),
    ] = False,
    remote: Annotated[
        str | None,
        typer.Option("--remote", help="Off-site location s3://bucket/prefix (BACKUP_REMOTE)."),
    ] = None,
    take_over: Annotated[
        bool,
        typer.Option(
            "--take-over",
            help="Make this backup root the owner of its host's off-site folder (a rebuilt "
            "server continuing the old one's backups), then sync.",
        ),
    ] = False,
) -> None:
    """Upload every local backup missing off-site (or, with --pull, download the reverse)."""
    check_component(what)
    runtime = open_cli_runtime(ctx, settings_for(ctx, remote=remote), opens_store=True)
    components = [what] if what else list(COMPONENT_NAMES)
    if take_over:
        runtime.say(offsite_take_over(runtime))
    items = sync_pull(runtime, components) if pull else sync_push(runtime, components)
    failed = [item for item in items if item.action == "failed"]
    if state(ctx).json:
        emit_json({"pull": pull, "items": [item.to_dict() for item in items]})
    else:
        where = remote_catalog(runtime)
        for item in items:
            detail = f" ({item.message})" if item.message else ""
            stdout.print(f"{item.action:<11} {item.id}{detail}", markup=False)
        done = sum(1 for item in items if item.action in ("uploaded", "downloaded"))
        direction = "from" if pull else "to"
        place = where.store.describe() if where else "off-site"
        stdout.print(
            f"{done} backup(s) copied {direction} {place}; {len(failed)} failed.", markup=False
        )
    exit_with(ExitCode.FAILURE if failed else ExitCode.OK)


def register(app: typer.Typer) -> None:
    app.command("sync")(sync)
