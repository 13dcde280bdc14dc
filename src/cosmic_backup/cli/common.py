"""What every command shares: global options, settings, the runtime, output helpers."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from cosmic_backup.errors import UsageError
from cosmic_backup.operations.context import Runtime, open_runtime
from cosmic_backup.progress import Advance, no_progress
from cosmic_backup.settings import Settings, load_settings
from cosmic_backup.sizes import human_size as human_size  # the commands' tables use it

# Off a terminal, tables must not wrap at rich's default 80 columns: pipes and logs read them.
stdout = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class CliState:
    root: Path
    debug: bool = False
    json: bool = False
    log_format: str | None = None
    wait: bool = False
    allow_insecure_key: bool = False


def state(ctx: typer.Context) -> CliState:
    found = ctx.find_root().obj
    assert isinstance(found, CliState)
    return found


def settings_for(ctx: typer.Context, **flags: Any) -> Settings:
    """Effective settings: defaults < .env < cosmic-backup.toml < environment < these flags."""
    cli = state(ctx)
    given = {
        "log_format": cli.log_format,
        "allow_insecure_key": True if cli.allow_insecure_key else None,  # None: not given
    }
    return load_settings(cli.root, flags={**given, **flags})


def say(message: str) -> None:
    """A notice for the operator; stderr, so stdout stays clean for --json and pipes."""
    stderr.print(message, markup=False)


@contextlib.contextmanager
def _terminal_progress(description: str, total: int | None) -> Iterator[Advance]:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),  # an ETA where the total is known
    ]
    with Progress(*columns, console=stderr, transient=True) as progress:
        task = progress.add_task(description, total=total)
        # A sample of nothing at the start: rich needs two to show a rate, and a step that
        # advances once (one S3 part, a small database read at once) would show only "?".
        progress.advance(task, 0)
        yield lambda n: progress.advance(task, n)


def open_cli_runtime(
    ctx: typer.Context, settings: Settings, *, opens_store: bool = False
) -> Runtime:
    """The command's runtime; `opens_store` (backup, restore, verify, prune, sync) starts
    the chunk store's key derivations at once, so they overlap what comes before."""
    cli = state(ctx)
    # Both: under cron or a pipe of stdout, nothing decorative reaches the mail or the log.
    interactive = sys.stdout.isatty() and sys.stderr.isatty() and not cli.json
    runtime = open_runtime(
        settings,
        say=say,
        progress=_terminal_progress if interactive else no_progress,
        wait=cli.wait or bool(settings.wait),
    )
    if opens_store:
        runtime.keys.start_derivations(runtime.catalog.root)
    return runtime


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def exit_with(code: int) -> None:
    """End the command with a documented exit code (typer ignores return values)."""
    if code:
        raise typer.Exit(code)


def check_component(what: str | None, action: str = "a component") -> None:
    """Refuse a component name that does not exist (None means all of them)."""
    from cosmic_backup.components import COMPONENT_NAMES

    if what is not None and what not in COMPONENT_NAMES:
        raise UsageError(f"'{what}' is not {action}; use one of: {', '.join(COMPONENT_NAMES)}.")
