"""The sweep of prune: it frees exactly what no live backup uses, repacks packs that are
mostly dead, keeps young packs, and a sweep killed at any deletion or rename leaves every
live backup whole and is finished by the next one."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cosmic_backup.chunkstore import ChunkListRecord, ChunkStore, prune
from cosmic_backup.chunkstore.index_objects import present_packs, read_index_object
from cosmic_backup.chunkstore.layout import StoreLayout
from cosmic_backup.chunkstore.prune import (
    GRACE,
    live_lists,
    stored_size,
    sweep_if_store,
    sweep_store,
)
from cosmic_backup.errors import IntegrityError
from tests.unit.chunkstore import KEY, MiB, backup_id, files_under, make_store, read, write

LATER = datetime.now(UTC) + timedelta(days=2)  # every file written by the test is past grace
REPO = Path(__file__).resolve().parents[3]


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def write_manifest(root: Path, backup: str, record: ChunkListRecord) -> Path:
    """A minimal format 2 manifest, with the fields the backup step writes."""
    component = backup.split("-")[0]
    path = root / component / f"{backup}.manifest.json"
    body = {
        "id": backup,
        "component": component,
        "format_version": 2,
        "chunk_list": record.manifest_field(),
        "plaintext_size": record.plaintext_size,
        "plaintext_sha256": record.plaintext_sha256,
        "stored_size": record.added_bytes,
    }
    path.write_text(json.dumps(body))
    return path


def backup(root: Path, store: ChunkStore, data: bytes, number: int) -> ChunkListRecord:
    record = write(store, data, backup_id(number))
    write_manifest(root, backup_id(number), record)
    return record


def retire(root: Path, number: int) -> None:
    (root / "database" / f"{backup_id(number)}.manifest.json").unlink()


def pack_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in files_under(root / "store" / "packs"))


def sweep(root: Path, *, dry_run: bool = False, now: datetime = LATER, **options: object):  # type: ignore[no-untyped-def]
    return sweep_store(root, KEY, live_lists(root), dry_run=dry_run, now=now, **options)  # type: ignore[arg-type]


def assert_all_read(root: Path, backups: dict[int, tuple[ChunkListRecord, bytes]]) -> None:
    store = ChunkStore.open(root, KEY)
    for number, (record, data) in backups.items():
        assert read(store, record, backup_id(number)) == data


def test_the_mark_set_finds_every_id_added_across_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prune, "MERGE_AT", 16)  # many merges of the sorted array
    ids = [os.urandom(32) for _ in range(2_000)]
    marks = prune.MarkSet()
    for chunk_id in ids + ids[:500]:  # a chunk shared by two backups is held once
        marks.add(chunk_id)
    assert len(marks) == 2_000
    assert all(chunk_id in marks for chunk_id in ids)
    assert not any(os.urandom(32) in marks for _ in range(2_000))
    # Only the first 8 bytes count: a shared prefix keeps a dead chunk, never drops a live one.
    assert ids[0][:8] + bytes(24) in marks


def test_sweep_frees_exactly_the_chunks_only_the_deleted_backup_used(tmp_path: Path) -> None:
    root = tmp_path / "backups"
    store = make_store(root)
    kept_data = random_bytes(3 * MiB, seed=1)
    kept = backup(root, store, kept_data, 1)
    packs_of_kept = present_packs(StoreLayout(root))
    gone_data = kept_data[: 2 * MiB] + random_bytes(3 * MiB, seed=2)  # shares 2 MiB
    gone = backup(root, store, gone_data, 2)
    packs_of_gone = present_packs(StoreLayout(root)) - packs_of_kept
    assert gone.new_packs == len(packs_of_gone) >= 2
    retire(root, 2)
    gone_list = root / "database" / gone.name
    expected = sum(StoreLayout(root).pack(p).stat().st_size for p in packs_of_gone)
    expected += gone_list.stat().st_size
    before = files_under(root)

    planned = sweep(root, dry_run=True)
    assert files_under(root) == before and pack_bytes(root) > 0
    assert planned.freed_bytes == expected
    assert sorted(planned.deleted_packs) == sorted(packs_of_gone) and not planned.repacked_packs

    done = sweep(root)
    assert done.freed_bytes == expected
    assert present_packs(StoreLayout(root)) == packs_of_kept
    assert not gone_list.exists()
    assert_all_read(root, {1: (kept, kept_data)})
    again = sweep(root)  # nothing left to do: nothing written, nothing deleted
    assert again.freed_bytes == 0 and not again.new_packs and not again.deleted_index_objects


def live_member_bytes(store: ChunkStore, pack_name: str, live: set[bytes]) -> tuple[int, int]:
    """The live and dead member bytes of one pack, from the index objects."""
    live_bytes = dead_bytes = 0
    for name in store.loaded_index.objects:
        text = read_index_object(store.layout, store.data_key, store.config, name)
        for pack in text.packs:
            for place in pack.chunks if pack.name == pack_name else []:
                if place.chunk_id in live:
                    live_bytes += place.length
                else:
                    dead_bytes += place.length
    return live_bytes, dead_bytes


def test_a_pack_half_dead_is_repacked_and_its_live_chunks_still_read(tmp_path: Path) -> None:
    root = tmp_path / "backups"
    store = make_store(root, pack_target=32 * MiB)  # each backup's chunks fit one pack
    shared = random_bytes(6 * MiB, seed=3)
    mixed = backup(root, store, shared + random_bytes(6 * MiB, seed=4), 1)
    [mixed_pack] = present_packs(StoreLayout(root))
    kept_data = shared + random_bytes(256 * 1024, seed=5)
    kept = backup(root, store, kept_data, 2)
    retire(root, 1)
    live_ids = {ref.chunk_id for ref in store.chunks_of(kept, backup_id(2))}
    live_bytes, dead_bytes = live_member_bytes(store, mixed_pack, live_ids)
    assert 0.3 < dead_bytes / (live_bytes + dead_bytes) < 0.8  # about half dead
    mixed_size = StoreLayout(root).pack(mixed_pack).stat().st_size
    list_size = (root / "database" / mixed.name).stat().st_size
    expected = mixed_size - stored_size(live_bytes) + list_size

    planned = sweep(root, dry_run=True)
    assert planned.repacked_packs == [mixed_pack] and not planned.deleted_packs
    assert planned.freed_bytes == expected
    before_packs = pack_bytes(root)

    done = sweep(root)
    assert done.freed_bytes == expected
    assert before_packs - pack_bytes(root) == expected - list_size
    assert mixed_pack not in present_packs(StoreLayout(root)) and len(done.new_packs) == 1
    assert_all_read(root, {2: (kept, kept_data)})
    # The index names only packs that exist: a new backup of the same data adds nothing.
    again = write(ChunkStore.open(root, KEY), kept_data, backup_id(3))
    assert again.new_chunks == 0


def test_a_young_unreferenced_pack_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "backups"
    store = make_store(root)
    kept_data = random_bytes(2 * MiB, seed=6)
    kept = backup(root, store, kept_data, 1)
    now = datetime.now(UTC)
    three_days_ago = (now - timedelta(days=3)).timestamp()
    for path in files_under(root):
        os.utime(path, (three_days_ago, three_days_ago))
    kept_packs = present_packs(StoreLayout(root))
    # A backup running now: its packs and index objects are written, its manifest is not.
    running = write(store, random_bytes(3 * MiB, seed=7), backup_id(2))
    running_packs = present_packs(StoreLayout(root)) - kept_packs
    assert len(running_packs) == running.new_packs >= 2

    result = sweep(root, now=now)
    assert result.freed_bytes == 0 and not result.deleted_packs and not result.deleted_lists
    assert set(result.young_packs) == running_packs
    assert (root / "database" / running.name).exists()
    # Once past the grace period, the same packs and list are garbage.
    later = sweep(root, now=now + GRACE + timedelta(minutes=1))
    assert set(later.deleted_packs) == running_packs and later.deleted_lists == [running.name]
    assert present_packs(StoreLayout(root)) == kept_packs
    assert_all_read(root, {1: (kept, kept_data)})


def test_a_live_backup_whose_list_is_damaged_stops_the_sweep_before_any_deletion(
    tmp_path: Path,
) -> None:
    root = tmp_path / "backups"
    store = make_store(root)
    backup(root, store, random_bytes(2 * MiB, seed=8), 1)
    damaged = backup(root, store, random_bytes(2 * MiB, seed=9), 2)
    retire(root, 1)
    list_path = root / "database" / damaged.name
    list_path.write_bytes(list_path.read_bytes()[:-1] + b"\0")
    before = files_under(root)
    with pytest.raises(IntegrityError, match="Nothing was deleted"):
        sweep(root)
    assert files_under(root) == before


def test_an_unreadable_manifest_stops_the_sweep_before_any_deletion(tmp_path: Path) -> None:
    root = tmp_path / "backups"
    store = make_store(root)
    backup(root, store, random_bytes(2 * MiB, seed=16), 1)
    backup(root, store, random_bytes(2 * MiB, seed=17), 2)
    retire(root, 1)
    (root / "database" / f"{backup_id(2)}.manifest.json").write_text('{"format_version": 2')
    before = files_under(root)
    with pytest.raises(IntegrityError, match=r"cannot be read.*Nothing was deleted"):
        sweep(root)
    assert files_under(root) == before


def test_the_hook_is_a_no_op_without_a_store_and_counts_retired_backups_dead(
    tmp_path: Path,
) -> None:
    assert sweep_if_store(tmp_path, KEY, dry_run=False, now=LATER) is None
    root = tmp_path / "backups"
    store = make_store(root)
    backup(root, store, random_bytes(2 * MiB, seed=10), 1)
    planned = sweep_if_store(root, KEY, dry_run=True, now=LATER, retired=[backup_id(1)])
    assert planned is not None and planned.freed_bytes == pack_bytes(root)


# -- kills ------------------------------------------------------------------------------

CHILD = """
import sys
from datetime import datetime, timedelta, UTC
from pathlib import Path
from cosmic_backup.chunkstore.prune import live_lists, sweep_store
from tests.unit.format import KEY
root = Path(sys.argv[1])
sweep_store(root, KEY, live_lists(root), dry_run=False, now=datetime.now(UTC) + timedelta(days=2))
"""


def run_sweep_child(root: Path, syscall: str, kill_at: int | None, log: Path) -> int:
    inject = [] if kill_at is None else ["-e", f"inject={syscall}:signal=KILL:when={kill_at}"]
    strace = ["strace", "-qq", "-f", "-o", str(log), "-e", f"trace={syscall}", *inject]
    result = subprocess.run(
        [*strace, sys.executable, "-c", CHILD, str(root)],
        cwd=REPO,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},  # no .pyc renames to count
        capture_output=True,
        check=False,
    )
    return result.returncode


def syscalls_of_a_clean_sweep(root: Path, syscall: str, log: Path) -> int:
    assert run_sweep_child(root, syscall, None, log) == 0
    return sum(1 for line in log.read_text().splitlines() if f"{syscall}(" in line)


def store_with_work(root: Path) -> dict[int, tuple[ChunkListRecord, bytes]]:
    """Two dead backups (one whose packs all go, one that leaves a pack half dead) and two
    live ones: the sweep deletes lists, packs and index objects, and repacks."""
    store = make_store(root, pack_target=4 * MiB)
    shared = random_bytes(2 * MiB, seed=11)
    live_data = {2: shared + random_bytes(512 * 1024, seed=12), 4: random_bytes(MiB, seed=13)}
    backup(root, store, shared + random_bytes(2 * MiB, seed=14), 1)
    live = {2: (backup(root, store, live_data[2], 2), live_data[2])}
    backup(root, store, random_bytes(6 * MiB, seed=15), 3)
    live[4] = (backup(root, store, live_data[4], 4), live_data[4])
    retire(root, 1)
    retire(root, 3)
    return live


def store_figures(root: Path) -> tuple[int, int, int]:
    store = ChunkStore.open(root, KEY)
    return pack_bytes(root), len(present_packs(store.layout)), len(store.loaded_index.index)


@pytest.mark.parametrize(
    ("syscall", "when"),
    [
        ("unlink", "early"),
        ("unlink", "middle"),
        ("unlink", "late"),
        ("rename", "early"),
        ("rename", "late"),
    ],
)
def test_a_killed_sweep_leaves_every_live_backup_whole_and_the_next_one_finishes(
    tmp_path: Path, syscall: str, when: str
) -> None:
    root = tmp_path / "backups"
    live = store_with_work(root)
    reference = tmp_path / "reference"
    shutil.copytree(root, reference)
    planned = sweep(reference, dry_run=True)
    assert planned.deleted_packs and planned.repacked_packs and len(planned.deleted_lists) == 2
    total = syscalls_of_a_clean_sweep(reference, syscall, tmp_path / "reference.log")
    assert total >= (3 if syscall == "unlink" else 2)  # lists, objects, packs; pack, index
    clean = store_figures(reference)
    assert clean[0] == store_figures(root)[0] - planned.freed_bytes + sum(
        (root / "database" / name).stat().st_size for name in planned.deleted_lists
    )
    assert_all_read(reference, live)

    kill_at = {"early": 1, "middle": (total + 1) // 2, "late": total}[when]
    code = run_sweep_child(root, syscall, kill_at, tmp_path / "killed.log")
    assert code in (-9, 137)
    assert_all_read(root, live)

    result = sweep(root)
    assert_all_read(root, live)
    assert store_figures(root) == clean
    assert not sweep(root).freed_bytes  # finished: nothing left to free
    assert result.live_backups == 2
