"""The catalog's ids, selection and leftovers; settings precedence and masking."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cosmic_backup.catalog import ID_PATTERN, TRUST_TAMPERED, Catalog
from cosmic_backup.clock import iso
from cosmic_backup.errors import Locked, NotFound, UsageError
from cosmic_backup.format.keys import Key
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.settings import CONFIG_FILE_NAME, load_settings

KEY = Key(b"catalog test key")
T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


def add(catalog: Catalog, started: datetime, *, status: str = "ok", tags=("manual",)) -> str:
    backup_id = catalog.new_id("database", started)
    artifact = f"{backup_id}.dump.gz.enc" if status == "ok" else None
    if artifact:
        catalog.store.write_bytes(f"database/{artifact}", b"x")
    manifest = Manifest(
        backup_id,
        "database",
        status,
        "full",
        list(tags),
        iso(started),
        iso(started),
        "0",
        artifact=artifact,
        key_fingerprint=KEY.fingerprint,
    )
    catalog.write_manifest(manifest, KEY)
    return backup_id


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    found = Catalog(tmp_path / "backups", lambda fp: KEY if fp == KEY.fingerprint else None)
    found.ensure_layout()
    return found


def test_ids_sort_by_time_and_are_unique_within_a_second(catalog: Catalog) -> None:
    ids = [add(catalog, T0) for _ in range(3)] + [add(catalog, T0 + timedelta(seconds=1))]
    assert ids[:3] == [
        "database-20261120T020000Z",
        "database-20261120T020000Z-02",
        "database-20261120T020000Z-03",
    ]
    assert all(ID_PATTERN.match(i) for i in ids)
    assert [e.id for e in catalog.entries("database")] == ids


def test_latest_skips_failures_and_pre_restore_copies(catalog: Catalog) -> None:
    good = add(catalog, T0)
    add(catalog, T0 + timedelta(hours=1), tags=("pre-restore",))
    add(catalog, T0 + timedelta(hours=2), status="failed")
    assert catalog.select("database", "latest").id == good


def test_select_by_date_and_id(catalog: Catalog) -> None:
    first = add(catalog, T0)
    second = add(catalog, T0 + timedelta(days=1))
    day = (T0 + timedelta(days=1)).astimezone().date().isoformat()
    assert catalog.select("database", day).id == second
    assert catalog.select("database", first).id == first
    with pytest.raises(NotFound, match="Days with one:"):
        catalog.select("database", "2020-01-01")
    with pytest.raises(NotFound, match="Recent ones"):
        catalog.select("database", "database-20200101T000000Z")
    with pytest.raises(UsageError):
        catalog.select("database", "last-week")


def test_a_failure_record_by_id_is_refused(catalog: Catalog) -> None:
    failed = add(catalog, T0, status="failed")
    with pytest.raises(NotFound, match="failure record"):
        catalog.select("database", failed)


def test_an_edited_manifest_is_tampered_and_never_selected(catalog: Catalog) -> None:
    good = add(catalog, T0)
    newer = add(catalog, T0 + timedelta(hours=1))
    path = catalog.root / "database" / f"{newer}.manifest.json"
    path.write_text(path.read_text().replace('"manual"', '"scheduled"'))
    trust = {e.id: e.trust for e in catalog.entries("database")}
    assert trust[newer] == TRUST_TAMPERED
    # `latest` does not silently fall back to an older backup: it picks the newest, whose
    # trust the restore then refuses (tests/integration/cli/test_safety.py).
    chosen = catalog.select("database", "latest")
    assert chosen.id == newer and chosen.trust == TRUST_TAMPERED
    assert catalog.select("database", good).trust != TRUST_TAMPERED


def test_leftovers_are_removed(catalog: Catalog) -> None:
    add(catalog, T0)
    (catalog.root / "database" / ".x.dump.gz.enc.partial-123").write_bytes(b"half")
    (catalog.root / "database" / "database-20261121T000000Z.dump.gz.enc").write_bytes(b"orphan")
    removed = catalog.remove_leftovers()
    assert sorted(removed) == [
        "database/.x.dump.gz.enc.partial-123",
        "database/database-20261121T000000Z.dump.gz.enc",
    ]
    assert len(catalog.entries("database")) == 1


def test_the_lock_refuses_a_second_holder(catalog: Catalog, tmp_path: Path) -> None:
    import subprocess
    import sys

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,os,sys,time,json; fd=os.open(sys.argv[1], os.O_RDWR|os.O_CREAT);"
            "fcntl.flock(fd, fcntl.LOCK_EX);"
            "os.write(fd, json.dumps({'pid': os.getpid(), 'command': 'backup files',"
            "'started': time.time()}).encode()); print('held', flush=True); time.sleep(30)",
            str(catalog.root / ".lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(Locked, match=rf"pid {holder.pid}, 'backup files'"),
            catalog.lock("backup database"),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
    with catalog.lock("backup database"):  # released by the OS when the holder died
        pass


def test_settings_precedence_and_sources(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE_NAME).write_text("retention_days = 10\nfiles_dirs = 'media'\n")
    settings = load_settings(
        tmp_path, environ={"RETENTION_DAYS": "20"}, flags={"files_dirs": "public"}
    )
    assert settings.retention_days == 20
    assert settings.sources["retention_days"] == "environment RETENTION_DAYS"
    assert settings.files_dirs == ("public",)
    assert settings.sources["files_dirs"] == "command line"
    assert settings.sources["log_dir"] == "default"
    only_file = load_settings(tmp_path, environ={})
    assert (
        only_file.retention_days == 10 and only_file.sources["retention_days"] == CONFIG_FILE_NAME
    )


def test_settings_refuse_the_key_in_toml_and_bad_values(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE_NAME).write_text("key = 'oops'\n")
    with pytest.raises(UsageError, match="unknown settings: key"):
        load_settings(tmp_path, environ={})
    (tmp_path / CONFIG_FILE_NAME).write_text("")
    with pytest.raises(UsageError, match="at least 600000"):
        load_settings(tmp_path, environ={"BACKUP_KDF_ITERATIONS": "1000"})
    with pytest.raises(UsageError, match="RETENTION_DAYS"):
        load_settings(tmp_path, environ={"RETENTION_DAYS": "soon"})


def test_secret_settings_are_masked(tmp_path: Path) -> None:
    settings = load_settings(
        tmp_path,
        environ={"DATABASE_URL": "postgresql://app:hunter22@db/app", "BACKUP_KEY": "topsecretkey"},
    )
    assert settings.shown("database_url") == "postgresql://app:***@db/app"
    assert "topsecretkey" not in settings.shown("key")
