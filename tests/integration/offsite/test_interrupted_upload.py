"""The S3 server dies in the middle of a multipart upload: the local backup stays good,
the failure is recorded, no manifest exists off-site, `status` is unhealthy, and a later
`sync` completes the copy. The test kills its own S3 gateway (``weed s3``) on the session's
storage, and starts it again."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_BUCKET, Project, ProjectFactory
from tests.s3server import S3Server, s3_gateway

KEY = "interrupted upload passphrase 0123456789"


def big_files_project(
    make_project: ProjectFactory, s3_env: dict[str, str], remote_url: str
) -> Project:
    project = make_project()
    project.env.update(s3_env)
    project.env.update(
        {
            "BACKUP_KEY": KEY,
            "BACKUP_REMOTE": remote_url,
            "BACKUP_REMOTE_HOST": "web-1",
            "BACKUP_FILES_DIRS": "uploads",
        }
    )
    (project.root / "uploads").mkdir()
    # Incompressible, so the artifact is several 16 MiB parts.
    (project.root / "uploads" / "video.bin").write_bytes(os.urandom(40 * 1024 * 1024))
    return project


def test_a_server_dying_mid_upload_leaves_the_local_backup_good_and_sync_completes_it(
    make_project: ProjectFactory, tmp_path: Path, s3_server: S3Server, remote_url: str
) -> None:
    with s3_gateway(s3_server, tmp_path / "gateway") as server:
        project = big_files_project(make_project, server.env(), remote_url)

        running = project.popen("--json", "backup", "files")
        client = s3_server.client()
        prefix = remote_url.removeprefix(f"s3://{TEST_BUCKET}/")
        deadline = time.monotonic() + 120
        while not client.list_multipart_uploads(Bucket=TEST_BUCKET, Prefix=prefix).get("Uploads"):
            assert running.poll() is None, "the backup ended before its upload was seen"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.stop()  # the S3 endpoint dies mid-upload: a part is on the wire or about to be
        out, err = running.communicate(timeout=180)

        assert running.returncode == 0, err  # the local backup is good
        (outcome,) = json.loads(out)["components"]
        assert outcome["status"] == "ok"
        assert "off-site" in outcome["offsite"] or "cannot be reached" in outcome["offsite"]
        verify = project.run("--json", "verify", "files")
        assert verify.returncode == 0, verify.stdout + verify.stderr  # verified locally
        status = project.run("--json", "status")
        assert status.returncode == 8
        health = {c["component"]: c["health"] for c in json.loads(status.stdout)["components"]}
        assert health["files"] == "OFFSITE-MISSING"

        server.start()  # the same endpoint again, on the same storage
        answer = client.list_objects_v2(Bucket=TEST_BUCKET, Prefix=prefix)
        keys = [item["Key"] for item in answer.get("Contents", [])]
        assert not [k for k in keys if k.endswith(".manifest.json")]  # never taken for a backup

        sync = project.run("sync")
        assert sync.returncode == 0, sync.stderr
        assert f"uploaded    {outcome['id']}" in sync.stdout
        listed = json.loads(project.run("--json", "list", "files").stdout)
        assert [entry["where"] for entry in listed] == ["both"]
        status = project.run("--json", "status")
        health = {c["component"]: c["health"] for c in json.loads(status.stdout)["components"]}
        assert health["files"] == "OK"


def _open_uploads(client: Any, prefix: str) -> list[dict[str, Any]]:
    return list(client.list_multipart_uploads(Bucket=TEST_BUCKET, Prefix=prefix).get("Uploads", []))


@pytest.mark.slow
@pytest.mark.parametrize("backup_format", ["single-file", "chunked"])
def test_a_killed_upload_stays_pending_until_sync_which_also_cleans_what_kills_left(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str, backup_format: str
) -> None:
    """SIGKILL and SIGTERM while a multipart upload (an artifact's, or a pack's) is open:
    the backup is pending off-site (status unhealthy) until `sync` completes it, and no
    upload stays open. An artifact or chunk list left without its manifest (a prune
    killed between its two deletes) is removed."""
    project = big_files_project(make_project, s3_server.env(), remote_url)
    project.env["BACKUP_FORMAT"] = backup_format
    client = s3_server.client()
    prefix = remote_url.removeprefix(f"s3://{TEST_BUCKET}/") + "/web-1/"
    killed = []
    for signum in (signal.SIGKILL, signal.SIGTERM):
        left_open = {u["UploadId"] for u in _open_uploads(client, prefix)}
        running = project.popen("backup", "files")
        deadline = time.monotonic() + 120
        while not {u["UploadId"] for u in _open_uploads(client, prefix)} - left_open:
            assert running.poll() is None, "the backup ended before its upload was seen"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        running.send_signal(signum)
        running.communicate(timeout=60)
        killed.append(running)
        status = project.run("--json", "status")
        assert status.returncode == 8, status.stdout
        files = next(
            c for c in json.loads(status.stdout)["components"] if c["component"] == "files"
        )
        assert files["health"] == "OFFSITE-MISSING" and "not confirmed" in files["message"]
        if signum == signal.SIGKILL:
            assert _open_uploads(client, prefix)  # what the kill left: billed and invisible
    assert len(json.loads(project.run("--json", "list", "files", "--remote").stdout)) == 0

    sync = project.run("sync")
    assert sync.returncode == 0, sync.stdout + sync.stderr
    assert sync.stdout.count("uploaded") == 2
    assert _open_uploads(client, prefix) == []
    status = json.loads(project.run("--json", "status").stdout)
    files = next(c for c in status["components"] if c["component"] == "files")
    assert files["health"] == "OK", files

    # A prune killed between the manifest's delete and the artifact's: local copy gone,
    # the artifact alone off-site, never listed; the next prune removes it.
    listed = json.loads(project.run("--json", "list", "files").stdout)
    oldest = listed[0]["id"]
    client.delete_object(Bucket=TEST_BUCKET, Key=f"{prefix}files/{oldest}.manifest.json")
    for path in (project.backups / "files").glob(f"{oldest}.*"):
        path.unlink()
    prune = project.run("prune")
    assert prune.returncode == 0, prune.stdout + prune.stderr
    left = client.list_objects_v2(Bucket=TEST_BUCKET, Prefix=f"{prefix}files/{oldest}")
    assert left.get("KeyCount", 0) == 0
