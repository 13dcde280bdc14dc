"""The typed seams: one vocabulary of states, and each component's typed manifest source."""

from __future__ import annotations

import json

from cosmic_backup.components import source_of
from cosmic_backup.components.config import ConfigSource
from cosmic_backup.components.database.source import DatabaseSource
from cosmic_backup.components.files import FilesSource, SavedFolder
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.operations.backup import BackupOutcome, run_status
from cosmic_backup.states import Health, Outcome, Trust


def manifest(component: str, source: dict[str, object]) -> Manifest:
    return Manifest(
        f"{component}-20261124T020000Z",
        component,
        Outcome.OK,
        "full",
        ["manual"],
        "",
        "",
        "0",
        source=source,
    )


def test_states_reach_json_as_their_plain_words() -> None:
    words = {"outcome": Outcome.FAILED, "health": Health.NOT_CONFIGURED, "trust": Trust.TAMPERED}
    assert json.loads(json.dumps(words)) == {
        "outcome": "failed",
        "health": "NOT CONFIGURED",
        "trust": "tampered",
    }
    assert Outcome("ok") is Outcome.OK and Health("OVERDUE") is Health.OVERDUE


def test_only_ok_and_not_configured_are_healthy() -> None:
    assert {h for h in Health if h.healthy} == {Health.OK, Health.NOT_CONFIGURED}


def test_a_run_of_several_components_says_partial_in_the_same_words() -> None:
    ok, failed = BackupOutcome("config", Outcome.OK), BackupOutcome("files", Outcome.FAILED)
    skipped = BackupOutcome("database", Outcome.SKIPPED)
    assert run_status([ok, skipped]) is Outcome.OK
    assert run_status([failed, skipped]) is Outcome.FAILED
    assert run_status([ok, failed, skipped]) is Outcome.PARTIAL


def test_a_database_source_round_trips_and_reads_older_and_newer_manifests() -> None:
    source = DatabaseSource(
        database="app",
        host="db.internal",
        server_version="15.8 (Debian 15.8-1)",
        pg_dump_version="16.2",
        tables=["app.v2.items"],
        row_counts={"app.v2.items": 3},
        schemas=["app.v2"],
        app_version="abc123",
    )
    again = DatabaseSource.of(manifest("database", json.loads(json.dumps(source.to_dict()))))
    assert again == source
    assert (again.server_major, again.pg_dump_major) == (15, 16)
    older = DatabaseSource.of(manifest("database", {"database": "app", "future_field": 1}))
    assert older.row_counts == {} and older.pg_dump_major == 0 and older.database == "app"
    assert source.summary() == "app, app version abc123"


def test_a_files_source_gives_back_its_folders_typed() -> None:
    source = FilesSource(folders=[SavedFolder("uploads", "uploads", 2, 10)], files=2, bytes=10)
    read = source_of(manifest("files", json.loads(json.dumps(source.to_dict()))))
    assert isinstance(read, FilesSource) and read.folders == [
        SavedFolder("uploads", "uploads", 2, 10)
    ]
    assert read.summary() == "2 files"


def test_each_component_reads_its_own_record() -> None:
    config = source_of(manifest("config", {"files": 3, "environment_variables": 4}))
    assert (
        isinstance(config, ConfigSource) and config.summary() == "3 files, 4 environment variables"
    )
    assert isinstance(source_of(manifest("database", {})), DatabaseSource)
