"""`cosmic-backup report --html FILE [--days N]`: the backups at a glance, as one page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cosmic_backup.cli.common import emit_json, open_cli_runtime, settings_for, state, stdout
from cosmic_backup.operations.report import DEFAULT_DAYS, write_report


def report(
    ctx: typer.Context,
    html: Annotated[
        Path, typer.Option("--html", help="Write the report to this file (mode 0600).")
    ],
    days: Annotated[
        int, typer.Option("--days", min=1, max=3660, help="The period the charts cover.")
    ] = DEFAULT_DAYS,
) -> None:
    """Write one self-contained HTML page: health now, charts over the period, the backups.

    Needs the [report] extra: pip install 'cosmic-backup[report]'.
    """
    runtime = open_cli_runtime(ctx, settings_for(ctx))
    path = write_report(runtime, html.expanduser().resolve(), days)
    if state(ctx).json:
        emit_json({"path": str(path), "days": days})
    else:
        stdout.print(f"wrote the report to {path}", markup=False)


def register(app: typer.Typer) -> None:
    app.command()(report)
