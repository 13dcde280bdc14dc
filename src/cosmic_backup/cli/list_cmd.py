"""`cosmic-backup list [COMPONENT]`: the catalog as a table or JSON."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from cosmic_backup.catalog import Entry
from cosmic_backup.cli.common import (
    check_component,
    emit_json,
    human_size,
    open_cli_runtime,
    settings_for,
    state,
)
from cosmic_backup.cli.common import stdout as console
from cosmic_backup.clock import parse_iso
from cosmic_backup.components import source_of
from cosmic_backup.operations.offsite import (
    listed_offsite,
    locate_everywhere,
    require_remote,
    warn_unlisted,
)
from cosmic_backup.states import Outcome, Trust


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


def _status(entry: Entry) -> str:
    if entry.trust == Trust.TAMPERED:
        return Trust.TAMPERED.upper()
    words = [Outcome.OK if entry.manifest.ok else Outcome.FAILED.upper()]
    if entry.manifest.ok and entry.manifest.warnings:
        words.append("warnings")
    if entry.trust == Trust.UNVERIFIED:  # its key is not at hand: the manifest is unchecked
        words.append(Trust.UNVERIFIED)
    return ", ".join(words)


def _source_summary(entry: Entry) -> str:
    if not entry.manifest.ok:
        return entry.manifest.error or entry.problem or ""
    return source_of(entry.manifest).summary()


def _tested(test: dict[str, Any] | None) -> str:
    """The last restore test: its day, and FAILED when it did not pass."""
    if not test:
        return "-"
    return str(test.get("at", ""))[:10] + ("" if test.get("ok") else " FAILED")


def _table(entries: list[Entry], where: dict[str, str] | None = None) -> Table | str:
    if not entries:
        return "No backups yet. Take one with: cosmic-backup backup all"
    table = Table(box=None, header_style="bold", pad_edge=False)
    # size: the payload's; added: the bytes the backup added to the backup folder (a
    # single-file backup its whole artifact, a chunked one only its new chunks).
    columns = ("id", "taken (local)", "status", "mode", "tags", "size", "added", "verified")
    for column in (*columns, "tested"):
        table.add_column(column, no_wrap=True)
    if where:
        table.add_column("where", no_wrap=True)
    table.add_column("source", overflow="fold")
    for entry in entries:
        manifest = entry.manifest
        taken = parse_iso(manifest.started_at).astimezone()
        verified = manifest.verified_at[:10] if manifest.verified_at else "-"
        tested = _tested(manifest.restore_test)
        table.add_row(
            manifest.id,
            f"{taken:%Y-%m-%d %H:%M}",
            _status(entry),
            manifest.mode,
            ",".join(manifest.tags),
            human_size(manifest.plaintext_size),
            human_size(manifest.stored_size),
            verified,
            tested,
            *([where.get(entry.id, "local")] if where else []),
            _source_summary(entry),
        )
    return table


def register(app: typer.Typer) -> None:
    app.command("list")(list_backups)
