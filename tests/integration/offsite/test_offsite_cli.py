"""Off-site copies through the real CLI, against the real SeaweedFS the session starts:
upload after each backup, `sync` both ways, `list` showing where each backup is, restore
and verify from the bucket, retention off-site, two hosts on one bucket, clear errors."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conftest import TEST_BUCKET, Project, ProjectFactory
from tests.s3server import S3Server, free_ports
from tests.unit.operations.webhook import webhook_server

KEY = "offsite passphrase 0123456789abcdef"


def offsite_project(
    make_project: ProjectFactory, server: S3Server, remote_url: str, host: str = "web-1"
) -> Project:
    project = make_project()
    project.env.update(server.env())
    project.env.update({"BACKUP_KEY": KEY, "BACKUP_REMOTE": remote_url, "BACKUP_REMOTE_HOST": host})
    (project.root / ".env").write_text("SECRET_TOKEN=abc\nPORT=8000\n")
    (project.root / "config").mkdir()
    (project.root / "config" / "app.toml").write_text("[app]\nname = 'cosmic'\n")
    uploads = project.root / "uploads"
    uploads.mkdir()
    (uploads / "avatar.png").write_bytes(bytes(range(256)) * 40)
    (project.root / "static").mkdir()
    (project.root / "static" / "site.css").write_text("body { color: red }\n")
    return project


def remote_keys(server: S3Server, remote_url: str, host: str = "web-1") -> list[str]:
    prefix = remote_url.removeprefix(f"s3://{TEST_BUCKET}/") + f"/{host}/"
    answer = server.client().list_objects_v2(Bucket=TEST_BUCKET, Prefix=prefix)
    names = (item["Key"][len(prefix) :] for item in answer.get("Contents", []))
    return sorted(name for name in names if name != "root.json")  # the folder's owner record


def listed(project: Project, *flags: str) -> list[dict[str, Any]]:
    result = project.run("--json", "list", *flags)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def ok(result: Any) -> Any:
    assert result.returncode == 0, result.stderr
    return result


def test_each_backup_goes_off_site_and_list_says_where(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    project = offsite_project(make_project, s3_server, remote_url)
    backup = ok(project.run("--json", "backup", "all"))
    outcomes = {o["component"]: o for o in json.loads(backup.stdout)["components"]}
    assert outcomes["config"]["offsite"] == "ok" and outcomes["files"]["offsite"] == "ok"
    keys = remote_keys(s3_server, remote_url)
    for component in ("config", "files"):
        backup_id = outcomes[component]["id"]
        assert f"{component}/{backup_id}.manifest.json" in keys
        assert any(k.startswith(f"{component}/{backup_id}.") and k.endswith(".enc") for k in keys)
    assert {entry["where"] for entry in listed(project)} == {"both"}
    remote_only = listed(project, "--remote")
    assert sorted(e["id"] for e in remote_only) == sorted(
        o["id"] for o in outcomes.values() if o["id"]
    )


def test_restore_and_verify_use_the_off_site_copy_when_the_local_one_is_gone(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    project = offsite_project(make_project, s3_server, remote_url)
    ok(project.run("backup", "files"))
    original = (project.root / "uploads" / "avatar.png").read_bytes()
    shutil.rmtree(project.backups / "files")
    (project.root / "uploads" / "avatar.png").write_bytes(b"damaged")

    assert [e["where"] for e in listed(project, "files")] == ["remote"]
    verify = ok(project.run("verify", "files"))
    assert "ok" in verify.stdout
    restore = ok(project.run("restore", "files", "latest", "--yes", "--no-safety-backup"))
    assert "off-site copy" in restore.stderr
    assert (project.root / "uploads" / "avatar.png").read_bytes() == original
    # no download is left behind: spooled files are private and already unlinked
    assert not [p for p in project.backups.rglob("*") if p.is_file() and "tmp" in p.name]


def test_a_corrupted_off_site_object_is_refused_naming_the_check(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    project = offsite_project(make_project, s3_server, remote_url)
    ok(project.run("backup", "config"))
    shutil.rmtree(project.backups / "config")
    prefix = remote_url.removeprefix(f"s3://{TEST_BUCKET}/") + "/web-1/"
    (artifact,) = [k for k in remote_keys(s3_server, remote_url) if k.endswith(".enc")]
    client = s3_server.client()
    stored = client.get_object(Bucket=TEST_BUCKET, Key=prefix + artifact)["Body"].read()
    flipped = stored[:-40] + bytes(b ^ 0xFF for b in stored[-40:])  # same length
    client.put_object(Bucket=TEST_BUCKET, Key=prefix + artifact, Body=flipped)

    restore = project.run("restore", "config", "latest", "--yes")
    assert restore.returncode == 6, restore.stderr
    assert "MAC mismatch" in restore.stderr
    verify = project.run("verify", "config")
    assert verify.returncode != 0
    assert "MAC mismatch" in verify.stdout + verify.stderr
    pull = project.run("sync", "--pull")
    assert pull.returncode == 1 and "MAC mismatch" in pull.stdout
    assert not list((project.backups / "config").glob("*"))  # nothing of it counted here


def test_a_local_artifact_damaged_since_the_backup_is_never_uploaded_as_good(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    project = offsite_project(make_project, s3_server, remote_url)
    (port,) = free_ports(1)
    nowhere = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "1"}
    ok(project.run("backup", "config", env=nowhere))  # not uploaded yet
    (artifact,) = (project.backups / "config").glob("*.enc")
    data = bytearray(artifact.read_bytes())
    data[-1] ^= 0x01  # one bit rots on the local disk
    artifact.write_bytes(bytes(data))
    sync = project.run("sync")
    assert sync.returncode == 1
    assert "no longer matches its MAC" in sync.stdout
    assert remote_keys(s3_server, remote_url) == []  # neither the artifact nor a manifest


def test_a_failed_upload_is_recorded_status_is_unhealthy_and_sync_completes_it(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    project = offsite_project(make_project, s3_server, remote_url)
    (port,) = free_ports(1)
    nowhere = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "1"}
    metrics = project.root / "metrics.prom"
    with webhook_server() as hook:
        project.env.update(
            {"BACKUP_METRICS_FILE": str(metrics), "BACKUP_NOTIFY_URL": hook.url("/hook")}
        )
        backup = project.run("--json", "backup", "config", env=nowhere)
    assert backup.returncode == 0, backup.stderr  # the local backup is good
    (outcome,) = json.loads(backup.stdout)["components"]
    assert "cannot be reached" in outcome["offsite"]
    assert "off-site copy" in backup.stderr
    (sent,) = [c for c in hook.received[0].body["components"] if c["component"] == "config"]
    assert "cannot be reached" in sent["offsite"]
    assert 'cosmic_backup_offsite_missing{component="config"} 1.000' in metrics.read_text()
    del project.env["BACKUP_NOTIFY_URL"]
    assert remote_keys(s3_server, remote_url) == []

    status = project.run("--json", "status")
    assert status.returncode == 8, status.stdout + status.stderr
    config = next(c for c in json.loads(status.stdout)["components"] if c["component"] == "config")
    assert config["health"] == "OFFSITE-MISSING"

    sync = ok(project.run("sync"))
    assert f"uploaded    {outcome['id']}" in sync.stdout
    assert f"config/{outcome['id']}.manifest.json" in remote_keys(s3_server, remote_url)
    assert project.run("status", "--quiet").stdout.count("OFFSITE-MISSING") == 0
    assert ok(project.run("sync")).stdout.startswith("0 backup(s) copied")


def test_sync_pull_fetches_what_is_missing_here(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    first = offsite_project(make_project, s3_server, remote_url)
    ok(first.run("backup", "all"))
    second = make_project()
    second.env.update({**first.env})
    pull = ok(second.run("sync", "--pull"))
    assert pull.stdout.count("downloaded") == 2
    assert {e["where"] for e in listed(second)} == {"both"}
    assert ok(second.run("verify")).returncode == 0


def test_two_hosts_on_one_bucket_never_touch_each_other(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    one = offsite_project(make_project, s3_server, remote_url, host="web-1")
    two = offsite_project(make_project, s3_server, remote_url, host="web-2")
    ok(one.run("backup", "config"))
    ok(two.run("backup", "config"))
    ok(two.run("backup", "config"))
    assert len(listed(one, "--remote")) == 1
    assert len(listed(two, "--remote")) == 2
    ok(two.run("prune", "--keep-last", "1", "--retention-days", "1"))
    assert len(listed(one, "--remote")) == 1  # web-1's copy untouched
    assert len(remote_keys(s3_server, remote_url, "web-1")) == 2


def aged_copy(project: Project, days: float) -> str:
    """Re-date the newest local config backup by `days` (a new id), re-signing its manifest."""
    from cosmic_backup.catalog import Catalog
    from cosmic_backup.clock import iso
    from cosmic_backup.format.keys import Key

    key = Key(KEY.encode())
    catalog = Catalog(project.backups, lambda fp: key)
    manifest = catalog.entries("config")[-1].manifest
    started = datetime.now(UTC) - timedelta(days=days)
    new_id = f"config-{started:%Y%m%dT%H%M%S}Z"
    artifact = f"{new_id}.tar.gz.enc"
    folder = project.backups / "config"
    shutil.copyfile(folder / manifest.artifact, folder / artifact)
    manifest.id, manifest.artifact = new_id, artifact
    manifest.started_at = manifest.finished_at = iso(started)
    catalog.write_manifest(manifest, key)
    return new_id


def test_retention_applies_off_site_and_waits_while_uploads_fail(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    project = offsite_project(make_project, s3_server, remote_url)
    project.env["RETENTION_DAYS"] = "30"
    ok(project.run("backup", "config"))
    old = aged_copy(project, 40)
    ok(project.run("sync"))  # the 40-day-old copy goes off-site too
    assert old in {e["id"] for e in listed(project, "--remote")}

    (port,) = free_ports(1)
    nowhere = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "1"}
    ok(project.run("backup", "config", env=nowhere))  # its upload fails: recorded
    dry = ok(project.run("--json", "prune", "--dry-run"))
    remote_plan = [c for c in json.loads(dry.stdout)["components"] if c["where"] == "remote"]
    config_plan = next(c for c in remote_plan if c["component"] == "config")
    assert "uploads are failing" in config_plan["note"] and config_plan["removed"] == []
    assert old in {e["id"] for e in listed(project, "--remote")}

    ok(project.run("sync"))
    human = ok(project.run("prune", "--dry-run"))
    assert f"would remove {old}" in human.stdout
    assert any(old in line and line.endswith("(off-site)") for line in human.stdout.splitlines())
    dry = ok(project.run("--json", "prune", "--dry-run"))
    config_plan = next(
        c
        for c in json.loads(dry.stdout)["components"]
        if c["where"] == "remote" and c["component"] == "config"
    )
    assert config_plan["removed"] == [old]
    ok(project.run("prune"))
    remote_ids = {e["id"] for e in listed(project, "--remote")}
    assert old not in remote_ids and len(remote_ids) == 2


def test_clear_errors_name_the_problem_never_the_secret(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    project = offsite_project(make_project, s3_server, remote_url)
    ok(project.run("backup", "config"))
    cases = {
        "refused the credentials": {"AWS_SECRET_ACCESS_KEY": "not-" + s3_server.secret_key},
        "does not exist": {"BACKUP_REMOTE": "s3://no-such-bucket-anywhere/x"},
        "cannot be reached": {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_ports(1)[0]}",
            "AWS_MAX_ATTEMPTS": "1",
        },
    }
    for expected, env in cases.items():
        result = project.run("sync", env=env)
        assert result.returncode == 1, (expected, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
        assert s3_server.secret_key not in result.stderr + result.stdout
        assert "Traceback" not in result.stderr
    logs = "".join(p.read_text() for p in (project.root / "logs").glob("*.log"))
    assert s3_server.secret_key not in logs and KEY not in logs
    manifests = "".join(p.read_text() for p in project.backups.rglob("*.json"))
    assert s3_server.secret_key not in manifests and s3_server.access_key not in manifests


def test_doctor_checks_the_remote_with_a_probe_it_removes(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    project = offsite_project(make_project, s3_server, remote_url)

    def off_site(**env: str) -> tuple[int, dict[str, Any]]:
        result = project.run("--json", "doctor", env=env)
        checks = json.loads(result.stdout)["checks"]
        return result.returncode, next(c for c in checks if c["name"] == "off-site")

    code, check = off_site()
    assert check["state"] == "ok" and "write, list, read, delete" in check["detail"]
    assert remote_keys(s3_server, remote_url) == []  # the probe is gone
    code, check = off_site(AWS_SECRET_ACCESS_KEY="wrong-secret-value")
    assert code == 1 and check["state"] == "failed"
    assert "refused the credentials" in check["detail"]
    assert "wrong-secret-value" not in json.dumps(check)


def test_object_lock_makes_uploads_undeletable_and_retention_skips_them(
    make_project: ProjectFactory, s3_server: S3Server
) -> None:
    client = s3_server.client()
    client.create_bucket(Bucket="cosmic-locked", ObjectLockEnabledForBucket=True)
    project = offsite_project(make_project, s3_server, "s3://cosmic-locked/app")
    project.env.update({"BACKUP_REMOTE_LOCK_DAYS": "2", "RETENTION_DAYS": "30"})
    ok(project.run("backup", "config"))
    old = aged_copy(project, 40)
    ok(project.run("sync"))
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="cosmic-locked")["Contents"]]
    artifact = next(k for k in keys if old in k and k.endswith(".enc"))
    head = client.head_object(Bucket="cosmic-locked", Key=artifact)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(days=1)

    prune = ok(project.run("--json", "prune"))
    remote_plan = next(
        c
        for c in json.loads(prune.stdout)["components"]
        if c["where"] == "remote" and c["component"] == "config"
    )
    assert remote_plan["removed"] == []
    (kept,) = [d for d in remote_plan["decisions"] if d["id"] == old]
    assert any("locked off-site until" in reason for reason in kept["reasons"])
    assert old in {e["id"] for e in listed(project, "--remote")}


def test_a_malformed_remote_never_stops_local_retention(
    make_project: ProjectFactory, s3_server: S3Server
) -> None:
    project = offsite_project(make_project, s3_server, "https://not-s3/x")
    project.env["RETENTION_DAYS"] = "30"
    backup = project.run("backup", "config")
    assert backup.returncode == 0, backup.stderr
    assert "is not an s3:// URL" in backup.stderr  # the upload's warning
    old = aged_copy(project, 40)
    prune = project.run("--json", "prune")
    assert prune.returncode == 0, prune.stderr
    components = json.loads(prune.stdout)["components"]
    local = next(c for c in components if c["where"] == "local" and c["component"] == "config")
    assert local["removed"] == [old]
    remote = next(c for c in components if c["where"] == "remote" and c["component"] == "config")
    assert "not an s3:// URL" in remote["note"]
