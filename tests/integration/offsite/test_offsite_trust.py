"""What the bucket holds is believed only where it belongs: a rolled-back or moved manifest,
two backup roots under one host name, an artifact gone missing, a typo in an AWS setting.
Each case edits the real SeaweedFS directly with boto3, then runs the real CLI."""

from __future__ import annotations

import json

from tests.conftest import TEST_BUCKET, Project, ProjectFactory
from tests.integration.offsite.test_offsite_cli import (
    aged_copy,
    listed,
    offsite_project,
    ok,
    remote_keys,
)
from tests.s3server import S3Server


def object_key(remote_url: str, name: str, host: str = "web-1") -> str:
    return remote_url.removeprefix(f"s3://{TEST_BUCKET}/") + f"/{host}/{name}"


def backup_id(project: Project, component: str) -> str:
    result = ok(project.run("--json", "backup", component))
    (outcome,) = json.loads(result.stdout)["components"]
    assert outcome["offsite"] == "ok", outcome
    return str(outcome["id"])


def fresh_root(make_project: ProjectFactory, like: Project) -> Project:
    """Another backup folder with the same settings (disaster recovery, or a copied config)."""
    other = make_project()
    other.env.update(like.env)
    return other


def health(project: Project) -> dict[str, str]:
    status = project.run("--json", "status")
    return {c["component"]: c["health"] for c in json.loads(status.stdout)["components"]}


def test_a_rolled_back_or_moved_manifest_is_tampered_and_hides_nothing(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    project = offsite_project(make_project, s3_server, remote_url)
    older = backup_id(project, "config")
    (project.root / ".env").write_text("SECRET_TOKEN=newer\n")
    newer = backup_id(project, "config")
    client = s3_server.client()
    older_bytes = client.get_object(
        Bucket=TEST_BUCKET, Key=object_key(remote_url, f"config/{older}.manifest.json")
    )["Body"].read()
    client.put_object(  # the rollback: the older manifest's bytes under the newest's name
        Bucket=TEST_BUCKET,
        Key=object_key(remote_url, f"config/{newer}.manifest.json"),
        Body=older_bytes,
    )
    client.put_object(  # and a replay into another host's folder
        Bucket=TEST_BUCKET,
        Key=object_key(remote_url, f"config/{older}.manifest.json", host="web-2"),
        Body=older_bytes,
    )

    rebuilt = fresh_root(make_project, project)
    remote = {e["id"]: e for e in listed(rebuilt, "--remote")}
    assert set(remote) == {older, newer}  # the newer is still listed, under its own name
    assert remote[older]["trust"] == "verified"
    assert remote[newer]["trust"] == "tampered"
    assert "moved or replayed" in remote[newer]["problem"]
    latest = rebuilt.run("restore", "config", "latest", "--yes")
    assert latest.returncode == 6, latest.stdout + latest.stderr  # never the older, silently
    by_id = rebuilt.run("restore", "config", older, "--yes")
    assert by_id.returncode == 0, by_id.stdout + by_id.stderr  # the genuine one still serves

    elsewhere = fresh_root(make_project, project)
    elsewhere.env["BACKUP_REMOTE_HOST"] = "web-2"
    (moved,) = listed(elsewhere, "--remote")
    assert moved["trust"] == "tampered" and "of the host web-1" in moved["problem"]

    # A backup made before BACKUP_REMOTE_HOST was set goes off-site bound to its folder.
    (elsewhere.root / "uploads").mkdir()
    (elsewhere.root / "uploads" / "a.txt").write_text("a\n")
    ok(elsewhere.run("backup", "files", env={"BACKUP_REMOTE": "", "BACKUP_REMOTE_HOST": ""}))
    ok(elsewhere.run("sync", "--take-over"))
    uploaded = [e for e in listed(elsewhere, "--remote") if e["component"] == "files"]
    assert [(e["host"], e["trust"]) for e in uploaded] == [("web-2", "verified")]


def test_a_second_root_under_one_host_is_refused_and_never_touches_the_first(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    first = offsite_project(make_project, s3_server, remote_url)
    first.env["RETENTION_DAYS"] = "30"
    backup_id(first, "config")
    aged_copy(first, 40)  # one the copied root's retention would remove, were it its own
    ok(first.run("sync"))
    before = remote_keys(s3_server, remote_url)
    manifest = next(k for k in before if k.endswith(".manifest.json"))
    assert (
        json.loads(
            s3_server.client()
            .get_object(Bucket=TEST_BUCKET, Key=object_key(remote_url, manifest))["Body"]
            .read()
        )["root_id"]
        == (first.backups / ".root-id").read_text().strip()
    )

    copied = offsite_project(make_project, s3_server, remote_url)  # the same config, copied
    copied.env["RETENTION_DAYS"] = "30"
    result = ok(copied.run("--json", "backup", "config"))  # the local backup is good
    (outcome,) = json.loads(result.stdout)["components"]
    assert "belongs to another backup root" in outcome["offsite"]
    assert "Set BACKUP_REMOTE_HOST" in outcome["offsite"]
    assert health(copied)["config"] == "OFFSITE-MISSING"
    ok(copied.run("prune"))
    sync = copied.run("sync")
    assert sync.returncode != 0 and "BACKUP_REMOTE_HOST" in sync.stdout + sync.stderr
    assert remote_keys(s3_server, remote_url) == before  # nothing overwritten, nothing pruned

    copied.env["BACKUP_REMOTE_HOST"] = "web-2"  # what the sentence says to set
    ok(copied.run("sync"))
    assert health(copied)["config"] == "OK"
    assert remote_keys(s3_server, remote_url) == before

    rebuilt = fresh_root(make_project, first)  # a rebuilt server continues the series
    ok(rebuilt.run("restore", "config", "latest", "--yes"))
    refused = ok(rebuilt.run("--json", "backup", "config"))
    assert "belongs to another" in json.loads(refused.stdout)["components"][0]["offsite"]
    ok(rebuilt.run("sync", "--take-over"))
    assert len(listed(rebuilt, "--remote")) == 3
    assert {e["trust"] for e in listed(rebuilt, "--remote")} == {"verified"}
    old = first.run("--json", "backup", "config")  # the old root, if it still ran, now waits
    assert "belongs to another" in json.loads(old.stdout)["components"][0]["offsite"]


def test_sync_uploads_a_missing_artifact_again_and_status_reports_a_lost_one(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    project = offsite_project(make_project, s3_server, remote_url)
    kept = backup_id(project, "config")
    backup_id(project, "files")  # an older one, intact everywhere
    lost = backup_id(project, "files")
    client = s3_server.client()
    artifact = {
        backup: next(k for k in remote_keys(s3_server, remote_url) if backup in k and ".enc" in k)
        for backup in (kept, lost)
    }
    for name in artifact.values():
        client.delete_object(Bucket=TEST_BUCKET, Key=object_key(remote_url, name))
    for path in project.backups.glob(f"files/{lost}.*"):
        path.unlink()  # and that files backup has no local copy left either
    (kept_artifact,) = project.backups.glob(f"config/{kept}.*.enc")

    sync = project.run("sync")
    assert sync.returncode == 1
    assert f"uploaded    {kept}" in sync.stdout
    assert f"failed      {lost}" in sync.stdout and "no local copy" in sync.stdout
    head = client.head_object(Bucket=TEST_BUCKET, Key=object_key(remote_url, artifact[kept]))
    assert head["ContentLength"] == kept_artifact.stat().st_size
    now = health(project)
    assert now["config"] == "OK" and now["files"] == "OFFSITE-MISSING"
    backup_id(project, "files")  # a newer backup, complete off-site: the gap is history
    again = ok(project.run("sync"))
    assert f"skipped     {lost}" in again.stdout
    assert health(project)["files"] == "OK"


def test_a_typo_in_an_aws_setting_is_one_sentence_and_never_stops_local_backups(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    project = offsite_project(make_project, s3_server, remote_url)
    cases = {
        "AWS_MAX_ATTEMPTS": {"AWS_MAX_ATTEMPTS": "five"},
        "AWS_ENDPOINT_URL": {"AWS_ENDPOINT_URL": s3_server.endpoint.split("://", 1)[1]},
    }
    for setting, env in cases.items():
        result = project.run("--json", "backup", "all", env=env)
        assert result.returncode == 0, result.stderr
        assert "This is a bug" not in result.stderr
        outcomes = json.loads(result.stdout)["components"]
        done = [o for o in outcomes if o["status"] == "ok"]
        assert {o["component"] for o in done} == {"config", "files"}  # both ran locally
        assert all(f"The setting {setting}" in o["offsite"] for o in done)
        status = project.run("status", env=env)
        assert status.returncode == 8 and setting in status.stdout
        doctor = project.run("--json", "doctor", env=env)
        assert "This is a bug" not in doctor.stderr
        checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert setting in checks["off-site"]["detail"]
    ok(project.run("sync"))
    assert set(health(project).values()) <= {"OK", "NOT CONFIGURED"}


def test_verify_with_read_only_credentials_keeps_its_result_and_says_so(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    project = offsite_project(make_project, s3_server, remote_url)
    only_there = backup_id(project, "config")
    for path in project.backups.glob(f"config/{only_there}.*"):
        path.unlink()  # the backup is off-site only
    verify = project.run("--json", "verify", "config", only_there, env=s3_server.readonly_env())
    assert verify.returncode == 0, verify.stdout + verify.stderr
    (result,) = json.loads(verify.stdout)
    assert result["ok"] and "could not be written" in result["message"]
    assert "refused the credentials" in result["message"]
    kept = json.loads((project.backups / ".offsite-verified.json").read_text())
    assert only_there in kept


def test_a_damaged_local_copy_is_restored_from_its_intact_off_site_copy(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    project = offsite_project(make_project, s3_server, remote_url)
    backup_id(project, "files")
    original = (project.root / "uploads" / "avatar.png").read_bytes()
    (artifact,) = project.backups.glob("files/*.enc")
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF  # bit rot in the local copy
    artifact.write_bytes(bytes(data))
    (project.root / "uploads" / "avatar.png").write_bytes(b"damaged")
    restore = project.run("restore", "files", "latest", "--yes", "--no-safety-backup")
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert "using its off-site copy" in restore.stderr
    assert (project.root / "uploads" / "avatar.png").read_bytes() == original


def test_delete_markers_over_locked_versions_are_said_and_the_recovery_works(
    make_project: ProjectFactory, s3_server: S3Server
) -> None:
    client = s3_server.client()
    client.create_bucket(Bucket="cosmic-locked-markers", ObjectLockEnabledForBucket=True)
    project = offsite_project(make_project, s3_server, "s3://cosmic-locked-markers/app")
    project.env["BACKUP_REMOTE_LOCK_DAYS"] = "2"
    kept = backup_id(project, "config")
    prefix = "app/web-1/config/"
    pruned = f"{prefix}config-20200101T000000Z.manifest.json"  # a version no lock holds:
    client.put_object(Bucket="cosmic-locked-markers", Key=pruned, Body=b"{}")
    client.delete_object(Bucket="cosmic-locked-markers", Key=pruned)  # what a prune leaves
    listing = client.list_objects_v2(Bucket="cosmic-locked-markers", Prefix=prefix)
    for item in listing["Contents"]:  # stolen credentials: a plain DELETE of each object
        client.delete_object(Bucket="cosmic-locked-markers", Key=item["Key"])

    rebuilt = fresh_root(make_project, project)
    remote = rebuilt.run("list", "--remote")
    assert "delete markers" in remote.stderr and kept in remote.stderr
    assert "1 off-site backup(s) were deleted" in remote.stderr  # not the pruned one
    latest = rebuilt.run("restore", "config", "latest", "--yes")
    assert latest.returncode != 0 and "delete markers" in latest.stderr

    # The recovery docs/offsite.md gives: remove the delete markers, the versions return.
    versions = client.list_object_versions(Bucket="cosmic-locked-markers", Prefix=prefix)
    for marker in versions.get("DeleteMarkers", []):
        if marker["Key"] == pruned:
            continue  # pruned on purpose: left deleted
        client.delete_object(
            Bucket="cosmic-locked-markers", Key=marker["Key"], VersionId=marker["VersionId"]
        )
    assert [e["id"] for e in listed(rebuilt, "--remote")] == [kept]
    ok(rebuilt.run("restore", "config", "latest", "--yes"))
