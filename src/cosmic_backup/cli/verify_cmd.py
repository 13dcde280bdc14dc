"""`cosmic-backup verify [COMPONENT [SELECTOR]]`."""

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
from cosmic_backup.errors import ExitCode
from cosmic_backup.operations.verify import verify_backups


def verify(
    ctx: typer.Context,
    what: Annotated[str | None, typer.Argument(help="database, files or config.")] = None,
    selector: Annotated[
        str | None, typer.Argument(help="latest, YYYY-MM-DD or an id (default: every backup).")
    ] = None,
) -> None:
    """Prove backups restorable: MAC, decryption, SHA-256 and structure."""
    check_component(what)
    runtime = open_cli_runtime(ctx, settings_for(ctx))
    results = verify_backups(runtime, what, selector)
    if state(ctx).json:
        emit_json([result.to_dict() for result in results])
    elif not results:
        stdout.print("There are no good backups to verify.", markup=False)
    for result in results if not state(ctx).json else []:
        stdout.print(
            f"{result.id:<32} {'ok' if result.ok else 'FAILED'}  "
            f"{'' if result.ok else result.message}",
            markup=False,
        )
    exit_with(0 if all(r.ok for r in results) else int(ExitCode.INTEGRITY))


def register(app: typer.Typer) -> None:
    app.command()(verify)
