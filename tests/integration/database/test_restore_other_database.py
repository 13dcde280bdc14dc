"""Restoring another database's backup (issue 18 item 9): the latest backup in the folder
came from `owndb`, and DATABASE_URL now names `victim`. The plan names the backup's
source, and replacing a database with another's content takes more than --yes."""

from __future__ import annotations

import json

from cosmic_backup.components.database.provenance import source_note
from cosmic_backup.components.database.source import DatabaseSource
from tests.conftest import Project
from tests.integration.database.appdb import execute, full_state, scalar
from tests.integration.database.conftest import PostgresServer
from tests.integration.database.test_jobs_restore import dbname

KEY = "other database passphrase 0123456789"
RESTORE = ("restore", "database", "latest", "--yes")


def owndb_backed_up(project: Project, postgres: PostgresServer) -> tuple[str, str]:
    """(owndb's URL, victim's URL); the latest backup is owndb's, DATABASE_URL is victim."""
    owndb = postgres.url(postgres.create_database("owndb"))
    victim = postgres.url(postgres.create_database("victim"))
    execute(owndb, "CREATE TABLE own_rows AS SELECT g AS id FROM generate_series(1, 7) g")
    execute(victim, "CREATE TABLE precious AS SELECT g AS id FROM generate_series(1, 3) g")
    project.env.update({"DATABASE_URL": owndb, "BACKUP_KEY": KEY})
    made = project.run("backup", "database")
    assert made.returncode == 0, made.stderr
    project.env["DATABASE_URL"] = victim
    return owndb, victim


def backups(project: Project) -> list[dict[str, object]]:
    listed: list[dict[str, object]] = json.loads(project.run("--json", "list", "database").stdout)
    return listed


def test_yes_alone_does_not_replace_a_database_with_another_ones_backup(
    project: Project, postgres: PostgresServer
) -> None:
    owndb, victim = owndb_backed_up(project, postgres)
    before = full_state(victim)

    refused = project.run(*RESTORE)
    assert refused.returncode == 2, refused.stderr
    assert f"The backup was taken from database {dbname(owndb)} on 127.0.0.1." in refused.stderr
    sentence = (
        f"This backup is of database {dbname(owndb)}, not of {dbname(victim)}: restoring it "
        f"replaces everything in {dbname(victim)} with {dbname(owndb)}'s content; nothing was "
        "changed. Pass --from-other-database with --yes"
    )
    assert sentence in refused.stderr and "Traceback" not in refused.stderr
    assert full_state(victim) == before
    assert len(backups(project)) == 1  # not even a pre-restore backup was taken

    accepted = project.run(*RESTORE, "--from-other-database")
    assert accepted.returncode == 0, accepted.stderr
    assert f"The backup was taken from database {dbname(owndb)}" in accepted.stderr
    assert scalar(victim, "SELECT count(*) FROM own_rows") == 7
    assert scalar(victim, "SELECT to_regclass('public.precious')") is None
    assert len(backups(project)) == 2  # its pre-restore backup holds what it replaced


def test_a_new_database_or_the_backups_own_needs_no_more_than_yes(
    project: Project, postgres: PostgresServer
) -> None:
    owndb, _ = owndb_backed_up(project, postgres)
    fresh = postgres.url(postgres.create_database("fresh"))
    into = project.run(*RESTORE, "--into", fresh, "--no-safety-backup")
    assert into.returncode == 0, into.stderr
    assert f"The backup was taken from database {dbname(owndb)}" in into.stderr
    assert scalar(fresh, "SELECT count(*) FROM own_rows") == 7

    project.env["DATABASE_URL"] = owndb
    execute(owndb, "DELETE FROM own_rows")
    own = project.run(*RESTORE, "--no-safety-backup")
    assert own.returncode == 0, own.stderr
    assert "not of" not in own.stderr
    assert scalar(owndb, "SELECT count(*) FROM own_rows") == 7


def test_the_flag_is_for_the_database_only(project: Project) -> None:
    result = project.run("restore", "files", "latest", "--yes", "--from-other-database")
    assert result.returncode == 2
    assert "--from-other-database are for the database only" in result.stderr


def test_a_manifest_without_its_source_says_unknown() -> None:
    assert "source database is unknown" in source_note(DatabaseSource())
    assert source_note(DatabaseSource(database="app", host="db1")) == (
        "The backup was taken from database app on db1."
    )
