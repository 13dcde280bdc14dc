"""`cosmic-backup init`: wrappers, a commented settings file and .gitignore entries."""

from __future__ import annotations

import typer

from cosmic_backup.cli.common import emit_json, state, stdout
from cosmic_backup.operations.init import init_project


def init(ctx: typer.Context) -> None:
    """Set up this project root: scripts/backup.sh, scripts/restore.sh, cosmic-backup.toml."""
    steps = init_project(state(ctx).root)
    if state(ctx).json:
        emit_json([{"path": s.path, "action": s.action} for s in steps])
        return
    for step in steps:
        stdout.print(f"{step.action:<8} {step.path}", markup=False)
    stdout.print("Next: ./scripts/backup.sh all   (creates the key on first run)", markup=False)


def register(app: typer.Typer) -> None:
    app.command()(init)
