"""`verify --restore-test database` on a terminal: its bar follows the dump into the
throwaway server, with a rate; under cron (pipes) nothing of it appears."""

from __future__ import annotations

import pytest

from tests.conftest import Project
from tests.terminal import ANSI_ESCAPE, RATE, frames, run_on_terminal

KEY = "restore test progress passphrase 0123"


@pytest.fixture
def database_project(project: Project, app_db: str) -> Project:
    project.env.update({"DATABASE_URL": app_db, "BACKUP_KEY": KEY})
    (project.root / ".env").write_text("A=1\n")
    assert project.run("backup", "database").returncode == 0
    return project


def test_the_restore_test_shows_its_bytes_and_a_rate(database_project: Project) -> None:
    code, drawn = run_on_terminal(database_project, "verify", "--restore-test", "database")
    assert code == 0, drawn
    shown = frames(drawn, "restore test of database-")
    assert shown, drawn
    last = shown[-1]
    # A small dump reaches pg_restore in one read: the bar must still give its rate.
    assert last.total > 0 and last.done == last.total, last
    assert RATE.search(last.line), last.line


def test_the_restore_test_under_cron_draws_nothing(database_project: Project) -> None:
    result = database_project.run("verify", "--restore-test", "database")
    assert result.returncode == 0, result.stderr
    assert " ok" in result.stdout, result.stdout
    output = result.stdout + result.stderr
    assert not ANSI_ESCAPE.search(output), output
    assert not RATE.search(output) and "restore test of" not in output, output
