"""Every line `schedule --cron` prints runs under cron's environment, with the tool in a
virtualenv outside the project root and DATABASE_URL only in the app's .env."""

from __future__ import annotations

import re
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import Project, clean_environ

CRON_PATH = "/usr/bin:/bin"
_JOB = re.compile(r"^(\S+\s+){5}(?P<command>.+)$")
_ASSIGNMENT = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$")


@pytest.fixture(scope="session")
def outside_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a virtualenv outside any project root, with cosmic-backup in it.

    Made cheaply: no pip, and a .pth that adds this checkout's site-packages (where the
    editable install of cosmic-backup and its dependencies are).
    """
    venv = tmp_path_factory.mktemp("outside-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = [*site.getsitepackages(), sysconfig.get_path("purelib")]
    lines = [f"import site; site.addsitedir({path!r})" for path in dict.fromkeys(ours)]
    Path(purelib, "cosmic-checkout.pth").write_text("\n".join(lines) + "\n")
    return python


def run_tool(python: Path, project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "cosmic_backup", "-C", str(project.root), *args],
        env=clean_environ(),
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
    )


def under_cron(line: str, home: Path, cron_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """What cron does with a crontab line: sh -c, an almost empty environment."""
    env = {"HOME": str(home), "LOGNAME": "root", "SHELL": "/bin/sh", "PATH": CRON_PATH}
    argv = ["env", "-i", *(f"{k}={v}" for k, v in {**env, **cron_env}.items())]
    return subprocess.run(
        [*argv, "sh", "-c", line],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def crontab_parts(text: str) -> tuple[dict[str, str], list[str]]:
    """The crontab's environment lines and its jobs' commands (with cron's \\% undone)."""
    assignments, commands = {}, []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if match := _ASSIGNMENT.match(line):
            assignments[match["name"]] = match["value"]
        elif match := _JOB.match(line):
            commands.append(match["command"].replace("\\%", "%"))
        else:
            raise AssertionError(f"not a crontab line: {line!r}")
    return assignments, commands


@pytest.mark.slow
def test_every_schedule_line_runs_under_cron(
    project: Project, app_db: str, outside_venv: Path, tmp_path: Path
) -> None:
    (project.root / ".env").write_text(f"SECRET_KEY=abc\nDATABASE_URL={app_db}\n")
    (project.root / ".env").chmod(0o600)
    (project.root / "uploads").mkdir()
    (project.root / "uploads" / "a.txt").write_text("a\n")
    init = run_tool(outside_venv, project, "init")
    assert init.returncode == 0, init.stderr
    assert (project.root / ".cosmic-backup-python").read_text() == f"{outside_venv}\n"
    schedule = run_tool(outside_venv, project, "schedule", "--cron")
    assert schedule.returncode == 0 and schedule.stderr == "", schedule.stderr
    assert "from the app's .env" in schedule.stdout  # the advice is what the tool does
    cron_env, commands = crontab_parts(schedule.stdout)
    home = tmp_path / "home"
    home.mkdir()
    assert len(commands) == 5
    for command in commands:
        result = under_cron(command, home, cron_env)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    assert result.stdout == ""  # the status check prints only when something is wrong
    listed = run_tool(outside_venv, project, "--json", "list").stdout
    for component in ("database", "files", "config"):
        assert f'"component": "{component}"' in listed
    assert '"scheduled"' in listed
    # The seed's restore wrapper works under cron too.
    restore = under_cron(f"cd {project.root} && ./scripts/restore.sh config latest", home, {})
    assert restore.returncode == 0 and "Extracted" in restore.stdout, restore.stderr

    # DATABASE_URL stops reaching the runs: a failure, not a skip, and status says so.
    (project.root / ".env").write_text("SECRET_KEY=abc\n")
    lost = under_cron(commands[0], home, cron_env)
    assert lost.returncode == 1 and "This backup root has database backups" in lost.stderr
    alarm = under_cron(commands[4], home, cron_env)
    assert alarm.returncode == 8 and "database" in alarm.stdout

    # The recorded installation is gone: one clear sentence, not "No module named ...".
    (project.root / ".cosmic-backup-python").write_text(f"{tmp_path}/gone/bin/python\n")
    gone = under_cron(commands[0], home, cron_env)
    assert gone.returncode == 127
    assert "is no longer installed for" in gone.stderr and "cosmic-backup init" in gone.stderr
    assert "No module named" not in gone.stderr
    warned = run_tool(outside_venv, project, "schedule")
    assert "run 'cosmic-backup init' to record it" in warned.stderr
