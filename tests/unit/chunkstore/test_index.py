"""The loaded index: sorted fixed records, fresh chunks merged in, duplicates resolved
toward a pack that is present, superseded index objects ignored."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cosmic_backup.chunkstore.index import ChunkIndex
from cosmic_backup.chunkstore.index_objects import load_index, write_index_object
from cosmic_backup.errors import IntegrityError
from cosmic_backup.format.index_text import (
    ChunkPlace,
    IndexText,
    PackRecord,
    parse_index,
    render_index,
)
from tests.unit.chunkstore import make_store

WRITTEN = "2026-11-24T02:00:00.000000Z"


def pack(name: str, ids: list[bytes]) -> PackRecord:
    places = [ChunkPlace(cid, 64 * n, 64, 10 + n) for n, cid in enumerate(ids)]
    return PackRecord(name, 1000, WRITTEN, places)


def test_fresh_chunks_are_found_before_and_after_the_merge() -> None:
    index = ChunkIndex()
    ids = sorted(os.urandom(32) for _ in range(300))
    index.load([index.sorted_run(IndexText(WRITTEN, [pack("a" * 64, ids[::2])]))], bool)
    index.add_pack(pack("b" * 64, ids[1::2]))
    before = [index.lookup(cid) for cid in ids]
    index.merge_fresh()
    assert [index.lookup(cid) for cid in ids] == before
    assert index.nbytes == 48 * 300 and len(index) == 300
    assert index.lookup(ids[1]).pack == "b" * 64  # type: ignore[union-attr]
    assert index.lookup(os.urandom(32)) is None


def test_a_chunk_written_again_replaces_its_place_in_a_missing_pack() -> None:
    index = ChunkIndex()
    cid = os.urandom(32)
    index.load([index.sorted_run(IndexText(WRITTEN, [pack("a" * 64, [cid])]))], bool)
    index.add_pack(pack("b" * 64, [cid]))
    index.merge_fresh()
    assert index.lookup(cid).pack == "b" * 64 and len(index) == 1  # type: ignore[union-attr]


def test_a_duplicate_across_objects_keeps_the_one_whose_pack_is_present() -> None:
    cid = os.urandom(32)
    for present in ("a" * 64, "b" * 64):
        index = ChunkIndex()
        runs = [
            index.sorted_run(IndexText(WRITTEN, [pack(name, [cid])]))
            for name in ("a" * 64, "b" * 64)
        ]
        index.load(runs, present.__eq__)
        assert index.lookup(cid).pack == present and len(index) == 1  # type: ignore[union-attr]


def test_superseded_index_objects_are_ignored(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    old_id, new_id = os.urandom(32), os.urandom(32)
    args = (store.layout, store.data_key, store.config)
    old, _ = write_index_object(*args, IndexText(WRITTEN, [pack("a" * 64, [old_id])]))
    write_index_object(*args, IndexText(WRITTEN, [pack("b" * 64, [new_id])], [old]))
    loaded = load_index(*args)
    assert loaded.index.lookup(old_id) is None and loaded.index.lookup(new_id) is not None
    assert old not in loaded.objects


def test_index_text_round_trips_and_a_bad_count_is_refused() -> None:
    text = IndexText(WRITTEN, [pack("c" * 64, [os.urandom(32) for _ in range(3)])], ["d" * 64])
    rendered = render_index(text)
    assert parse_index(rendered, "x") == text
    with pytest.raises(IntegrityError, match="end line"):
        parse_index(rendered.replace(b"end 3", b"end 2"), "x")


def test_places_by_pack_gives_every_chunk_of_the_named_packs_fresh_or_merged() -> None:
    index = ChunkIndex()
    ids = sorted(os.urandom(32) for _ in range(30))
    index.load([index.sorted_run(IndexText(WRITTEN, [pack("a" * 64, ids[:10])]))], bool)
    index.add_pack(pack("b" * 64, ids[10:20]))  # fresh: not merged yet
    index.add_pack(pack("c" * 64, ids[20:]))
    found = index.places_by_pack({"a" * 64, "b" * 64, "d" * 64})
    assert sorted(p.chunk_id for p in found["a" * 64]) == ids[:10]
    assert sorted(p.chunk_id for p in found["b" * 64]) == ids[10:20]
    assert found["d" * 64] == [] and "c" * 64 not in found


def test_a_backup_of_many_small_chunks_writes_index_objects_of_bounded_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index object is parsed whole, so its chunk count bounds a load's memory: a
    writer closes one at INDEX_CHUNKS_PER_OBJECT chunks (here 50), not only every 64
    packs, and the next process finds every chunk through them."""
    from cosmic_backup.chunkstore import writer as writer_module
    from cosmic_backup.chunkstore.index_objects import read_index_object
    from cosmic_backup.chunkstore.store import ChunkStore
    from tests.unit.chunkstore import KEY, backup_id, read

    monkeypatch.setattr(writer_module, "INDEX_CHUNKS_PER_OBJECT", 50)
    store = make_store(tmp_path, pack_target=16 * 1024)
    pieces = [os.urandom(1024) for _ in range(400)]
    with store.payload_writer("files", backup_id(1, "files")) as writer:
        for piece in pieces:  # each piece its own chunk, ~16 to a pack
            writer.add_piece(piece, "file")
        record = writer.finish()
    objects = sorted(store.layout.index.iterdir())
    counts = [
        sum(len(pack.chunks) for pack in text.packs)
        for text in (
            read_index_object(store.layout, store.data_key, store.config, o.name) for o in objects
        )
    ]
    assert sum(counts) >= 400 and len(objects) >= 400 // 70
    assert max(counts) < 50 + 20  # closed at the first pack past the bound
    assert read(ChunkStore.open(tmp_path, KEY), record, backup_id(1, "files")) == b"".join(pieces)
