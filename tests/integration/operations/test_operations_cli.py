"""prune, status, the webhook and the metrics file through the real CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Project, clean_environ
from tests.unit.operations.webhook import webhook_server

KEY = "operations passphrase 0123456789abc"


def aged_copy(project: Project, days: float) -> str:
    """Re-date the newest config backup by `days`, re-signing its manifest with the key."""
    from cosmic_backup.catalog import Catalog
    from cosmic_backup.clock import iso
    from cosmic_backup.format.keys import Key

    key = Key(KEY.encode())
    catalog = Catalog(project.backups, lambda fp: key)
    newest = catalog.entries("config")[-1]
    manifest = newest.manifest
    started = datetime.now(UTC) - timedelta(days=days)
    new_id = f"config-{started:%Y%m%dT%H%M%S}Z"
    artifact = f"{new_id}.tar.gz.enc"
    (project.backups / "config" / manifest.artifact).rename(project.backups / "config" / artifact)
    catalog.store.delete(catalog.manifest_name("config", manifest.id))
    manifest.id, manifest.artifact = new_id, artifact
    manifest.started_at = manifest.finished_at = iso(started)
    catalog.write_manifest(manifest, key)
    return new_id


def listed(project: Project) -> list[dict]:
    return json.loads(project.run("--json", "list").stdout)


def make(project: Project, *ages: float) -> list[str]:
    project.env["BACKUP_KEY"] = KEY
    project.env["BACKUP_FORMAT"] = "single-file"  # aged_copy renames the artifact
    (project.root / ".env").write_text("A=1\n")
    ids = []
    for age in ages:
        # a long retention while building the history, so the backups do not prune it
        assert project.run("backup", "config", env={"RETENTION_DAYS": "1000"}).returncode == 0
        ids.append(aged_copy(project, age))
    return ids


def test_prune_dry_run_removes_nothing_then_prune_removes_the_old(project: Project) -> None:
    old, older, recent = make(project, 40, 35, 1)
    dry = project.run("prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    removing = [line for line in dry.stdout.splitlines() if line.startswith("would remove")]
    assert sorted(line.split()[2] for line in removing) == sorted([old, older])
    assert f"{recent}" in dry.stdout and "newest good backup" in dry.stdout
    assert len(listed(project)) == 3
    plan = json.loads(project.run("--json", "prune", "--dry-run").stdout)
    removed = plan["components"][2]["removed"]
    assert sorted(removed) == sorted([old, older])
    logs = project.root / "logs"
    (logs / "cosmic-backup-2020-01-01.log").write_text("an old day")
    real = project.run("prune")
    assert real.returncode == 0, real.stderr
    assert [e["id"] for e in listed(project)] == [recent]
    assert not list((project.backups / "config").glob(f"{old}*"))
    assert not (logs / "cosmic-backup-2020-01-01.log").exists()  # logs follow retention
    assert list(logs.glob("cosmic-backup-*.log"))  # today's stays


def test_retention_runs_after_a_successful_backup(project: Project) -> None:
    make(project, 45)
    assert project.run("backup", "config").returncode == 0
    assert len(listed(project)) == 1  # the 45-day-old one went, the new one stays


def test_status_exit_codes_and_json(project: Project) -> None:
    project.env["BACKUP_KEY"] = KEY
    never = project.run("--json", "status")
    assert never.returncode == 8
    data = json.loads(never.stdout)
    health = {c["component"]: c["health"] for c in data["components"]}
    assert health == {"database": "NOT CONFIGURED", "files": "NOT CONFIGURED", "config": "NEVER"}
    unhealthy = project.run("status", "--quiet")  # --quiet speaks only when it matters
    assert unhealthy.returncode == 8 and "NEVER" in unhealthy.stdout
    (project.root / ".env").write_text("A=1\n")
    assert project.run("backup", "config").returncode == 0
    assert project.run("status").returncode == 0
    failing = project.run("backup", "config", env={"BACKUP_KEY_COMMAND": "false", "BACKUP_KEY": ""})
    assert failing.returncode == 5
    result = project.run("--json", "status")
    assert result.returncode == 8
    assert {c["component"]: c["health"] for c in json.loads(result.stdout)["components"]}[
        "config"
    ] == "FAILING"
    assert project.run("backup", "config").returncode == 0
    healthy = project.run("status")
    assert healthy.returncode == 0  # a good backup after the failure: OK again
    [row] = [line.split() for line in healthy.stdout.splitlines() if line.startswith("config ")]
    assert row[1] == "OK" and "min" in row and "full" in row  # health, age, mode
    assert "config: last failure " in healthy.stdout and "BACKUP_KEY_COMMAND" in healthy.stdout
    quiet = project.run("status", "-q")
    assert (quiet.returncode, quiet.stdout) == (0, "")


def test_status_overdue(project: Project) -> None:
    make(project, 40)  # the only backup is 40 days old
    overdue = project.run("--json", "status", env={"BACKUP_CONFIG_INTERVAL_DAYS": "31"})
    assert overdue.returncode == 8
    assert "OVERDUE" in overdue.stdout


def test_webhook_and_metrics_after_a_real_backup(project: Project, tmp_path: Path) -> None:
    metrics = tmp_path / "textfile" / "cosmic_backup.prom"
    (project.root / ".env").write_text("A=1\n")
    with webhook_server() as hook:  # this test's own server: it sees this test's calls only
        project.env.update(
            {
                "BACKUP_KEY": KEY,
                "BACKUP_METRICS_FILE": str(metrics),
                "BACKUP_NOTIFY_URL": hook.url("/h/tok"),
            }
        )
        result = project.run("backup", "all")
    assert result.returncode == 0, result.stderr
    [received] = hook.received
    body = received.body
    assert body["status"] == "ok"
    assert {c["component"]: c["status"] for c in body["components"]} == {
        "database": "skipped",
        "files": "skipped",
        "config": "ok",
    }
    families = {f.name: f for f in text_string_to_metric_families(metrics.read_text())}
    [sample] = families["cosmic_backup_last_status"].samples
    assert sample.labels == {"component": "config"} and sample.value == 1.0
    # An unreachable webhook does not fail the backup; it is logged.
    again = project.run("backup", "config")
    assert again.returncode == 0, again.stderr
    log = next((project.root / "logs").iterdir()).read_text()
    assert "the webhook could not be called" in log
    assert "/h/tok" not in log


def test_schedule_prints_each_format(project: Project) -> None:
    cron = project.run("schedule")
    assert cron.returncode == 0 and "./scripts/backup.sh files --tag scheduled" in cron.stdout
    systemd = project.run("schedule", "--systemd", "--install", str(project.root / "units"))
    assert systemd.returncode == 0
    assert (
        len(list((project.root / "units").glob("cosmic-backup-*.timer"))) == 5
    )  # database, files, config, restore-test, status
    k8s = project.run("schedule", "--kubernetes")
    assert k8s.returncode == 0 and k8s.stdout.count("kind: CronJob") == 5
    assert project.run("schedule", "--cron", "--systemd").returncode == 2


def test_the_developers_settings_never_reach_a_test_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """clean_environ drops the shell's BACKUP_*, DATABASE_URL, PG* ... and adds the test's."""
    for name in ("BACKUP_KEY", "DATABASE_URL", "PGPASSWORD", "RETENTION_DAYS", "APP_VERSION"):
        monkeypatch.setenv(name, "from-the-developer-shell")
    monkeypatch.setenv("UNRELATED", "kept")
    env = clean_environ({"BACKUP_DIR": "/t"})
    assert "from-the-developer-shell" not in env.values()
    assert env["UNRELATED"] == "kept" and env["BACKUP_DIR"] == "/t"


def test_backup_wait_setting_waits_for_the_lock(project: Project) -> None:
    """Scheduled runs set BACKUP_WAIT=1, since the wrappers cannot pass global options."""
    import fcntl
    import os
    import time

    make(project)
    project.backups.mkdir(parents=True, exist_ok=True)
    lock = os.open(project.backups / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    refused = project.run("backup", "config")
    assert refused.returncode == 7
    waiting = project.popen("backup", "config", env={"BACKUP_WAIT": "1"})
    time.sleep(2)
    assert waiting.poll() is None  # still waiting for the lock
    fcntl.flock(lock, fcntl.LOCK_UN)
    os.close(lock)
    _, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err


def test_a_refused_run_still_reaches_the_webhook(project: Project) -> None:
    import fcntl
    import os

    make(project)
    project.backups.mkdir(parents=True, exist_ok=True)
    lock = os.open(project.backups / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        with webhook_server() as hook:
            result = project.run("backup", "config", env={"BACKUP_NOTIFY_URL": hook.url()})
    finally:
        os.close(lock)
    assert result.returncode == 7
    [received] = hook.received
    body = received.body
    assert body["status"] == "failed" and "locked" in body["components"][0]["message"]


def test_prune_sweeps_the_chunk_store_of_what_no_backup_uses(project: Project) -> None:
    """A killed format 2 backup left packs and a list that no manifest names: past the
    grace period, `prune` deletes them (a dry run first changes nothing)."""
    import io
    import os

    from cosmic_backup.chunkstore import ChunkStore
    from cosmic_backup.format.keys import Key

    make(project, 1)
    store = ChunkStore.open(project.backups, Key(KEY.encode()), wrap_iterations=1000)
    killed = store.write_payload(io.BytesIO(os.urandom(3 << 20)), "database", "database-x")
    three_days_ago = (datetime.now(UTC) - timedelta(days=3)).timestamp()
    store_files = [p for p in (project.backups / "store" / "packs").rglob("*") if p.is_file()]
    for path in [*store_files, project.backups / "database" / killed.name]:
        os.utime(path, (three_days_ago, three_days_ago))
    assert store_files

    assert project.run("prune", "--dry-run").returncode == 0
    assert all(path.exists() for path in store_files)
    real = project.run("prune")
    assert real.returncode == 0, real.stderr
    assert not any(path.exists() for path in store_files)
    assert not (project.backups / "database" / killed.name).exists()
    assert len(listed(project)) == 1  # the format 1 backup is untouched
    log = "".join(p.read_text() for p in (project.root / "logs").glob("cosmic-backup-*.log"))
    assert "chunk store: freed" in log
