"""`cosmic-backup demo [--keep DIR]`: back up, drill, damage and restore a small app."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cosmic_backup.cli.common import emit_json, state, stdout
from cosmic_backup.operations.demo import run_demo


def demo(
    ctx: typer.Context,
    keep: Annotated[
        Path | None,
        typer.Option(
            "--keep",
            help="Leave the demo app and its backups in this new (or empty) folder.",
            file_okay=False,
        ),
    ] = None,
) -> None:
    """A first minute with cosmic-backup: a small app on a throwaway PostgreSQL is backed
    up, listed, restore-tested, damaged and restored. Needs no setup and touches nothing
    outside its folder."""
    as_json = state(ctx).json

    def show(line: str) -> None:
        if not as_json:
            stdout.print(line, markup=False, highlight=False)

    # The commands' own output goes straight to ours (stderr under --json).
    result = run_demo(keep, show, sys.stderr if as_json else sys.stdout)
    if as_json:
        emit_json(
            {
                "folder": str(result.folder) if result.kept else None,
                "server_version": result.server_version,
                "steps": result.steps,
                "rows": result.rows,
                "files": result.files,
                "review_folder": str(result.review_folder) if result.review_folder else None,
                "seconds": round(result.seconds, 3),
                "report": str(result.report) if result.report else None,
            }
        )


def register(app: typer.Typer) -> None:
    app.command()(demo)
