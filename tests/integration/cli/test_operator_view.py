"""What the operator reads: `doctor`'s settings table (narrow, the app version as the
backups record it, secrets in readable files named) and `init`'s next step."""

from __future__ import annotations

import subprocess

from tests.conftest import Project

CLOSED_PORT_URL = "postgresql://app:pw@127.0.0.1:9/app"  # refused at once: doctor stays quick


def test_doctor_table_is_narrow_shows_the_git_version_and_warns_of_a_readable_env(
    project: Project,
) -> None:
    git = {"cwd": project.root, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q"], **git)
    identity = ["-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", *identity, "commit", "-q", "--allow-empty", "-m", "x"], **git)
    (project.root / ".env").write_text(f"DATABASE_URL={CLOSED_PORT_URL}\n")
    (project.root / ".env").chmod(0o644)
    result = project.run("doctor")
    table = result.stdout.split("\n\n")[0].splitlines()
    assert max(len(line.rstrip()) for line in table) <= 120, table
    [env_exclude] = [line for line in table if line.startswith("env_exclude")]
    assert "PATH, PWD" in env_exclude  # the list wraps at its commas
    [version] = [line for line in table if line.startswith("app_version")]
    assert "git:" in version and "(not set)" not in version
    [database] = [line for line in table if line.startswith("database_url")]
    assert ".env DATABASE_URL" in database and "pw" not in database
    [files] = [line for line in result.stdout.splitlines() if "settings files" in line]
    assert files.startswith("warning") and ".env (DATABASE_URL)" in files
    assert "chmod 600 .env" in files
    (project.root / ".env").chmod(0o600)
    again = project.run("doctor")
    [files] = [line for line in again.stdout.splitlines() if "settings files" in line]
    assert files.startswith("ok")


def test_a_second_init_knows_the_key_exists(project: Project) -> None:
    first = project.run("init")
    assert "creates the key ./.backup_key on the first run" in first.stdout
    assert "DATABASE_URL is not set: put it in the app's .env" in first.stdout
    assert project.run("key", "init").returncode == 0
    second = project.run("init", env={"DATABASE_URL": "postgresql://h/app"})
    assert second.returncode == 0, second.stderr
    assert "which cron has not: put it in the app's .env" in second.stdout
    assert "creates the key" not in second.stdout
    assert "with the existing key ./.backup_key" in second.stdout
