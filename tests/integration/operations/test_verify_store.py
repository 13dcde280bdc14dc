"""verify of chunked backups through the real CLI: every backup a damaged or missing pack
breaks is named; --read-data-subset reads a window of the packs that moves on, so
successive runs cover the store, and a damaged pack is found only inside its window."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Project
from tests.integration.operations.storeproject import listed, ok, pack_paths, store_project

INTEGRITY_EXIT = 6  # README "Exit codes"
NAME_SPACE = 16**8


def three_backups_sharing_their_packs(project: Project) -> list[str]:
    store_project(project)
    for _ in range(3):  # nothing changes between them: they share every data pack
        ok(project.run("backup", "files"))
    return [e["id"] for e in listed(project)]


def data_pack(project: Project) -> str:
    """The biggest pack: a pack of photo chunks (the entry texts' parts are small)."""
    return max(pack_paths(project), key=lambda p: p.stat().st_size).name


def damage(project: Project, pack: str) -> None:
    [path] = project.backups.glob(f"store/packs/*/{pack}")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def slot_of(pack: str, slices: int) -> int:
    """The n of the n/t slice that holds `pack`: its first 8 hex digits (docs/format.md)."""
    return int(pack[:8], 16) * slices // NAME_SPACE + 1


@pytest.mark.parametrize("fault", ["damaged", "missing"])
def test_verify_names_every_backup_a_bad_pack_breaks(project: Project, fault: str) -> None:
    ids = three_backups_sharing_their_packs(project)
    pack = data_pack(project)
    if fault == "damaged":
        damage(project, pack)
    else:
        next(project.backups.glob(f"store/packs/*/{pack}")).unlink()
    result = project.run("--json", "verify")
    assert result.returncode == INTEGRITY_EXIT, result.stdout + result.stderr
    results = json.loads(result.stdout)
    assert [r["id"] for r in results] == ids and not any(r["ok"] for r in results)
    for r in results:
        assert r["pack"] == pack and r["pack_breaks"] == sorted(ids)
    text = project.run("verify")
    assert text.returncode == INTEGRITY_EXIT and "Traceback" not in text.stderr
    assert f"The pack {pack} breaks 3 backup(s): {', '.join(sorted(ids))}." in text.stdout
    only_one = project.run("--json", "verify", "files", ids[0])  # names the others too
    assert json.loads(only_one.stdout)[0]["pack_breaks"] == sorted(ids)


def test_read_data_subset_windows_cover_every_pack_then_start_over(project: Project) -> None:
    ids = three_backups_sharing_their_packs(project)
    packs = len(pack_paths(project))
    read_per_backup = {backup: 0 for backup in ids}
    for _ in range(4):
        result = ok(project.run("--json", "verify", "--read-data-subset", "25%"))
        for r in json.loads(result.stdout):
            assert r["ok"] and r["figures"]["packs"] == packs
            read_per_backup[r["id"]] += r["figures"]["packs_read"]
    assert read_per_backup == {backup: packs for backup in ids}  # each pack read once
    window = json.loads((project.backups / "store" / "cache" / "verify-window.json").read_text())
    assert window["next"] == 0.0  # four quarters: the next run starts over
    text = ok(project.run("verify", "--read-data-subset", "25%")).stdout
    assert "0% to 25% of the pack names" in text and "the next run goes on" in text
    # A subset verification is no proof of the whole backup: verified_at stays unset.
    assert all(e.get("verified_at") is None for e in listed(project))


def test_a_damaged_pack_outside_the_window_is_not_read_inside_it_is_named(
    project: Project,
) -> None:
    ids = three_backups_sharing_their_packs(project)
    pack = data_pack(project)
    damage(project, pack)
    inside = slot_of(pack, 4)
    outside = project.run("--json", "verify", "--read-data-subset", f"{inside % 4 + 1}/4")
    assert outside.returncode == 0, outside.stdout + outside.stderr
    found = project.run("--json", "verify", "--read-data-subset", f"{inside}/4")
    assert found.returncode == INTEGRITY_EXIT, found.stdout + found.stderr
    for r in json.loads(found.stdout):
        assert not r["ok"] and r["pack"] == pack and r["pack_breaks"] == sorted(ids)
        assert "fails its integrity check" in r["message"]


def test_a_subset_that_is_not_one_is_one_sentence(project: Project) -> None:
    three_backups = store_project(project, files=1)
    ok(three_backups.run("backup", "files"))
    result = project.run("verify", "--read-data-subset", "150%")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is not a subset" in result.stderr and "n/t" in result.stderr


def test_a_chunk_no_index_object_places_is_refused_before_the_files_change(
    project: Project,
) -> None:
    from tests.integration.files.test_files_chunked import snapshot

    ids = three_backups_sharing_their_packs(project)
    for index_object in (project.backups / "store" / "index").iterdir():
        index_object.unlink()
    (project.root / "uploads" / "photo-0.bin").write_bytes(b"changed since the backup")
    live = snapshot(project)
    restore = project.run("restore", "files", "latest", "--yes", "--no-safety-backup")
    assert restore.returncode == INTEGRITY_EXIT, restore.stderr
    assert "is in no index object" in restore.stderr and "Traceback" not in restore.stderr
    assert snapshot(project) == live
    assert not [p for p in project.root.iterdir() if p.name.startswith(".cosmic-")]
    sampled = project.run("--json", "verify", "--read-data-subset", "1/2")
    assert sampled.returncode == INTEGRITY_EXIT
    assert [r["id"] for r in json.loads(sampled.stdout) if not r["ok"]] == ids


def test_with_a_subset_single_file_backups_are_still_verified_whole(project: Project) -> None:
    store_project(project, files=2)
    ok(project.run("backup", "files", env={"BACKUP_FORMAT": "single-file"}))
    ok(project.run("backup", "files"))
    single, chunked = listed(project)
    results = json.loads(ok(project.run("--json", "verify", "--read-data-subset", "50%")).stdout)
    by_id = {r["id"]: r for r in results}
    assert by_id[single["id"]]["ok"] and "packs" not in by_id[single["id"]]["figures"]
    assert by_id[single["id"]]["figures"]  # the tar's structure check ran
    assert by_id[chunked["id"]]["ok"] and by_id[chunked["id"]]["figures"]["packs"] >= 3
    after = {e["id"]: e.get("verified_at") for e in listed(project)}
    assert after[single["id"]] and after[chunked["id"]] is None
