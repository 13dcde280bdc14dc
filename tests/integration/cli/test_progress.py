"""Progress on a terminal, and none of it under cron (stdout and stderr to a pipe).

The CLI runs under a real pseudo-terminal: its stdout and stderr are the pty's slave end,
and the test reads everything it drew from the master end.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess

import pytest

from tests.conftest import Project, clean_environ

KEY = "progress-test-passphrase-0123456789"
ANSI_ESCAPE = re.compile(r"\x1b\[")
RATE = re.compile(r"[0-9.]+ (?:[kMG]B|bytes)/s")


def _run_on_terminal(project: Project, *args: str) -> tuple[int, str]:
    """Run the CLI with a pty as its terminal; return its exit code and all it drew."""
    master, slave = pty.openpty()
    env = clean_environ({**project.env, "BACKUP_KEY": KEY, "COLUMNS": "160", "TERM": "xterm"})
    process = subprocess.Popen(
        project.command(*args), stdin=slave, stdout=slave, stderr=slave, env=env, cwd=project.root
    )
    os.close(slave)
    drawn = bytearray()
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        drawn += data
    os.close(master)
    return process.wait(timeout=60), drawn.decode(errors="replace")


@pytest.fixture
def files_project(project: Project) -> Project:
    """A files tree of a few MB of incompressible data, so the bars have bytes to count."""
    uploads = project.root / "uploads"
    uploads.mkdir()
    for n in range(6):
        (uploads / f"photo-{n}.bin").write_bytes(os.urandom(1024 * 1024))
    project.env["BACKUP_KEY"] = KEY
    return project


COMMANDS = [
    (("verify", "files"), "verifying files-"),
    (("restore", "files", "latest", "--yes"), "restoring files-"),
]


@pytest.mark.parametrize(("args", "label"), COMMANDS)
def test_a_terminal_shows_the_label_and_a_rate(
    files_project: Project, args: tuple[str, ...], label: str
) -> None:
    code, drawn = _run_on_terminal(files_project, "backup", "files")
    assert code == 0, drawn
    assert "files backup" in drawn and RATE.search(drawn), drawn

    code, drawn = _run_on_terminal(files_project, *args)
    assert code == 0, drawn
    assert label in drawn, drawn
    assert RATE.search(drawn), drawn


def test_cron_output_has_no_progress_and_no_escape(files_project: Project) -> None:
    for args in [("backup", "files"), *(args for args, _ in COMMANDS), ("prune",)]:
        result = files_project.run(*args)  # stdout and stderr to pipes, as cron runs it
        assert result.returncode == 0, result.stderr
        output = result.stdout + result.stderr
        assert not ANSI_ESCAPE.search(output), output
        assert not RATE.search(output), output
        assert "verifying files-" not in output and "restoring files-" not in output
