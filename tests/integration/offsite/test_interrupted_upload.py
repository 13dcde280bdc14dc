"""The S3 server dies in the middle of a multipart upload: the local backup stays good,
the failure is recorded, no manifest exists off-site, `status` is unhealthy, and a later
`sync` completes the copy. The test kills its own S3 gateway (``weed s3``) on the session's
storage, and starts it again."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.conftest import TEST_BUCKET, ProjectFactory
from tests.s3server import S3Server, s3_gateway

KEY = "interrupted upload passphrase 0123456789"


def test_a_server_dying_mid_upload_leaves_the_local_backup_good_and_sync_completes_it(
    make_project: ProjectFactory, tmp_path: Path, s3_server: S3Server, remote_url: str
) -> None:
    with s3_gateway(s3_server, tmp_path / "gateway") as server:
        project = make_project()
        project.env.update(server.env())
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
