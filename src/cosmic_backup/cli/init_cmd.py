"""`cosmic-backup init`: wrappers, a commented settings file and .gitignore entries."""

from __future__ import annotations

import sys

import typer

from cosmic_backup.cli.common import emit_json, settings_for, state, stdout
from cosmic_backup.errors import UsageError
from cosmic_backup.operations.init import INSTALLATION_FILE, init_project
from cosmic_backup.settings import Settings


def init(ctx: typer.Context) -> None:
    """Set up this project root: scripts/backup.sh, scripts/restore.sh, cosmic-backup.toml."""
    steps = init_project(state(ctx).root)
    if state(ctx).json:
        emit_json([{"path": s.path, "action": s.action} for s in steps])
        return
    for step in steps:
        stdout.print(f"{step.action:<8} {step.path}", markup=False)
    stdout.print(
        f"The wrappers run {sys.executable} -m cosmic_backup (recorded in {INSTALLATION_FILE}).",
        markup=False,
    )
    try:
        settings = settings_for(ctx)
    except UsageError as exc:  # a broken setting: the backup will say so too
        stdout.print(f"Next: fix the settings: {exc.message}", markup=False)
        return
    hint = _database_url_note(settings)
    if hint:
        stdout.print(hint, markup=False)
    stdout.print(f"Next: ./scripts/backup.sh all   ({_key_note(settings)})", markup=False)


def _database_url_note(settings: Settings) -> str | None:
    """Where DATABASE_URL should live for scheduled runs, when it is not there yet."""
    where = "put it in the app's .env (chmod 600 .env), which scheduled runs read"
    if settings.database_url is None:
        return f"DATABASE_URL is not set: {where}, or set it in the environment."
    if settings.sources["database_url"].startswith("environment"):
        return f"DATABASE_URL comes from this shell's environment, which cron has not: {where}."
    return None


def _key_note(settings: Settings) -> str:
    """Where the first backup's key comes from: only a missing key is created."""
    if settings.key:
        return "the key comes from BACKUP_KEY"
    if settings.key_command:
        return "the key comes from BACKUP_KEY_COMMAND"
    if settings.path("key_file").exists():
        return f"with the existing key {settings.key_file}"
    return f"creates the key {settings.key_file} on the first run"


def register(app: typer.Typer) -> None:
    app.command()(init)
