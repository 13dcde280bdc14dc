"""Chunked backups (format 2) do not go off-site yet: the upload and `sync` refuse them
with one sentence and put nothing of them in the bucket; the local backup stays good."""

from __future__ import annotations

import json

from tests.conftest import ProjectFactory
from tests.integration.offsite.test_offsite_cli import offsite_project, remote_keys
from tests.s3server import S3Server

SENTENCE = "off-site copies of chunked backups are not supported yet; set BACKUP_FORMAT=single-file"


def test_a_chunked_backup_is_refused_off_site_and_stays_good_locally(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    project = offsite_project(make_project, s3_server, remote_url)
    project.env["BACKUP_FORMAT"] = "chunked"  # the off-site fixtures choose single-file
    backup = project.run("--json", "backup", "config")
    assert backup.returncode == 0, backup.stderr
    [outcome] = json.loads(backup.stdout)["components"]
    assert outcome["status"] == "ok" and SENTENCE in outcome["offsite"]
    assert not [name for name in remote_keys(s3_server, remote_url) if "config-" in name]
    sync = project.run("sync")
    assert sync.returncode != 0 and SENTENCE in sync.stdout + sync.stderr
    assert "Traceback" not in sync.stderr
    assert not [name for name in remote_keys(s3_server, remote_url) if "config-" in name]
    assert project.run("verify", "config").returncode == 0
