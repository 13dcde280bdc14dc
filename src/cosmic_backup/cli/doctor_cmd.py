"""`cosmic-backup doctor`: effective settings with their sources, and health checks."""

from __future__ import annotations

import typer
from rich.table import Table

from cosmic_backup.cli.common import emit_json, exit_with, settings_for, state, stdout
from cosmic_backup.errors import ExitCode
from cosmic_backup.operations.doctor import run_checks, settings_report
from cosmic_backup.states import Outcome


def doctor(ctx: typer.Context) -> None:
    """Show every setting and where it came from; check key, folders, disk and tools."""
    settings = settings_for(ctx)
    report = settings_report(settings)
    checks = run_checks(settings)
    if state(ctx).json:
        emit_json({"settings": report, "checks": [c.to_dict() for c in checks]})
    else:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("setting", "value", "from"):
            table.add_column(column, overflow="fold")
        for row in report:
            table.add_row(row["name"], row["value"], row["source"])
        stdout.print(table)
        stdout.print("")
        for check in checks:
            hint = f"  -> {check.hint}" if check.hint and check.state != Outcome.OK else ""
            stdout.print(f"{check.state:<8} {check.name:<14} {check.detail}{hint}", markup=False)
    exit_with(int(ExitCode.FAILURE) if any(c.state == Outcome.FAILED for c in checks) else 0)


def register(app: typer.Typer) -> None:
    app.command()(doctor)
