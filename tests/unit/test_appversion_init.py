"""The app version read from .git, and `init` never overwriting anything."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cosmic_backup.operations.appversion import app_version, git_commit
from cosmic_backup.operations.init import (
    GITIGNORE_ENTRIES,
    INSTALLATION_FILE,
    init_project,
    wrapper_text,
)

# The wrapper earlier versions of init wrote: it knew only ./.venv and PATH, so under cron
# it never found a virtualenv elsewhere.
EARLIER_BACKUP_SH = """#!/bin/sh
# Back up this app with cosmic-backup: ./scripts/backup.sh all|database|files|config [flags]
# Runs from the project root (this script's parent folder), so cron can call it from anywhere.
set -eu
cd "$(dirname "$0")/.."
if [ -n "${COSMIC_BACKUP:-}" ]; then exec $COSMIC_BACKUP backup "$@"; fi
if [ -x ./.venv/bin/cosmic-backup ]; then exec ./.venv/bin/cosmic-backup backup "$@"; fi
if command -v cosmic-backup >/dev/null 2>&1; then exec cosmic-backup backup "$@"; fi
exec python3 -m cosmic_backup backup "$@"
"""


def test_git_commit_of_a_real_repository(tmp_path: Path) -> None:
    run = {"cwd": tmp_path, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q"], **run)
    (tmp_path / "a").write_text("a")
    subprocess.run(["git", "add", "a"], **run)
    subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "a"], **run
    )
    head = subprocess.run(["git", "rev-parse", "HEAD"], text=True, **run).stdout.strip()
    assert git_commit(tmp_path) == head
    assert app_version(tmp_path, None) == f"git:{head[:12]}"
    assert app_version(tmp_path, "v1.2.3") == "v1.2.3"
    subprocess.run(["git", "pack-refs", "--all"], **run)  # the ref now lives in packed-refs
    assert git_commit(tmp_path) == head


def test_no_git_no_version(tmp_path: Path) -> None:
    assert app_version(tmp_path, None) is None


def test_init_keeps_existing_files_and_adds_missing_gitignore_lines(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("node_modules\n.backup_key")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "backup.sh").write_text("# mine\n")
    steps = {Path(s.path).name: s.action for s in init_project(tmp_path)}
    assert steps == {
        "backup.sh": "kept",
        "restore.sh": "created",
        "recover.sh": "created",
        ".cosmic-backup-python": "created",
        "cosmic-backup.toml": "created",
        ".gitignore": "updated",
    }
    assert (tmp_path / "scripts" / "backup.sh").read_text() == "# mine\n"
    lines = (tmp_path / ".gitignore").read_text().splitlines()
    assert lines[:2] == ["node_modules", ".backup_key"]
    assert all(lines.count(entry) == 1 for entry in GITIGNORE_ENTRIES)
    assert (tmp_path / "scripts" / "restore.sh").stat().st_mode & 0o111
    assert (tmp_path / "scripts" / "recover.sh").stat().st_mode & 0o777 == 0o755
    again = {Path(s.path).name: s.action for s in init_project(tmp_path)}
    assert set(again.values()) == {"kept"}


def test_the_settings_template_uncommented_is_valid_and_changes_nothing(tmp_path: Path) -> None:
    from cosmic_backup.operations.init import settings_template
    from cosmic_backup.settings import CONFIG_FILE_NAME, load_settings

    lines = [
        line[2:]
        for line in settings_template().splitlines()
        if line.startswith("# ") and " = " in line and not line.endswith(" =")
    ]
    (tmp_path / CONFIG_FILE_NAME).write_text("\n".join(lines) + "\n")
    from_file = load_settings(tmp_path, environ={})
    assert from_file.values == load_settings(tmp_path / "elsewhere", environ={}).values
    assert from_file.sources["retention_days"] == CONFIG_FILE_NAME


def test_init_records_its_python_and_updates_unchanged_earlier_wrappers(tmp_path: Path) -> None:
    import sys

    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "backup.sh").write_text(EARLIER_BACKUP_SH)
    (tmp_path / INSTALLATION_FILE).write_text("/old/venv/bin/python\n")
    steps = {Path(s.path).name: s.action for s in init_project(tmp_path)}
    assert steps["backup.sh"] == "updated" and steps[INSTALLATION_FILE] == "updated"
    assert (tmp_path / "scripts" / "backup.sh").read_text() == wrapper_text("backup.sh")
    assert (tmp_path / INSTALLATION_FILE).read_text() == sys.executable + "\n"
    assert INSTALLATION_FILE in (tmp_path / ".gitignore").read_text().splitlines()
