"""A command imports only its own command module; the top-level help still lists them
all, and a mistyped command is still named by typer."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cosmic_backup.cli.main import COMMAND_MODULES, COMMANDS, _words

# Run the CLI as `python -m cosmic_backup` does, and say at exit which command modules
# were loaded (-X importtime does not see importlib.import_module).
PROBE = """
import atexit, runpy, sys
prefix = "cosmic_backup.cli."
atexit.register(lambda: print("LOADED", *sorted(
    m[len(prefix):] for m in sys.modules if m.startswith(prefix) and m.endswith("_cmd")
), file=sys.stderr))
sys.argv = ["cosmic-backup", *sys.argv[1:]]
runpy.run_module("cosmic_backup", run_name="__main__")
"""


def imported_command_modules(*args: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The cosmic_backup.cli.*_cmd modules a run of the CLI loaded."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60
    )
    loaded = [line for line in done.stderr.splitlines() if line.startswith("LOADED")]
    return set(loaded[-1].split()[1:]), done


def test_a_command_imports_only_its_own_module() -> None:
    modules, done = imported_command_modules("backup", "--help")
    assert done.returncode == 0, done.stderr
    assert modules == {"backup_cmd"}
    assert "schema-only" in done.stdout


def test_the_top_level_help_lists_every_command() -> None:
    modules, done = imported_command_modules("--help")
    assert done.returncode == 0
    assert modules == set(COMMAND_MODULES)
    for command in COMMANDS:
        assert command in done.stdout


def test_a_mistyped_command_is_still_named() -> None:
    _, done = imported_command_modules("-C", "/tmp", "bakup")
    assert done.returncode == 2 and "bakup" in done.stderr


def test_every_registered_command_is_mapped_to_its_module() -> None:
    """A command added to a module but not to COMMANDS would be missing when run."""
    import typer

    from cosmic_backup.cli import main

    for module in COMMAND_MODULES:
        app = typer.Typer()
        __import__(f"cosmic_backup.cli.{module}", fromlist=["register"]).register(app)
        names = [c.name or c.callback.__name__ for c in app.registered_commands]  # type: ignore[union-attr]
        names += [g.name for g in app.registered_groups if g.name]
        assert names, module
        for name in names:
            assert main.COMMANDS[name.replace("_", "-")] == module, name


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["-C", "/srv/app", "--json", "list"], ["-C", "--json", "list"]),
        (["--log-format", "json", "status"], ["--log-format", "status"]),
        (["--", "backup"], []),
    ],
)
def test_the_command_word_is_found_past_global_option_values(
    args: list[str], words: list[str]
) -> None:
    assert _words(args) == words
