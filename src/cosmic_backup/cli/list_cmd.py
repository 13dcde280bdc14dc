"""`cosmic-backup list [COMPONENT]`: the catalog as a table or JSON."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from cosmic_backup.catalog import Entry
from cosmic_backup.cli.common import (
    check_component,
    emit_json,
    open_cli_runtime,
    settings_for,
    state,
)
from cosmic_backup.cli.common import stdout as console
from cosmic_backup.operations import listing
from cosmic_backup.operations.offsite import (
    listed_offsite,
    locate_everywhere,
    require_remote,
    warn_unlisted,
)


def list_backups(
    ctx: typer.Context,
    what: Annotated[
        str | None, typer.Argument(help="database, files or config (default: all).")
    ] = None,
    remote: Annotated[
        bool, typer.Option("--remote", help="List this host's off-site backups (BACKUP_REMOTE).")
    ] = False,
) -> None:
    """List backups, oldest first, with status, mode, size, verification and where they are."""
    check_component(what)
    runtime = open_cli_runtime(ctx, settings_for(ctx))
    where: dict[str, str] = {}
    unlisted = False  # the off-site copies could not be listed: "no backups" would be a lie
    if remote:
        entries = listed_offsite(runtime, require_remote(runtime), what)
        where = {entry.id: "remote" for entry in entries}
    elif runtime.settings.remote:  # local, remote or both
        located, problem = locate_everywhere(runtime, what)
        if problem is not None:
            warn_unlisted(runtime, problem)
            unlisted = True
        entries = [item.entry for item in located]
        where = {item.entry.id: item.where for item in located}
    else:
        entries = runtime.catalog.entries(what)
    if state(ctx).json:
        emit_json([entry_json(entry, where.get(entry.id, "local")) for entry in entries])
    elif not entries and unlisted:
        console.print("No local backups here, and the off-site ones cannot be listed (see above).")
    else:
        console.print(_table(entries, where))


def entry_json(entry: Entry, where: str = "local") -> dict[str, Any]:
    return {
        **entry.manifest.to_dict(),
        "trust": entry.trust,
        "problem": entry.problem,
        "where": where,
    }


def _table(entries: list[Entry], where: dict[str, str] | None = None) -> Table | str:
    if not entries:
        return "No backups yet. Take one with: cosmic-backup backup all"
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in listing.COLUMNS:
        table.add_column(column, no_wrap=True)
    if where:
        table.add_column(listing.WHERE_COLUMN, no_wrap=True)
    table.add_column(listing.SOURCE_COLUMN, overflow="fold")
    for entry in entries:
        table.add_row(*listing.row(entry, where.get(entry.id, "local") if where else None))
    return table


def register(app: typer.Typer) -> None:
    app.command("list")(list_backups)
