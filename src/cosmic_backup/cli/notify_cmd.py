"""`cosmic-backup notify --test`: one test message to every BACKUP_NOTIFY_URL target."""

from __future__ import annotations

from typing import Annotated

import typer

from cosmic_backup.cli.common import (
    emit_json,
    exit_with,
    open_cli_runtime,
    settings_for,
    state,
    stdout,
)
from cosmic_backup.errors import ExitCode, UsageError
from cosmic_backup.operations.notify import alert_for, notify, summary


def notify_command(
    ctx: typer.Context,
    test: Annotated[
        bool, typer.Option("--test", help="Send one test message to each target.")
    ] = False,
) -> None:
    """Check the alerts: send a test message to each BACKUP_NOTIFY_URL target and say,
    per target, whether it went out (exit code 1 when any did not)."""
    if not test:
        raise UsageError("Say what to do: 'cosmic-backup notify --test' sends a test message.")
    runtime = open_cli_runtime(ctx, settings_for(ctx))
    if not runtime.settings.notify_url:
        raise UsageError(
            "BACKUP_NOTIFY_URL is not set, so there is nowhere to send to; set it to a "
            "webhook or Apprise URLs (mailto://, slack://, ntfy://...), comma-separated."
        )
    payload = summary("ok", runtime.run_id, str(runtime.root), [], "", "notify test")
    alert = alert_for(
        "notify test",
        "ok",
        ["This is a test message: alerts from cosmic-backup reach you here."],
        runtime.settings.report_url,
    )
    deliveries = notify(runtime.settings.notify_url, payload, alert, runtime.log)
    if state(ctx).json:
        emit_json([{"target": d.target, "sent": d.sent, "detail": d.detail} for d in deliveries])
    else:
        for delivery in deliveries:
            outcome = "sent" if delivery.sent else f"NOT sent: {delivery.detail}"
            stdout.print(f"{delivery.target}: {outcome}", markup=False)
    exit_with(0 if all(d.sent for d in deliveries) else int(ExitCode.FAILURE))


def register(app: typer.Typer) -> None:
    app.command("notify")(notify_command)
