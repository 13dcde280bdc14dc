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
from cosmic_backup.states import Outcome, Trust


def list_backups(
    ctx: typer.Context,
    what: Annotated[
        str | None, typer.Argument(help="database, files or config (default: all).")
    ] = None,
) -> None:
    """List backups, oldest first, with status, mode, size and verification."""
    check_component(what)
    runtime = open_cli_runtime(ctx, settings_for(ctx))
    entries = runtime.catalog.entries(what)
    if state(ctx).json:
        emit_json([entry_json(entry) for entry in entries])
    else:
        console.print(_table(entries))


def entry_json(entry: Entry) -> dict[str, Any]:
    return {**entry.manifest.to_dict(), "trust": entry.trust, "problem": entry.problem}


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


def _table(entries: list[Entry]) -> Table | str:
    if not entries:
        return "No backups yet. Take one with: cosmic-backup backup all"
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("id", "taken (local)", "status", "mode", "tags", "size", "verified", "tested"):
        table.add_column(column, no_wrap=True)
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
            human_size(manifest.stored_size),
            verified,
            tested,
            _source_summary(entry),
        )
    return table


def register(app: typer.Typer) -> None:
    app.command("list")(list_backups)
