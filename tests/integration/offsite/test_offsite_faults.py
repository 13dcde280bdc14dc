"""Off-site answers that look right and are not (issue 17), through the fault-injecting
proxy (tests/s3proxy.py) in front of the real SeaweedFS: a store that cannot be listed is
never taken for "no newer backup" nor for "no backups"; a manifest that arrives corrupt, or
is gone between LIST and GET, is named and skipped while the other backups stay usable."""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import datetime
from typing import Any

from tests.conftest import Project, ProjectFactory
from tests.integration.offsite.test_offsite_cli import listed, offsite_project, ok
from tests.s3proxy import Fault, S3Proxy
from tests.s3server import S3Server

MIB = 1024 * 1024


def _proxied(
    make_project: ProjectFactory, server: S3Server, proxy: S3Proxy, remote_url: str
) -> Project:
    project = offsite_project(make_project, server, remote_url)
    project.env.update(proxy.env())
    return project


def _backup(project: Project, component: str) -> str:
    result = ok(project.run("--json", "backup", component))
    (outcome,) = json.loads(result.stdout)["components"]
    assert outcome["offsite"] == "ok", outcome
    return str(outcome["id"])


def _forget_locally(project: Project, component: str, backup_id: str) -> None:
    for path in (project.backups / component).glob(f"{backup_id}.*"):
        path.unlink()


def _one_error_line(result: Any) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_an_unlistable_store_never_turns_latest_into_the_latest_local_one(
    make_project: ProjectFactory, s3_server: S3Server, s3_proxy: S3Proxy, remote_url: str
) -> None:
    project = _proxied(make_project, s3_server, s3_proxy, remote_url)
    older = _backup(project, "files")
    (project.root / "uploads" / "avatar.png").write_bytes(b"the newer upload")
    newer = _backup(project, "files")
    _forget_locally(project, "files", newer)  # only off-site now
    (project.root / "uploads" / "avatar.png").write_bytes(b"damaged")
    s3_proxy.add(Fault.status(503), method="GET")  # every GET and LIST

    restore = project.run("restore", "files", "latest", "--yes", "--no-safety-backup")
    assert restore.returncode == 1, restore.stderr
    line = _one_error_line(restore)
    assert "'latest' cannot be resolved while the off-site copies cannot be listed" in line
    assert f"cosmic-backup restore files {older}" in line
    assert "503" in line or "ServiceUnavailable" in line  # the store's own answer
    assert (project.root / "uploads" / "avatar.png").read_bytes() == b"damaged"  # untouched
    assert s3_proxy.requests("GET")  # the store was asked, and failed
    today = datetime.now().astimezone().date().isoformat()
    dated = project.run("restore", "files", today, "--yes", "--no-safety-backup")
    assert dated.returncode == 1 and f"'{today}' cannot be resolved" in dated.stderr

    explicit = project.run("restore", "files", older, "--yes", "--no-safety-backup")
    assert explicit.returncode == 0, explicit.stderr  # the local one, when named
    assert "cannot be listed" in explicit.stderr

    fresh = make_project()  # disaster recovery: a new root, the store unreachable
    fresh.env.update(project.env)
    empty = fresh.run("restore", "files", "latest", "--yes", "--no-safety-backup")
    assert empty.returncode == 1
    line = _one_error_line(empty)
    assert "cannot be listed" in line and "try again once the store answers" in line
    assert "none at all" not in line and "backup files' first" not in line
    listing = ok(fresh.run("list"))
    assert "No backups yet" not in listing.stdout and "cannot be listed" in listing.stdout


def test_a_corrupt_or_vanished_manifest_is_named_and_skipped_the_others_stay_usable(
    make_project: ProjectFactory, s3_server: S3Server, s3_proxy: S3Proxy, remote_url: str
) -> None:
    project = _proxied(make_project, s3_server, s3_proxy, remote_url)
    older = _backup(project, "config")
    newer = _backup(project, "config")
    _forget_locally(project, "config", newer)
    older_manifest = re.compile(re.escape(f"config/{older}.manifest.json") + "$")

    s3_proxy.add(Fault.corrupt(), method="GET", path=older_manifest)  # bad at every read
    remote = {e["id"]: e for e in listed(project, "--remote")}
    assert remote[newer]["trust"] == "verified"
    assert remote[older]["trust"] == "tampered" and "SHA-256" in remote[older]["problem"]
    assert not [s for s in s3_proxy.requests("GET", older) if s.ranged]  # never "resumed"
    by_id = ok(project.run("restore", "config", newer, "--yes"))
    assert "off-site copy" in by_id.stderr

    s3_proxy.clear()
    s3_proxy.add(Fault.status(404), method="GET", path=older_manifest)  # pruned since LIST
    everywhere = project.run("--json", "list")
    assert everywhere.returncode == 0, everywhere.stderr
    assert f"config/{older}.manifest.json was listed" in everywhere.stderr
    assert "This is a bug" not in everywhere.stderr
    where = {e["id"]: e["where"] for e in json.loads(everywhere.stdout)}
    assert where == {older: "local", newer: "remote"}
    ok(project.run("restore", "config", older, "--yes"))  # a local backup: still restorable
    prune = ok(project.run("prune", "--dry-run"))
    assert "was listed" in prune.stderr

    s3_proxy.clear()
    s3_proxy.add(Fault.status(404), method="HEAD")  # the check after an upload
    backup = project.run("--json", "backup", "config")
    assert backup.returncode == 0, backup.stderr
    (outcome,) = json.loads(backup.stdout)["components"]
    assert "does not show" in outcome["offsite"]
    assert "local backup could not be read" not in outcome["offsite"]


def test_sync_pull_restarts_a_download_answered_200_to_its_range(
    make_project: ProjectFactory, s3_server: S3Server, s3_proxy: S3Proxy, remote_url: str
) -> None:
    project = _proxied(make_project, s3_server, s3_proxy, remote_url)
    (project.root / "uploads" / "noise.bin").write_bytes(os.urandom(2 * MIB))  # > 1 chunk
    backup_id = _backup(project, "files")
    shutil.rmtree(project.backups / "files")
    # The first MiB arrives, the connection closes, and the resumed GET is answered 200.
    s3_proxy.add(Fault.truncate(after=MIB + 100), method="GET", path=".tar.gz.enc", nth=1)
    s3_proxy.add(Fault.full_body_for_range(), method="GET")
    pull = ok(project.run("sync", "--pull"))
    assert "downloaded" in pull.stdout and backup_id in pull.stdout
    assert [s.fault for s in s3_proxy.requests("GET", ".tar.gz.enc")] == ["truncate", "range200"]
    ok(project.run("verify", "files", backup_id))
