"""Payloads through the chunk store and back, byte for byte, and deduplication."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cosmic_backup.chunkstore import ChunkStore
from cosmic_backup.format.store_config import PACK_TARGET
from tests.unit.chunkstore import (
    KEY,
    MiB,
    backup_id,
    files_under,
    make_store,
    payload,
    read,
    write,
)


@pytest.mark.parametrize("size", [0, 1], ids=["empty", "one-byte"])
def test_tiny_payloads_round_trip(tmp_path: Path, size: int) -> None:
    store = make_store(tmp_path)
    data = b"x" * size
    record = write(store, data)
    assert record.chunks == size
    assert record.plaintext_size == size
    assert record.plaintext_sha256 is None  # the chunk ids and the MACed list bind it
    assert read(store, record) == data
    assert read(ChunkStore.open(tmp_path, KEY), record) == data  # a new process's view


def test_fifty_megabytes_round_trip_in_default_packs(tmp_path: Path) -> None:
    store = make_store(tmp_path, pack_target=PACK_TARGET)
    data = payload(50 * MiB)
    record = write(store, data)
    packs = files_under(tmp_path / "store" / "packs")
    assert record.new_packs == len(packs) >= 2  # 25 MiB of random bytes alone fill one
    assert 50 * MiB / (2 * MiB) <= record.chunks <= 50 * MiB / (128 * 1024)
    assert read(ChunkStore.open(tmp_path, KEY), record) == data
    # Read ahead by its thread, several times AHEAD_BYTES: the same bytes in the same order.
    assert read(ChunkStore.open(tmp_path, KEY), record, read_ahead=True) == data


def test_the_read_ahead_hands_over_small_chunks_in_bounded_batches() -> None:
    from cosmic_backup.chunkstore.reader import BATCH_BYTES, BATCH_CHUNKS, _batches
    from cosmic_backup.format.chunk_list import ChunkRef

    refs = [ChunkRef(bytes([n % 256]) * 32, 1 + n % 3000) for n in range(5000)]
    refs += [ChunkRef(b"big" + bytes(29), 3 * BATCH_BYTES)]
    batches = list(_batches(refs))
    assert [ref for _, batch in batches for ref in batch] == refs  # all, in order
    for size, batch in batches:
        assert size == sum(ref.plain_length for ref in batch)
        assert len(batch) <= BATCH_CHUNKS
        assert size - batch[-1].plain_length < BATCH_BYTES  # it ends once it is full


def test_many_small_payloads_each_read_back(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    rng = random.Random(7)
    written = []
    for number in range(40):
        data = payload(rng.randrange(0, 300_000), seed=number)
        component = ("database", "files", "config")[number % 3]
        backup = backup_id(number, component)
        written.append((backup, data, write(store, data, backup)))
    reopened = ChunkStore.open(tmp_path, KEY)
    for backup, data, record in written:
        assert read(reopened, record, backup) == data
    # Small payloads share packs only within one backup: one pack each, at most.
    assert len(files_under(tmp_path / "store" / "packs")) <= len(written)


def test_same_payload_twice_adds_no_pack_only_a_list(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = payload(20 * MiB, seed=3)
    first = write(store, data, backup_id(1))
    before = files_under(tmp_path / "store")
    second = write(ChunkStore.open(tmp_path, KEY), data, backup_id(2))
    assert (second.new_chunks, second.new_packs) == (0, 0)
    assert files_under(tmp_path / "store") == before  # no pack, no index object
    assert second.added_bytes == second.stored_size  # only the list object
    assert (tmp_path / "database" / f"{backup_id(2)}.chunks").is_file()
    assert second.chunks == first.chunks
    assert read(store, second, backup_id(2)) == data


def test_an_insertion_in_the_middle_reuses_all_but_a_few_chunks(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    # Random bytes, so that every cut is content-defined: in repetitive rows the chunker
    # meets its maximum size, and forced cuts only fall back into step at the next natural
    # cut, several maximal chunks later. The insertion is no multiple of any chunk size,
    # so fixed-size chunking would lose everything after it.
    data = random.Random(4).randbytes(20 * MiB)
    middle = 7 * MiB + 12345
    changed = data[:middle] + random.Random(5).randbytes(MiB + 777) + data[middle:]
    first = write(store, data, backup_id(1))
    second = write(store, changed, backup_id(2))
    old_chunks = store.chunks_of(first, backup_id(1))
    new_ids = {ref.chunk_id for ref in store.chunks_of(second, backup_id(2))}
    lost_bytes = sum(ref.plain_length for ref in old_chunks if ref.chunk_id not in new_ids)
    # The chunk the insertion lands in is cut anew, then CDC resynchronises within a chunk
    # or two. Each store's chunker has its own seed: over 150 seeds at most 2.x MiB of the
    # old payload was cut anew (1 to 4 chunks), and 2 to 7 new chunks were written.
    largest = store.config.chunker("stream").max
    assert first.chunks >= 15
    assert lost_bytes <= 2 * largest
    assert second.new_chunks <= 12
    assert read(store, second, backup_id(2)) == changed
    assert read(store, first, backup_id(1)) == data


def test_a_chunk_repeated_inside_one_payload_is_stored_once(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    block = random.Random(9).randbytes(8 * MiB)
    record = write(store, block * 4)
    # The first copy, and the chunks around the first junction, until the cuts fall where
    # they fell in the first copy (each store's chunker has its own seed, so how long
    # that takes varies: at most a couple of maximal chunks); the other copies add nothing.
    largest = store.config.chunker("stream").max
    assert record.added_bytes < len(block) + 2 * largest + 64 * 1024
    assert read(store, record) == block * 4
