"""Restore tests of files and configuration, and how they are watched: the manifest,
`list`, `status` (UNTESTED past BACKUP_RESTORE_TEST_INTERVAL_DAYS, clock faked), the
webhook and the metrics."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from cosmic_backup.clock import FixedClock
from cosmic_backup.operations.context import open_runtime
from cosmic_backup.operations.status import collect
from cosmic_backup.settings import load_settings
from cosmic_backup.states import Health
from tests.conftest import Project, clean_environ
from tests.unit.operations.webhook import webhook_server

KEY = "restore test status passphrase 0123"


def statuses(project: Project, days_later: float, **env: str) -> dict[str, object]:
    """`status` as it would be `days_later`: the clock faked, the catalog real."""
    settings = load_settings(project.root, environ=clean_environ({**project.env, **env}))
    rt = open_runtime(settings, clock=FixedClock(_now() + timedelta(days=days_later)))
    return {s.component: s for s in collect(rt)}


def _now():  # type: ignore[no-untyped-def]
    from cosmic_backup.clock import SystemClock

    return SystemClock().now()


def test_files_and_config_restore_tests_are_recorded_watched_and_reported(
    project: Project, tmp_path: Path
) -> None:
    metrics = tmp_path / "textfile" / "cosmic_backup.prom"
    project.env.update({"BACKUP_KEY": KEY, "BACKUP_METRICS_FILE": str(metrics)})
    (project.root / "uploads").mkdir()
    (project.root / "uploads" / "photo.jpg").write_bytes(os.urandom(5000))
    (project.root / ".env").write_text("SECRET=1\n")
    assert project.run("backup", "files").returncode == 0
    assert project.run("backup", "config").returncode == 0
    # Never tested: UNTESTED (unhealthy) once an interval is set, OK without one.
    interval = {"BACKUP_RESTORE_TEST_INTERVAL_DAYS": "7"}
    assert statuses(project, 0, **interval)["files"].health == Health.UNTESTED  # type: ignore[attr-defined]
    assert statuses(project, 0)["files"].health == Health.OK  # type: ignore[attr-defined]

    with webhook_server() as hook:
        url = f"http://127.0.0.1:{hook.port}/hook"
        result = project.run("verify", "--restore-test", env={"BACKUP_NOTIFY_URL": url})
    assert result.returncode == 0, result.stderr
    assert "1 files" in result.stdout and "database" in result.stdout  # the drill's table
    body = hook.received[0].body
    assert body["operation"] == "restore test" and body["status"] == "ok"
    assert {c["component"] for c in body["components"]} == {"files", "config"}

    families = {f.name: f for f in text_string_to_metric_families(metrics.read_text())}
    status = families["cosmic_backup_last_restore_test_status"].samples
    assert {s.labels["component"]: s.value for s in status} == {"files": 1.0, "config": 1.0}
    assert families["cosmic_backup_last_restore_test_timestamp_seconds"].samples

    listed = json.loads(project.run("--json", "list").stdout)
    assert all(entry["restore_tested_at"] for entry in listed)
    assert listed[0]["restore_test"]["figures"]["files"] == 1

    # Tested now: healthy for a week, UNTESTED after (the backups are not overdue).
    long_intervals = {**interval, "BACKUP_FILES_INTERVAL_DAYS": "60"}
    long_intervals["BACKUP_CONFIG_INTERVAL_DAYS"] = "60"
    soon = statuses(project, 6, **long_intervals)
    assert soon["files"].health == Health.OK  # type: ignore[attr-defined]
    later = statuses(project, 8, **long_intervals)
    assert later["files"].health == Health.UNTESTED  # type: ignore[attr-defined]
    assert "verify --restore-test files" in later["files"].message  # type: ignore[attr-defined]
    assert later["files"].last_restore_test["ok"] is True  # type: ignore[attr-defined]

    shown = project.run("status", env=interval)
    assert shown.returncode == 0, shown.stdout
    assert "restore test" in shown.stdout


def test_a_file_count_the_archive_does_not_match_fails_the_restore_test(project: Project) -> None:
    """The archive and the manifest disagree on the count: exit 6, named."""
    from cosmic_backup.operations.artifacts import trusted_key

    project.env["BACKUP_KEY"] = KEY
    (project.root / "uploads").mkdir()
    (project.root / "uploads" / "a.txt").write_text("a")
    assert project.run("backup", "files").returncode == 0
    rt = open_runtime(load_settings(project.root, environ=clean_environ(project.env)))
    entry = rt.catalog.entries("files")[-1]
    entry.manifest.source["files"] = 2
    rt.catalog.write_manifest(entry.manifest, trusted_key(rt, entry))
    result = project.run("verify", "--restore-test", "files", "latest")
    assert result.returncode == 6, result.stdout + result.stderr
    assert "1 file(s) in the archive, the manifest says 2" in result.stdout
    assert "FAILED" in result.stdout


def test_misused_restore_test_options_are_usage_errors(project: Project) -> None:
    into = project.run("verify", "--into", "postgresql://localhost/x")
    assert into.returncode == 2 and "--into is for --restore-test" in into.stderr
    dated = project.run("verify", "--restore-test", "all", "2026-01-01")
    assert dated.returncode == 2 and "name a component" in dated.stderr
    unknown = project.run("verify", "--restore-test", "uploads")
    assert unknown.returncode == 2 and "'uploads' is not a component" in unknown.stderr
