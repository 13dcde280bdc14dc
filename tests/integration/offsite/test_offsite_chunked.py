"""Off-site copies of chunked backups (format 2), against the real SeaweedFS through the
counting, fault-injecting proxy: only the packs the remote lacks are sent, the manifest
last; `sync --pull` and disaster recovery from the bucket alone; a damaged remote pack is
refused by name; an upload cut mid-pack is completed by `sync`; Object Lock covers shared
packs; remote retention removes a backup's manifest, then its list."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import TEST_BUCKET, Project, ProjectFactory
from tests.integration.offsite.test_offsite_cli import KEY, listed, offsite_project, ok
from tests.s3proxy import Fault, S3Proxy
from tests.s3server import S3Server

CHUNKED = {"BACKUP_FORMAT": "chunked"}  # the off-site fixtures choose single-file


def chunked_project(
    make_project: ProjectFactory, server: S3Server, remote_url: str, proxy: S3Proxy | None = None
) -> Project:
    project = offsite_project(make_project, server, remote_url)
    project.env.update(CHUNKED)
    if proxy is not None:
        project.env.update(proxy.env())
    return project


def backed_up(project: Project, component: str) -> dict[str, Any]:
    result = ok(project.run("--json", "backup", component))
    (outcome,) = json.loads(result.stdout)["components"]
    return dict(outcome)


def puts(proxy: S3Proxy, path: str = "") -> list[str]:
    return [seen.target for seen in proxy.requests("PUT", path)]


def bucket_names(server: S3Server, remote_url: str, bucket: str = TEST_BUCKET) -> list[str]:
    prefix = remote_url.removeprefix(f"s3://{bucket}/") + "/web-1/"
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"][len(prefix) :] for page in pages for item in page.get("Contents", []))


def local_packs(project: Project) -> set[Any]:
    return {p for p in (project.backups / "store" / "packs").rglob("*") if p.is_file()}


def test_a_second_backup_sends_only_what_the_remote_lacks_and_no_secret(
    make_project: ProjectFactory, s3_server: S3Server, s3_proxy: S3Proxy, remote_url: str
) -> None:
    project = chunked_project(make_project, s3_server, remote_url, s3_proxy)
    first = backed_up(project, "files")
    assert first["offsite"] == "ok", first
    names = bucket_names(s3_server, remote_url)
    assert "store/config" in names and any(n.startswith("store/keys/") for n in names)
    assert any(n.startswith("store/packs/") for n in names)
    assert any(n.startswith("store/index/") for n in names)
    assert f"files/{first['id']}.chunks" in names
    first_puts = puts(s3_proxy)
    assert first_puts[-1].endswith(f"files/{first['id']}.manifest.json")  # the manifest last

    s3_proxy.clear()  # nothing changed: the list and the manifest, no pack, no index
    second = backed_up(project, "files")
    assert second["offsite"] == "ok", second
    sent = puts(s3_proxy)
    assert not [t for t in sent if "/store/" in t], sent
    assert len(sent) == 2 and sent[-1].endswith(f"{second['id']}.manifest.json"), sent

    s3_proxy.clear()  # one new file: one pack and one index object more
    (project.root / "uploads" / "new.bin").write_bytes(os.urandom(300_000))
    third = backed_up(project, "files")
    assert third["offsite"] == "ok", third
    assert len(puts(s3_proxy, "/store/packs/")) == 1
    assert len(puts(s3_proxy, "/store/index/")) == 1
    assert len(puts(s3_proxy)) == 4

    # The record lost: one listing of store/ rebuilds it, and still nothing is sent again.
    (record,) = (project.backups / "store" / "cache").glob("remote-*.record")
    record.unlink()
    s3_proxy.clear()
    fourth = backed_up(project, "files")
    assert fourth["offsite"] == "ok" and record.is_file(), fourth
    assert len(puts(s3_proxy)) == 2 and not puts(s3_proxy, "/store/")
    assert any("prefix=" in s.target.lower() for s in s3_proxy.requests("GET"))

    assert {e["where"] for e in listed(project)} == {"both"}
    logs = "".join(p.read_text() for p in (project.root / "logs").glob("*.log"))
    assert KEY not in logs and s3_server.secret_key not in logs


@pytest.mark.slow
def test_disaster_recovery_from_the_bucket_alone_restores_chunked_backups_byte_for_byte(
    make_project: ProjectFactory, s3_server: S3Server, s3_proxy: S3Proxy, remote_url: str
) -> None:
    source = chunked_project(make_project, s3_server, remote_url)
    (source.root / "uploads" / "big.bin").write_bytes(os.urandom(2_000_000))
    files, config = backed_up(source, "files"), backed_up(source, "config")
    assert files["offsite"] == config["offsite"] == "ok"
    live = {p.name: p.read_bytes() for p in (source.root / "uploads").iterdir()}

    rebuilt = make_project()  # a new server: the key, BACKUP_REMOTE, nothing else
    rebuilt.env.update(s3_proxy.env())
    rebuilt.env.update({"BACKUP_KEY": KEY, "BACKUP_REMOTE": remote_url})
    rebuilt.env.update({"BACKUP_REMOTE_HOST": "web-1", **CHUNKED})
    restore = ok(rebuilt.run("restore", "files", "latest", "--yes", "--no-safety-backup"))
    assert "Traceback" not in restore.stderr
    restored = {p.name: p.read_bytes() for p in (rebuilt.root / "uploads").iterdir()}
    assert restored == live
    ok(rebuilt.run("restore", "config", "latest", "--yes", "--no-safety-backup"))

    puller = make_project()  # sync --pull, then everything is local and verifies
    puller.env.update(rebuilt.env)
    pull = ok(puller.run("--json", "sync", "--pull"))
    actions = {item["id"]: item["action"] for item in json.loads(pull.stdout)["items"]}
    assert actions == {files["id"]: "downloaded", config["id"]: "downloaded"}, pull.stdout
    s3_proxy.clear()
    ok(puller.run("verify"))
    assert not s3_proxy.requests("GET", "/store/packs/")  # read here, not off-site


def test_a_key_rotation_sends_the_new_wrap_and_the_new_key_alone_recovers(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    project = chunked_project(make_project, s3_server, remote_url)
    backed_up(project, "files")
    ok(project.run("key", "rotate"))
    project.env["BACKUP_KEY"] = new_key = "the rotated offsite passphrase 0123456789"
    (project.root / "uploads" / "after.bin").write_bytes(os.urandom(100_000))
    assert backed_up(project, "files")["offsite"] == "ok"
    wraps = [n for n in bucket_names(s3_server, remote_url) if n.startswith("store/keys/")]
    assert len(wraps) == 2

    rebuilt = offsite_project(make_project, s3_server, remote_url)  # only the new key
    rebuilt.env.update({**CHUNKED, "BACKUP_KEY": new_key})
    ok(rebuilt.run("restore", "files", "latest", "--yes", "--no-safety-backup"))
    after = (rebuilt.root / "uploads" / "after.bin").read_bytes()
    assert after == (project.root / "uploads" / "after.bin").read_bytes()


@pytest.mark.slow
def test_pull_fetches_only_missing_packs_and_refuses_a_damaged_one_by_name(
    make_project: ProjectFactory, s3_server: S3Server, s3_proxy: S3Proxy, remote_url: str
) -> None:
    project = chunked_project(make_project, s3_server, remote_url, s3_proxy)
    backed_up(project, "files")
    packs_before = local_packs(project)
    (project.root / "uploads" / "new.bin").write_bytes(os.urandom(500_000))
    newer = backed_up(project, "files")["id"]
    (new_pack,) = local_packs(project) - packs_before
    for path in (project.backups / "files").glob(f"{newer}.*"):
        path.unlink()  # only off-site now, and its new pack too
    new_pack.unlink()

    s3_proxy.clear()
    pull = ok(project.run("--json", "sync", "--pull"))
    assert [i["action"] for i in json.loads(pull.stdout)["items"]] == ["downloaded"]
    fetched = [s.target for s in s3_proxy.requests("GET", "/store/packs/")]
    assert len(fetched) == 1 and new_pack.name in fetched[0], fetched
    ok(project.run("verify", "files", newer))

    # A pack damaged off-site: a fresh root refuses it, naming it, and restores nothing.
    key = f"{remote_url.removeprefix(f's3://{TEST_BUCKET}/')}/web-1/store/packs/"
    key += f"{new_pack.name[:2]}/{new_pack.name}"
    client = s3_server.client()
    body = bytearray(client.get_object(Bucket=TEST_BUCKET, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    client.put_object(Bucket=TEST_BUCKET, Key=key, Body=bytes(body))
    fresh = offsite_project(make_project, s3_server, remote_url)
    fresh.env.update(CHUNKED)
    before = (fresh.root / "uploads" / "avatar.png").read_bytes()
    restore = fresh.run("restore", "files", newer, "--yes", "--no-safety-backup")
    assert restore.returncode != 0 and "Traceback" not in restore.stderr
    assert new_pack.name in restore.stderr and "damaged" in restore.stderr, restore.stderr
    assert (fresh.root / "uploads" / "avatar.png").read_bytes() == before
    assert not (fresh.root / "uploads" / "new.bin").exists()
    verify = fresh.run("--json", "verify", "files", newer)  # held off-site only: pulled
    assert verify.returncode != 0 and new_pack.name in verify.stdout, verify.stdout
    pull = fresh.run("--json", "sync", "--pull")
    items = {i["id"]: i for i in json.loads(pull.stdout)["items"]}
    assert items[newer]["action"] == "failed" and new_pack.name in items[newer]["message"]
    assert newer not in {e["id"] for e in listed(fresh) if e["where"] != "remote"}


@pytest.mark.slow
def test_an_upload_cut_mid_pack_is_completed_by_sync(
    make_project: ProjectFactory, s3_server: S3Server, s3_proxy: S3Proxy, remote_url: str
) -> None:
    project = chunked_project(make_project, s3_server, remote_url, s3_proxy)
    project.env["AWS_MAX_ATTEMPTS"] = "2"
    (project.root / "uploads" / "big.bin").write_bytes(os.urandom(40 * 1024 * 1024))
    # Packs of 16 MiB go in two parts: the first one goes whole, the next is cut in its
    # second part (every retry too), mid-pack.
    s3_proxy.add(Fault.drop(), method="PUT", path="partNumber=2", nth=set(range(2, 99)))
    failed = backed_up(project, "files")
    assert failed["status"] == "ok" and failed["offsite"] != "ok", failed
    names = bucket_names(s3_server, remote_url)
    assert f"files/{failed['id']}.manifest.json" not in names  # never a manifest first
    sent_before = [n for n in names if n.startswith("store/packs/")]
    assert len(sent_before) >= 1
    status = project.run("status")
    assert status.returncode != 0 and failed["id"] in status.stdout + status.stderr

    s3_proxy.clear()
    sync = ok(project.run("--json", "sync"))
    items = {i["id"]: i["action"] for i in json.loads(sync.stdout)["items"]}
    assert items == {failed["id"]: "uploaded"}, sync.stdout
    assert len(puts(s3_proxy, "/store/packs/")) >= len(local_packs(project)) - 1  # parts too
    assert not [t for t in puts(s3_proxy, "/store/packs/") if sent_before[0] in t]
    status = project.run("status")
    assert failed["id"] not in status.stdout + status.stderr, status.stdout

    shutil.rmtree(project.backups)  # the bucket alone restores it
    (project.root / "uploads" / "big.bin").write_bytes(b"lost")
    ok(project.run("restore", "files", "latest", "--yes", "--no-safety-backup"))
    assert len((project.root / "uploads" / "big.bin").read_bytes()) == 40 * 1024 * 1024


def test_sync_sends_a_pack_deleted_off_site_again(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    project = chunked_project(make_project, s3_server, remote_url)
    backup = backed_up(project, "config")
    prefix = remote_url.removeprefix(f"s3://{TEST_BUCKET}/") + "/web-1/"
    (pack,) = [n for n in bucket_names(s3_server, remote_url) if n.startswith("store/packs/")]
    s3_server.client().delete_object(Bucket=TEST_BUCKET, Key=prefix + pack)
    sync = ok(project.run("--json", "sync"))
    assert [i["id"] for i in json.loads(sync.stdout)["items"]] == [backup["id"]]
    assert pack in bucket_names(s3_server, remote_url)


def test_object_lock_covers_shared_packs_and_extends_them(
    make_project: ProjectFactory, s3_server: S3Server
) -> None:
    client = s3_server.client()
    client.create_bucket(Bucket="cosmic-locked-chunks", ObjectLockEnabledForBucket=True)
    remote = "s3://cosmic-locked-chunks/app"
    project = chunked_project(make_project, s3_server, remote)
    project.env["BACKUP_REMOTE_LOCK_DAYS"] = "1"
    assert backed_up(project, "files")["offsite"] == "ok"
    prefix = "app/web-1/"

    def retention(name: str) -> datetime:
        head = client.head_object(Bucket="cosmic-locked-chunks", Key=prefix + name)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        return head["ObjectLockRetainUntilDate"]  # type: ignore[no-any-return]

    store = [n for n in bucket_names(s3_server, remote, "cosmic-locked-chunks") if "store/" in n]
    packs = [n for n in store if n.startswith("store/packs/")]
    assert packs and all(retention(n) > datetime.now(UTC) + timedelta(hours=23) for n in store)

    project.env["BACKUP_REMOTE_LOCK_DAYS"] = "10"  # longer than the packs' (1 + 7 days)
    second = backed_up(project, "files")
    assert second["offsite"] == "ok", second
    assert set(store) == {
        n for n in bucket_names(s3_server, remote, "cosmic-locked-chunks") if "store/" in n
    }
    manifest_end = retention(f"files/{second['id']}.manifest.json")
    for name in store:  # extended to the new backup's end plus 7 days
        assert retention(name) >= manifest_end + timedelta(days=6), name
    assert retention(packs[0]) > datetime.now(UTC) + timedelta(days=16)


def test_remote_retention_removes_a_chunked_backups_manifest_and_list(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    from cosmic_backup.catalog import Catalog
    from cosmic_backup.clock import iso
    from cosmic_backup.format.keys import Key

    project = chunked_project(make_project, s3_server, remote_url)
    project.env["RETENTION_DAYS"] = "30"
    ok(project.run("backup", "config", env={"BACKUP_REMOTE": ""}))  # local only, then aged
    key = Key(KEY.encode())
    catalog = Catalog(project.backups, lambda fp: key)
    manifest = catalog.entries("config")[-1].manifest
    manifest.started_at = manifest.finished_at = iso(datetime.now(UTC) - timedelta(days=40))
    catalog.write_manifest(manifest, key)
    ok(project.run("sync"))
    old = f"config/{manifest.id}"
    assert {f"{old}.manifest.json", f"{old}.chunks"} <= set(bucket_names(s3_server, remote_url))
    packs = {n for n in bucket_names(s3_server, remote_url) if n.startswith("store/")}

    (project.root / ".env").write_text("SECRET_TOKEN=new\n")
    backed_up(project, "config")  # and retention, here and off-site
    names = set(bucket_names(s3_server, remote_url))
    assert not {f"{old}.manifest.json", f"{old}.chunks"} & names
    assert packs <= names  # dead remote packs stay (docs/offsite.md)
    assert manifest.id not in {e["id"] for e in listed(project, "--remote")}
    ok(project.run("restore", "config", "latest", "--yes", "--no-safety-backup"))


def test_sync_sends_a_missing_list_again_and_says_when_one_is_lost(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    project = chunked_project(make_project, s3_server, remote_url)
    backed_up(project, "files")  # an older one, intact everywhere
    kept, lost = backed_up(project, "config")["id"], backed_up(project, "files")["id"]
    prefix = remote_url.removeprefix(f"s3://{TEST_BUCKET}/") + "/web-1/"
    client = s3_server.client()
    for name in (f"config/{kept}.chunks", f"files/{lost}.chunks"):
        client.delete_object(Bucket=TEST_BUCKET, Key=prefix + name)
    for path in (project.backups / "files").glob(f"{lost}.*"):
        path.unlink()  # and no local copy of that one is left

    sync = project.run("--json", "sync")
    assert sync.returncode == 1, sync.stdout + sync.stderr
    items = {i["id"]: i for i in json.loads(sync.stdout)["items"]}
    assert items[kept]["action"] == "uploaded"
    assert items[lost]["action"] == "failed" and "no local copy" in items[lost]["message"]
    assert f"config/{kept}.chunks" in bucket_names(s3_server, remote_url)
    status = project.run("--json", "status")
    health = {c["component"]: c["health"] for c in json.loads(status.stdout)["components"]}
    assert health["config"] == "OK" and health["files"] == "OFFSITE-MISSING"


def test_another_roots_chunk_store_off_site_is_never_mixed_with_this_ones(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    first = chunked_project(make_project, s3_server, remote_url)
    assert backed_up(first, "config")["offsite"] == "ok"
    prefix = remote_url.removeprefix(f"s3://{TEST_BUCKET}/") + "/web-1/"
    client = s3_server.client()
    config = client.get_object(Bucket=TEST_BUCKET, Key=prefix + "store/config")["Body"].read()

    second = chunked_project(make_project, s3_server, remote_url)  # its own store
    ok(second.run("sync", "--take-over"))  # a rebuilt server, but with a new store
    outcome = backed_up(second, "config")
    assert "holds another chunk store" in outcome["offsite"], outcome
    assert "BACKUP_REMOTE_HOST" in outcome["offsite"]
    assert client.get_object(Bucket=TEST_BUCKET, Key=prefix + "store/config")["Body"].read() == (
        config
    )
    assert outcome["id"] not in {e["id"] for e in listed(second, "--remote")}


def test_a_pack_missing_here_is_fetched_from_the_off_site_copy_before_a_restore(
    make_project: ProjectFactory, s3_server: S3Server, remote_url: str
) -> None:
    project = chunked_project(make_project, s3_server, remote_url)
    backed_up(project, "files")
    original = (project.root / "uploads" / "avatar.png").read_bytes()
    for pack in local_packs(project):
        pack.unlink()  # lost here; the off-site copy has them
    (project.root / "uploads" / "avatar.png").write_bytes(b"damaged")
    restore = ok(project.run("restore", "files", "latest", "--yes", "--no-safety-backup"))
    assert "fetching what is missing from its off-site copy" in restore.stdout + restore.stderr
    assert (project.root / "uploads" / "avatar.png").read_bytes() == original
    assert local_packs(project)  # and the store here is whole again
