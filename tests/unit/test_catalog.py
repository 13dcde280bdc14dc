"""The catalog on a real folder: ids, trust, selection, leftovers and the lock."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cosmic_backup.catalog import ID_PATTERN, LOCK_FILE, Catalog
from cosmic_backup.clock import FixedClock, iso
from cosmic_backup.errors import Locked, NotFound, UsageError
from cosmic_backup.format.keys import Key
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.states import Trust
from tests.unit.format import KEY, OTHER_KEY

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


class Backups:
    """Writes backups into a catalog the way the backup operation does: artifact, then
    the signed manifest, at the time a FixedClock says."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.clock = FixedClock(T0)

    def add(
        self,
        *,
        status: str = "ok",
        tags: tuple[str, ...] = ("scheduled",),
        key: Key | None = KEY,
        component: str = "database",
        after: timedelta = timedelta(0),
    ) -> str:
        self.clock.at += after
        started = self.clock.now()
        backup_id = self.catalog.new_id(component, started)
        artifact = None
        if status == "ok":
            artifact = f"{backup_id}.dump.gz.enc"
            self.catalog.store.write_bytes(f"{component}/{artifact}", b"stored bytes")
        manifest = Manifest(
            backup_id,
            component,
            status,
            "full",
            list(tags),
            iso(started),
            iso(started + timedelta(seconds=30)),
            "0.1.0",
            artifact=artifact,
            key_fingerprint=key.fingerprint if key else None,
            error=None if status == "ok" else "pg_dump: connection refused",
        )
        self.catalog.write_manifest(manifest, key)
        return backup_id

    def manifest_path(self, backup_id: str, component: str = "database") -> Path:
        return self.catalog.root / component / f"{backup_id}.manifest.json"


def lookup(fingerprint: str) -> Key | None:
    return KEY if fingerprint == KEY.fingerprint else None


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    made = Catalog(tmp_path / "backups", lookup)
    made.ensure_layout()
    return made


@pytest.fixture
def backups(catalog: Catalog) -> Backups:
    return Backups(catalog)


@pytest.fixture
def new_york() -> Iterator[None]:
    """Local time five hours behind UTC in November: 02:00 UTC is the previous local day."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "America/New_York")
        time.tzset()
        yield
    time.tzset()


# -- ids ------------------------------------------------------------------------------------
def test_ids_are_unique_within_a_second_and_sort_by_time(
    catalog: Catalog, backups: Backups
) -> None:
    same_second = [backups.add() for _ in range(3)]
    failed = backups.add(status="failed")  # a failure record takes an id too
    later = [backups.add(after=timedelta(seconds=1)), backups.add(after=timedelta(days=40))]
    ids = [*same_second, failed, *later]
    assert ids[:4] == [
        "database-20261120T020000Z",
        "database-20261120T020000Z-02",
        "database-20261120T020000Z-03",
        "database-20261120T020000Z-04",
    ]
    assert ids[4:] == ["database-20261120T020001Z", "database-20261230T020001Z"]
    assert all(ID_PATTERN.match(backup_id) for backup_id in ids)
    assert sorted(ids) == ids
    assert [entry.id for entry in catalog.entries("database")] == ids


def test_entries_of_every_component_oldest_first(catalog: Catalog, backups: Backups) -> None:
    first = backups.add(component="files")
    second = backups.add(component="config", after=timedelta(minutes=1))
    third = backups.add(component="database", after=timedelta(minutes=1))
    assert [entry.id for entry in catalog.entries()] == [first, second, third]
    assert [entry.id for entry in catalog.entries("files")] == [first]


# -- trust --------------------------------------------------------------------------------------
def test_trust_of_each_kind_of_manifest(catalog: Catalog, backups: Backups) -> None:
    verified = backups.add()
    other_key = backups.add(key=OTHER_KEY, after=timedelta(minutes=1))
    unsigned = backups.add(status="failed", key=None, after=timedelta(minutes=1))
    trust = {entry.id: (entry.trust, entry.problem) for entry in catalog.entries("database")}
    assert trust[verified] == (Trust.VERIFIED, None)
    assert trust[other_key] == (Trust.UNVERIFIED, f"key {OTHER_KEY.fingerprint} is not available")
    assert trust[unsigned] == (Trust.UNSIGNED, None)


def test_every_kind_of_tampering_is_shown_as_tampered(catalog: Catalog, backups: Backups) -> None:
    edited, garbled, renamed, stripped = (backups.add(after=timedelta(minutes=1)) for _ in range(4))
    path = backups.manifest_path(edited)
    path.write_text(path.read_text().replace('"scheduled"', '"manual"'))
    backups.manifest_path(garbled).write_bytes(b'{"id": ')
    moved = backups.manifest_path(renamed).read_bytes()
    backups.manifest_path(renamed).unlink()
    elsewhere = "database-20261120T999999Z"  # not an id the catalog would ever make
    backups.manifest_path(elsewhere).write_bytes(moved)
    path = backups.manifest_path(stripped)
    path.write_text(json.dumps({**json.loads(path.read_text()), "mac": None}))
    problems = {e.id: e.problem for e in catalog.entries("database") if e.trust == Trust.TAMPERED}
    assert "edited or damaged" in (problems[edited] or "")
    assert "not valid JSON" in (problems[garbled] or "")
    assert "holds the manifest of" in (problems[elsewhere] or "")  # keyed by where it lies
    assert renamed not in problems  # and never stands in for the backup it copies
    assert "has no MAC" in (problems[stripped] or "")


def test_a_manifest_is_bound_to_its_name_host_and_root(catalog: Catalog, backups: Backups) -> None:
    """A rolled-back manifest (an older one's bytes over the newest) is the newest entry,
    TAMPERED, and the older genuine one is still listed, once; a manifest of another host
    or root is TAMPERED; a manifest of an older version, without host and root, loads."""
    older, newer, legacy = (backups.add(after=timedelta(minutes=1)) for _ in range(3))
    for backup_id, host, root in ((older, "web-1", "a" * 16), (newer, "web-1", "a" * 16)):
        manifest = next(e.manifest for e in catalog.entries() if e.id == backup_id)
        manifest.host, manifest.root_id = host, root
        catalog.write_manifest(manifest, KEY)
    genuine_newer = backups.manifest_path(newer).read_bytes()
    backups.manifest_path(newer).write_bytes(backups.manifest_path(older).read_bytes())
    catalog.host, catalog.roots = "web-1", frozenset({"a" * 16})
    entries = catalog.entries("database")
    assert [(e.id, e.trust) for e in entries] == [
        (older, Trust.VERIFIED),
        (newer, Trust.TAMPERED),
        (legacy, Trust.VERIFIED),  # no host, no root: as before
    ]
    assert "moved or replayed" in (entries[1].problem or "")
    backups.manifest_path(newer).write_bytes(genuine_newer)
    assert {e.id: e.trust for e in catalog.entries()}[newer] == Trust.VERIFIED
    catalog.host = "web-2"  # the same bytes found in another host's folder
    assert {e.id: e.trust for e in catalog.entries()}[newer] == Trust.TAMPERED
    catalog.host, catalog.roots = "web-1", frozenset({"b" * 16})  # another root's folder
    problem = {e.id: e.problem for e in catalog.entries()}[newer]
    assert "another backup root" in (problem or "")


def test_a_tampered_manifest_is_never_taken_for_a_good_backup(
    catalog: Catalog, backups: Backups
) -> None:
    """`latest` does not silently fall back to an older backup when the newest one's
    manifest was edited: it names the newest, flagged, and restore and verify refuse it
    with the reason (operations/artifacts.py `trusted_key`)."""
    good = backups.add()
    newest = backups.add(after=timedelta(hours=1))
    path = backups.manifest_path(newest)
    path.write_text(path.read_text().replace('"full"', '"schema-only"'))
    chosen = catalog.select("database", "latest")
    assert (chosen.id, chosen.trust) == (newest, Trust.TAMPERED)
    assert catalog.select("database", newest).trust == Trust.TAMPERED
    assert catalog.select("database", good).trust == Trust.VERIFIED


def test_a_rolled_back_manifest_in_the_second_of_an_older_backup_still_stops_latest(
    catalog: Catalog, backups: Backups
) -> None:
    """Two backups in one second, the newest's manifest replaced by the older's bytes: the
    stand-in for the replayed one is dated by its name to the whole second, which once
    sorted it before the older backup's microseconds, so `latest` took the older."""
    backups.clock.at += timedelta(microseconds=700_000)
    older = backups.add()
    newest = backups.add(after=timedelta(microseconds=200_000))
    assert newest == f"{older}-02"
    backups.manifest_path(newest).write_bytes(backups.manifest_path(older).read_bytes())
    assert [entry.id for entry in catalog.entries("database")] == [older, newest]
    chosen = catalog.select("database", "latest")
    assert (chosen.id, chosen.trust) == (newest, Trust.TAMPERED)


def test_an_unreadable_manifest_chosen_by_id_is_flagged_not_called_a_failure(
    catalog: Catalog, backups: Backups
) -> None:
    damaged = backups.add()
    backups.manifest_path(damaged).write_bytes(b"\0garbage")
    chosen = catalog.select("database", damaged)
    assert chosen.trust == Trust.TAMPERED
    assert chosen.problem is not None and "damaged" in chosen.problem


# -- selection ----------------------------------------------------------------------------------
def test_latest_skips_failures_and_pre_restore_copies(catalog: Catalog, backups: Backups) -> None:
    good = backups.add()
    backups.add(tags=("pre-restore",), after=timedelta(hours=1))
    backups.add(status="failed", after=timedelta(hours=1))
    assert catalog.select("database", "latest").id == good


def test_latest_with_nothing_good_says_what_there_is(catalog: Catalog, backups: Backups) -> None:
    with pytest.raises(NotFound, match=r"none at all\); run 'cosmic-backup backup database'"):
        catalog.select("database", "latest")
    backups.add(status="failed")
    with pytest.raises(NotFound, match=r"1 backup\(s\) listed, none good"):
        catalog.select("database", "latest")


def test_a_date_is_a_local_calendar_day(catalog: Catalog, backups: Backups, new_york: None) -> None:
    late_evening = backups.add()  # 02:00 UTC on the 20th: 21:00 on the 19th in New York
    next_day = backups.add(after=timedelta(hours=12))  # 14:00 UTC: 09:00 on the 20th
    newer_same_day = backups.add(after=timedelta(hours=1))
    backups.add(tags=("pre-restore",), after=timedelta(hours=1))
    assert catalog.select("database", "2026-11-19").id == late_evening
    assert catalog.select("database", "2026-11-20").id == newer_same_day != next_day


def test_a_date_with_nothing_lists_the_days_that_have_one(
    catalog: Catalog, backups: Backups, new_york: None
) -> None:
    backups.add()
    backups.add(after=timedelta(days=2))
    backups.add(status="failed", after=timedelta(days=2))  # a failure does not make a day
    with pytest.raises(NotFound) as missing:
        catalog.select("database", "2026-11-20")
    assert missing.value.message == (
        "There is no good database backup from 2026-11-20 (local time). "
        "Days with one: 2026-11-19, 2026-11-21."
    )


def test_select_by_id(catalog: Catalog, backups: Backups) -> None:
    first = backups.add()
    backups.add(after=timedelta(days=1))
    pre_restore = backups.add(tags=("pre-restore",), after=timedelta(days=1))
    assert catalog.select("database", first).id == first
    assert catalog.select("database", pre_restore).id == pre_restore  # named: allowed
    with pytest.raises(
        NotFound, match=f"no database backup with id database-20200101T000000Z.*{first}"
    ):
        catalog.select("database", "database-20200101T000000Z")


def test_a_failure_record_by_id_is_refused_with_its_reason(
    catalog: Catalog, backups: Backups
) -> None:
    failed = backups.add(status="failed")
    with pytest.raises(NotFound, match=r"failure record \(pg_dump: connection refused\)"):
        catalog.select("database", failed)


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("last-week", "is not 'latest', a date"),
        ("2026-02-30", "not a real date"),
    ],
)
def test_a_malformed_selector_is_a_usage_error(
    catalog: Catalog, selector: str, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        catalog.select("database", selector)


# -- leftovers ------------------------------------------------------------------------------
def test_leftovers_of_interrupted_runs_are_removed_and_nothing_else(
    catalog: Catalog, backups: Backups
) -> None:
    kept = backups.add()
    failed = backups.add(status="failed", after=timedelta(minutes=1))
    folder = catalog.root / "database"
    (folder / ".database-20261121T000000Z.dump.gz.enc.partial-123").write_bytes(b"half")
    (folder / ".database-20261121T000000Z.manifest.json.partial-123").write_bytes(b"{")
    (folder / "database-20261121T000000Z.dump.gz.enc").write_bytes(b"no manifest came")
    (catalog.root / "files" / ".files-20261121T000000Z.tar.gz.enc.partial-9").write_bytes(b"")
    assert catalog.remove_leftovers() == [
        "database/.database-20261121T000000Z.dump.gz.enc.partial-123",
        "database/.database-20261121T000000Z.manifest.json.partial-123",
        "database/database-20261121T000000Z.dump.gz.enc",
        "files/.files-20261121T000000Z.tar.gz.enc.partial-9",
    ]
    assert catalog.remove_leftovers() == []
    assert [entry.id for entry in catalog.entries()] == [kept, failed]
    assert (folder / f"{kept}.dump.gz.enc").exists()


# -- the lock ---------------------------------------------------------------------------------
HOLDER = """
import sys, time
from pathlib import Path
from cosmic_backup.catalog import Catalog
with Catalog(Path(sys.argv[1]), lambda fp: None).lock("backup files"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def holder(catalog: Catalog) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock through the real Catalog.lock, for up to 2 s."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(catalog.root), "2"], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_a_held_lock_refuses_naming_the_holder(
    catalog: Catalog, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(Locked) as refused, catalog.lock("backup database"):
        pass
    message = refused.value.message
    assert (
        f"locked by another cosmic-backup run (pid {holder.pid}, 'backup files', started "
        in message
    )
    assert message.endswith("wait for it to finish or pass --wait.")


def test_waiting_gives_up_after_its_time(catalog: Catalog, holder: subprocess.Popen[str]) -> None:
    with (
        pytest.raises(Locked, match="did not finish in time"),
        catalog.lock("backup database", wait=True, wait_seconds=0.3),
    ):
        pass


def test_waiting_gets_the_lock_when_the_holder_ends(
    catalog: Catalog, holder: subprocess.Popen[str]
) -> None:
    started = time.monotonic()
    with catalog.lock("backup database", wait=True, wait_seconds=30):
        assert time.monotonic() - started > 1.0  # the holder keeps it for 2 s
        assert '"command": "backup database"' in (catalog.root / LOCK_FILE).read_text()
    assert holder.wait(timeout=10) == 0
    assert (catalog.root / LOCK_FILE).read_text() == ""  # released: no stale holder shown


def test_a_killed_holder_leaves_no_lock_behind(
    catalog: Catalog, holder: subprocess.Popen[str]
) -> None:
    holder.kill()
    holder.wait()
    with (
        catalog.lock("backup database"),  # the OS released it with the process
        catalog.lock("backup database (pre-restore)"),  # nested in one process: ours already
    ):
        pass


@pytest.mark.parametrize("damage", [b'{"id": ', b"\0garbage", b"[]"])
def test_a_newest_manifest_that_is_not_json_is_refused_like_an_edited_one(
    catalog: Catalog, backups: Backups, damage: bytes
) -> None:
    """`latest` and the day of the damaged backup name it, flagged; they never fall back
    silently to an older backup (the same as for a manifest failing its MAC)."""
    good = backups.add()
    newest = backups.add(after=timedelta(hours=1))
    backups.manifest_path(newest).write_bytes(damage)
    chosen = catalog.select("database", "latest")
    assert (chosen.id, chosen.trust) == (newest, Trust.TAMPERED)
    assert chosen.problem is not None and "not valid JSON" in chosen.problem
    same_day = catalog.select("database", chosen.local_day.isoformat())
    assert same_day.id == newest
    assert catalog.select("database", good).trust == Trust.VERIFIED


def test_duration_is_covered_by_the_mac_and_older_manifests_without_it_still_verify(
    catalog: Catalog, backups: Backups
) -> None:
    """`duration_seconds` came later: a manifest written without it (as older versions
    did: the key absent from the JSON, not null) still verifies; one written with it has
    it under the MAC, so editing it is seen."""
    older, timed = backups.add(), backups.add(after=timedelta(minutes=1))
    from cosmic_backup.format.manifest import _mac

    path = backups.manifest_path(older)
    body = json.loads(path.read_text())
    del body["duration_seconds"], body["mac"]
    path.write_text(json.dumps({**body, "mac": _mac(body, KEY)}))
    manifest = next(e.manifest for e in catalog.entries() if e.id == timed)
    manifest.duration_seconds = 12.5
    catalog.write_manifest(manifest, KEY)
    entries = {e.id: e for e in catalog.entries("database")}
    assert (
        entries[older].trust == Trust.VERIFIED and entries[older].manifest.duration_seconds is None
    )
    assert (
        entries[timed].trust == Trust.VERIFIED and entries[timed].manifest.duration_seconds == 12.5
    )
    path = backups.manifest_path(timed)
    path.write_text(path.read_text().replace("12.5", "1.5"))
    assert next(e for e in catalog.entries() if e.id == timed).trust == Trust.TAMPERED
