"""`cosmic-backup doctor`: effective settings with their sources, and health checks."""

from __future__ import annotations

import typer
from rich.table import Table

from cosmic_backup.cli.common import emit_json, exit_with, settings_for, state, stdout
from cosmic_backup.errors import ExitCode
from cosmic_backup.operations.doctor import run_checks, settings_report
from cosmic_backup.states import Outcome

VALUE_WIDTH = 56


def doctor(ctx: typer.Context) -> None:
    """Show every setting and where it came from; check key, folders, disk and tools."""
    settings = settings_for(ctx)
    report = settings_report(settings)
    checks = run_checks(settings)
    if state(ctx).json:
        emit_json({"settings": report, "checks": [c.to_dict() for c in checks]})
    else:
        table = Table(box=None, header_style="bold", pad_edge=False)
        table.add_column("setting", overflow="fold")
        # A long list (env_exclude) wraps at its commas instead of making the table 190
        # columns wide; a long word (a URL) folds.
        table.add_column("value", overflow="fold", max_width=VALUE_WIDTH)
        table.add_column("from", overflow="fold")
        for row in report:
            listed = isinstance(getattr(settings, row["name"]), tuple)
            value = row["value"].replace(",", ", ") if listed else row["value"]
            table.add_row(row["name"], value, row["source"])
        stdout.print(table)
        stdout.print("")
        for check in checks:
            hint = f"  -> {check.hint}" if check.hint and check.state != Outcome.OK else ""
            stdout.print(f"{check.state:<8} {check.name:<14} {check.detail}{hint}", markup=False)
    exit_with(int(ExitCode.FAILURE) if any(c.state == Outcome.FAILED for c in checks) else 0)


def register(app: typer.Typer) -> None:
    app.command()(doctor)
