"""The store checked pack by pack (chunkstore/check.py): which backups use each pack, a
window of the pack names read in full, windows that move on so successive runs cover
the store, and every backup a damaged or missing pack breaks named."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cosmic_backup.chunkstore import ChunkListRecord, ChunkStore
from cosmic_backup.chunkstore.check import (
    NAME_SPACE,
    check_store,
    finish_window,
    parse_subset,
    read_window_start,
)
from cosmic_backup.chunkstore.reader import open_chunk_list
from cosmic_backup.errors import UsageError
from tests.unit.chunkstore import MiB, backup_id, make_store, payload, write

NOW = "2026-12-01T00:00:00Z"
Lives = list[tuple[str, ChunkListRecord]]


@pytest.fixture
def shared(tmp_path: Path) -> tuple[ChunkStore, Lives]:
    """Three backups that share most of their packs: the same data, one with a tail."""
    store = make_store(tmp_path)
    data = random.Random(41).randbytes(16 * MiB)  # incompressible: 16 packs or so
    lives = []
    for number, extra in ((1, b""), (2, payload(2 * MiB, seed=42)), (3, b"")):
        lives.append((backup_id(number), write(store, data + extra, backup_id(number))))
    return store, lives


def reopened(store: ChunkStore) -> ChunkStore:
    from tests.unit.chunkstore import KEY

    return ChunkStore.open(store.layout.root, KEY)


def slot_of(pack: str, slices: int) -> int:
    """The n of the n/t slice that holds `pack` (docs: its first 8 hex digits)."""
    return int(pack[:8], 16) * slices // NAME_SPACE + 1


def shared_data_pack(store: ChunkStore, lives: Lives) -> str:
    """A pack that all three backups use and that holds no entry text part."""
    index = store.loaded_index.index
    parts = {
        index.lookup(ref.chunk_id).pack  # type: ignore[union-attr]
        for backup, record in lives
        for ref in open_chunk_list(store, record, backup).parts
    }
    check = check_store(store, lives, None)
    everyone = sorted(b for b, _ in lives)
    return next(p for p in sorted(check.uses) if check.breaks(p) == everyone and p not in parts)


def test_successive_windows_read_every_pack_once_and_wrap_around(shared) -> None:
    store, lives = shared
    used = set(check_store(store, lives, None).uses)
    assert len(used) >= 10
    runs = []
    for _ in range(4):
        window = parse_subset("25%", store.layout)
        check = check_store(reopened(store), lives, window)
        assert not check.broken
        assert finish_window(store.layout, window, check, NOW)
        runs.append(set(check.packs_read))
    assert set().union(*runs) == used
    assert sum(len(run) for run in runs) == len(used)  # disjoint: each pack read once
    assert all(len(run) < len(used) for run in runs)  # (a window may hold none of 16)
    assert read_window_start(store.layout) == 0.0
    again = check_store(reopened(store), lives, parse_subset("25%", store.layout))
    assert set(again.packs_read) == runs[0]


def test_n_of_t_slices_partition_the_packs_and_keep_no_position(shared) -> None:
    store, lives = shared
    used = set(check_store(store, lives, None).uses)
    slices = [
        set(check_store(store, lives, parse_subset(f"{n}/3", store.layout)).packs_read)
        for n in (1, 2, 3)
    ]
    assert set().union(*slices) == used and sum(map(len, slices)) == len(used)
    window = parse_subset("2/3", store.layout)
    assert not finish_window(store.layout, window, check_store(store, lives, window), NOW)
    assert not (store.layout.cache / "verify-window.json").exists()


def test_a_damaged_pack_is_read_only_inside_its_window_and_names_every_backup(shared) -> None:
    store, lives = shared
    pack = shared_data_pack(store, lives)
    path = store.layout.pack(pack)
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 3] ^= 0x01
    path.write_bytes(bytes(damaged))
    inside = slot_of(pack, 4)
    outside = inside % 4 + 1

    missed = check_store(reopened(store), lives, parse_subset(f"{outside}/4", store.layout))
    assert pack not in missed.packs_read and not missed.broken

    window = parse_subset(f"{inside}/4", store.layout)
    found = check_store(reopened(store), lives, window)
    assert pack in found.packs_read and "fails its integrity check" in found.bad_packs[pack]
    assert sorted(found.broken) == sorted(b for b, _ in lives)
    for backup, _ in lives:
        assert pack in found.broken[backup][0] and backup in found.broken[backup][0]
        assert found.first_bad_pack[backup] == pack
    assert found.breaks(pack) == sorted(b for b, _ in lives)


def test_a_missing_pack_is_named_whatever_the_window_and_the_window_stays(shared) -> None:
    store, lives = shared
    pack = shared_data_pack(store, lives)
    store.layout.pack(pack).unlink()
    window = parse_subset("10%", store.layout)
    found = check_store(reopened(store), lives, window)
    assert found.bad_packs == {pack: "is missing"}
    assert sorted(found.broken) == sorted(b for b, _ in lives)
    assert not finish_window(store.layout, window, found, NOW)  # re-check after a repair
    assert read_window_start(store.layout) == 0.0


@pytest.mark.parametrize("text", ["0%", "101%", "-5%", "5/4", "0/3", "ten", "10", "1/0"])
def test_a_subset_that_is_not_one_is_one_sentence(tmp_path: Path, text: str) -> None:
    with pytest.raises(UsageError) as refused:
        parse_subset(text, make_store(tmp_path).layout)
    assert "N%" in str(refused.value) and "n/t" in str(refused.value)
