"""The `cosmic-backup` command: global options, command registration, error rendering.

Each command group lives in its own module exposing ``register(app)``; add its commands
to COMMANDS. run() imports only the module of the command being run (all of them for the
top-level help): a command does not pay for the imports of the others. Errors are
rendered here only: a `CosmicError` becomes its one sentence and exit code; anything else
is a bug, shown with a traceback under --debug.
"""

from __future__ import annotations

import importlib
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from cosmic_backup import __version__
from cosmic_backup.cli.allocator import keep_freed_memory
from cosmic_backup.cli.common import CliState, stderr
from cosmic_backup.errors import CosmicError, ExitCode, Interrupted
from cosmic_backup.logs import log_failure
from cosmic_backup.redact import redact

# The command names each module registers, so that run() imports only the one it needs.
COMMANDS = {
    "backup": "backup_cmd",
    "restore": "restore_cmd",
    "list": "list_cmd",
    "verify": "verify_cmd",
    "key": "key_cmd",
    "doctor": "doctor_cmd",
    "init": "init_cmd",
    "prune": "operations_cmd",
    "status": "operations_cmd",
    "schedule": "operations_cmd",
    "demo": "demo_cmd",
    "sync": "sync_cmd",
    "report": "report_cmd",
    "notify": "notify_cmd",
}
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))  # in the order help lists them

app = typer.Typer(
    name="cosmic-backup",
    help="Encrypted, compressed backups and safe restores of a web app's PostgreSQL "
    "database, files and configuration. Run it from the app's project root. "
    "The options below may also be written after the command (list --json).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(f"cosmic-backup {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    root: Annotated[
        Path, typer.Option("--root", "-C", help="The app's project root (default: here).")
    ] = Path(),
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Machine-readable output on stdout.")
    ] = False,
    log_format: Annotated[str | None, typer.Option(help="Log line format: text or json.")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for another run's lock instead of refusing.")
    ] = False,
    allow_insecure_key: Annotated[
        bool,
        typer.Option(
            "--allow-insecure-key",
            help="Go on, with a warning, when the key file is readable by others "
            "(BACKUP_ALLOW_INSECURE_KEY).",
        ),
    ] = False,
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    ctx.obj = CliState(root.resolve(), debug, json_output, log_format, wait, allow_insecure_key)


_registered: set[str] = set()


def register_commands(args: list[str]) -> None:
    """Register the module of the command in `args` (hoisted), or every module when there
    is none, or it is not one we know (typer then lists them all, or names the typo)."""
    command = next((word for word in _words(args) if not word.startswith("-")), None)
    modules = [COMMANDS[command]] if command in COMMANDS else list(COMMAND_MODULES)
    for module in modules:
        if module not in _registered:
            importlib.import_module(f"cosmic_backup.cli.{module}").register(app)
            _registered.add(module)


def _words(args: list[str]) -> list[str]:
    """`args` without the global options' values (``-C path``), up to ``--``."""
    words: list[str] = []
    skip = False
    for word in args:
        if word == "--":
            break
        if not skip:
            words.append(word)
        skip = word in GLOBAL_VALUED and not skip
    return words


def _command_name(args: list[str]) -> str:
    """The command, as the log names a failed run ("restore failed: ..."): never its
    other words, of which one may be an --into URL with a password."""
    command = next((word for word in _words(args) if not word.startswith("-")), None)
    return command if command in COMMANDS else "cosmic-backup"


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(
        f"Stopped by {signal.Signals(signum).name}; nothing half-done was kept as a backup."
    )


# Global options an operator may also write after the command (``list --json``): run()
# moves them in front, where the callback above reads them. The value-taking ones take
# the next word (or ``=value``; ``-Cpath`` for the short form).
GLOBAL_FLAGS = frozenset({"--debug", "--json", "--wait", "--allow-insecure-key"})
GLOBAL_VALUED = frozenset({"--root", "-C", "--log-format"})


def hoist_global_options(args: list[str]) -> list[str]:
    """`args` with every global option moved before the command, order otherwise kept.

    Stops at ``--``: what follows it is never an option.
    """
    hoisted: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(args):
        word = args[index]
        name = word.split("=", 1)[0]
        if word == "--":
            rest.extend(args[index:])
            break
        attached = (name in GLOBAL_VALUED and "=" in word) or (
            word.startswith("-C") and word != "-C"
        )  # --root=PATH, --log-format=json, -CPATH
        if word in GLOBAL_FLAGS or attached:
            hoisted.append(word)
        elif word in GLOBAL_VALUED:
            hoisted.extend(args[index : index + 2])
            index += 1
        else:
            rest.append(word)
        index += 1
    return hoisted + rest


def run() -> None:
    """The console entry point: run the app, turn errors into sentences and exit codes.

    Usage errors are rendered by typer itself (exit code 2). Interrupts become our own
    `Interrupted` error so they get exit code 130 and the clean-up of every `finally`.
    """
    keep_freed_memory()
    args = hoist_global_options(sys.argv[1:])
    register_commands(args)
    debug = "--debug" in args
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        app(args=args, prog_name="cosmic-backup")
    except (CosmicError, Interrupted) as exc:
        if debug:
            traceback.print_exc()
        log_failure(_command_name(args), exc, exc.message)
        stderr.print(f"error: {redact(exc.message)}", markup=False)
        sys.exit(int(exc.exit_code))
    except Exception as exc:
        if debug:
            traceback.print_exc()
        stderr.print(
            f"error: unexpected {exc.__class__.__name__}: {redact(str(exc))}. This is a bug; "
            "run again with --debug and report the output.",
            markup=False,
        )
        sys.exit(int(ExitCode.FAILURE))
