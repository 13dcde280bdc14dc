"""Global options work where users put them: before the command or after it."""

from __future__ import annotations

import json

import pytest

from cosmic_backup.cli.main import hoist_global_options
from tests.conftest import Project

KEY = "global-options-test-passphrase-0123"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["list", "--json"], ["--json", "list"]),
        (["key", "rotate", "--json", "--wait"], ["--json", "--wait", "key", "rotate"]),
        (["status", "-C", "/srv/app", "--debug"], ["-C", "/srv/app", "--debug", "status"]),
        (
            ["verify", "--root=/srv", "--log-format", "json"],
            ["--root=/srv", "--log-format", "json", "verify"],
        ),
        (["list", "-C/srv/app"], ["-C/srv/app", "list"]),
        (["--json", "list", "database"], ["--json", "list", "database"]),
        # after "--" nothing is an option
        (["list", "--", "--json"], ["list", "--", "--json"]),
    ],
)
def test_global_options_are_moved_before_the_command(args: list[str], expected: list[str]) -> None:
    assert hoist_global_options(args) == expected


@pytest.mark.parametrize(
    "args",
    [
        ("list", "--json"),
        ("list", "config", "--json", "--debug", "--log-format", "json"),
        ("status", "--json"),
        ("verify", "--json"),
        ("doctor", "--json"),
        ("prune", "--dry-run", "--json", "--wait"),
        ("key", "fingerprint", "--json"),
        ("backup", "config", "--json", "--wait"),
    ],
)
def test_commands_accept_global_options_after_them(project: Project, args: tuple[str, ...]) -> None:
    project.env["BACKUP_KEY"] = KEY
    result = project.run(*args)
    assert "No such option" not in result.stderr
    assert result.returncode in (0, 8), result.stderr  # status: 8 = unhealthy (no backups)
    json.loads(result.stdout)  # --json was honoured: stdout is JSON


def test_key_rotate_accepts_json_after_it(project: Project) -> None:
    assert project.run("key", "init").returncode == 0
    result = project.run("key", "rotate", "--json", "--wait")
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) >= {"old", "new"}


def test_root_after_the_command_picks_the_project(project: Project, tmp_path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    result = project.run("key", "init", "-C", str(other))
    assert result.returncode == 0, result.stderr
    assert (other / ".backup_key").is_file()


def test_the_other_commands_accept_global_options_after_them(project: Project) -> None:
    project.env["BACKUP_KEY"] = KEY
    assert project.run("backup", "config").returncode == 0
    for args in (
        ("restore", "config", "latest", "--json", "--wait", "--yes"),
        ("verify", "config", "--debug", "--log-format", "json"),
        ("init", "--debug"),
        ("schedule", "--debug", "--wait"),
    ):
        result = project.run(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert "No such option" not in result.stderr
    restored = project.run("restore", "config", "latest", "--yes", "--json")
    assert json.loads(restored.stdout)["component"] == "config"
    log = "".join(path.read_text() for path in (project.root / "logs").iterdir())
    assert any(line.startswith("{") for line in log.splitlines())  # --log-format json
