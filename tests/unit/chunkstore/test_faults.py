"""A damaged, missing or swapped object is refused in one sentence naming the pack, the
chunk and the backup, before any payload byte of the damaged part is returned."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import pytest

from cosmic_backup.chunkstore import ChunkListRecord, ChunkStore
from cosmic_backup.errors import IntegrityError
from tests.unit.chunkstore import DB_ID, KEY, MiB, backup_id, make_store, payload, write


@pytest.fixture
def written(tmp_path: Path) -> tuple[ChunkStore, bytes, ChunkListRecord]:
    store = make_store(tmp_path)
    data = payload(10 * MiB, seed=21)
    return store, data, write(store, data)


def read_until_refused(
    root: Path, record: ChunkListRecord, backup: str = DB_ID
) -> tuple[bytes, str]:
    """What a fresh reader returned before it refused, and its sentence; the same with
    the read-ahead thread (a files restore's reader): the same bytes, then the same
    refusal, never a byte past the broken chunk."""
    seen = []
    for read_ahead in (False, True):
        returned = bytearray()
        with pytest.raises(IntegrityError) as refused:
            store = ChunkStore.open(root, KEY)
            for piece in store.read_payload(record, backup, read_ahead=read_ahead):
                returned += piece
        seen.append((bytes(returned), str(refused.value)))
    assert seen[0] == seen[1]
    return seen[0]


def data_pack_in_the_middle(store: ChunkStore, record: ChunkListRecord) -> tuple[str, bytes, int]:
    """A pack of payload chunks that is neither the first nor the one holding the entry
    text, the first chunk of it in the payload, and where that chunk starts."""
    index = store.loaded_index.index
    parts = list(store.chunks_of(record, DB_ID))
    part_packs = {index.lookup(ref.chunk_id).pack for ref in parts[:1]}  # type: ignore[union-attr]
    offset, first_pack = 0, None
    for ref in parts[1:]:
        pack = index.lookup(ref.chunk_id).pack  # type: ignore[union-attr]
        first_pack = first_pack or pack
        if pack != first_pack and pack not in part_packs:
            return pack, ref.chunk_id, offset
        offset += ref.plain_length
    raise AssertionError("the payload should span several packs")


def test_a_damaged_pack_byte_is_refused_before_its_chunks(written, tmp_path: Path) -> None:
    store, data, record = written
    pack, chunk_id, start = data_pack_in_the_middle(store, record)
    path = store.layout.pack(pack)
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    returned, sentence = read_until_refused(tmp_path, record)
    assert len(returned) <= start and data.startswith(returned)
    assert pack in sentence and chunk_id.hex() in sentence and DB_ID in sentence
    assert "fails its integrity check" in sentence and "verify" in sentence


def test_a_missing_pack_is_refused_before_any_byte(written, tmp_path: Path) -> None:
    store, _, record = written
    pack, chunk_id, _ = data_pack_in_the_middle(store, record)
    store.layout.pack(pack).unlink()
    returned, sentence = read_until_refused(tmp_path, record)
    assert returned == b""
    assert f"is in the pack {pack}, which is missing" in sentence
    assert chunk_id.hex() in sentence and DB_ID in sentence


def test_a_valid_pack_swapped_for_another_is_refused(written, tmp_path: Path) -> None:
    store, data, record = written
    pack, chunk_id, start = data_pack_in_the_middle(store, record)
    other = next(name for name in store.loaded_index.index.packs if name != pack)
    shutil.copyfile(store.layout.pack(other), store.layout.pack(pack))
    returned, sentence = read_until_refused(tmp_path, record)
    assert len(returned) <= start and data.startswith(returned)
    assert pack in sentence and chunk_id.hex() in sentence
    assert "another pack was put in its place" in sentence


def test_a_chunk_list_copied_under_another_backups_name_is_refused(written, tmp_path: Path) -> None:
    store, _, record = written
    other = backup_id(7)
    shutil.copyfile(
        store.layout.chunk_list("database", DB_ID), store.layout.chunk_list("database", other)
    )
    copied = dataclasses.replace(record, name=f"{other}.chunks")
    returned, sentence = read_until_refused(tmp_path, copied, other)
    assert returned == b""
    assert f"is the list of backup {DB_ID}, not of {other}" in sentence


def test_a_damaged_or_replaced_chunk_list_is_refused(written, tmp_path: Path) -> None:
    store, data, record = written
    second = write(store, data[: len(data) // 2], backup_id(8))
    path = store.layout.chunk_list("database", DB_ID)
    path.write_bytes(store.layout.chunk_list("database", backup_id(8)).read_bytes())
    for wrong in (record, dataclasses.replace(record, stored_size=second.stored_size)):
        returned, sentence = read_until_refused(tmp_path, wrong)
        assert returned == b""
        assert "chunk list" in sentence and "fails its integrity check" in sentence


def test_a_chunk_missing_from_the_index_is_refused(written, tmp_path: Path) -> None:
    store, _, record = written
    for index_object in store.layout.index.iterdir():
        index_object.unlink()
    returned, sentence = read_until_refused(tmp_path, record)
    assert returned == b"" and "is in no index object" in sentence and DB_ID in sentence


def test_a_chunk_swapped_for_another_valid_one_is_refused_by_its_id(written, tmp_path) -> None:
    """An index object that passes its MAC (written with the data key) but places a chunk
    at another valid chunk's member, superseding the true one: refused by the id check,
    with only the payload's true beginning returned."""
    from cosmic_backup.chunkstore.index_objects import read_index_object, write_index_object
    from cosmic_backup.format.index_text import ChunkPlace

    store, data, record = written
    (true_name,) = store.loaded_index.objects
    text = read_index_object(store.layout, store.data_key, store.config, true_name)
    pack = next(pack for pack in text.packs if len(pack.chunks) >= 2)
    victim, donor = pack.chunks[-1], pack.chunks[0]
    pack.chunks[-1] = ChunkPlace(victim.chunk_id, donor.offset, donor.length, victim.plain_length)
    text.supersedes = [true_name]
    write_index_object(store.layout, store.data_key, store.config, text)
    returned, sentence = read_until_refused(tmp_path, record)
    assert data.startswith(returned) and len(returned) < len(data)
    assert victim.chunk_id.hex() in sentence and pack.name in sentence
    assert "does not match its id" in sentence or "wrong length" in sentence


def test_valid_chunks_in_another_order_are_refused(written, tmp_path: Path) -> None:
    """A valid chunk list of the same chunks in another order, under the backup's own
    name (as a writer's bug would leave it): every chunk passes its id; the manifest's
    MAC of the list refuses it, and a backup of an earlier version, whose manifest
    recorded the payload's SHA-256, is refused by that check too, even when its
    manifest names the other list's MAC."""
    store, data, record = written
    assert record.plaintext_sha256 is None  # the chunk ids and the MACed list bind it
    refs = list(store.chunks_of(record, DB_ID))[1:]  # the payload's, after the entry part
    cuts, offset = [], 0
    for ref in refs:
        cuts.append(data[offset : offset + ref.plain_length])
        offset += ref.plain_length
    cuts[0], cuts[1] = cuts[1], cuts[0]
    # Its list replaces the true one, under the same backup's name and with a valid MAC.
    with store.payload_writer("database", DB_ID) as writer:
        for cut in cuts:  # each a whole chunk already: cut on its own, it stays one
            writer.add_piece(cut, "stream")
        other = writer.finish()
    assert other.new_chunks == 1  # the same chunks; only the entry text's part is new
    returned, sentence = read_until_refused(tmp_path, record)
    assert returned == b"" and "fails its integrity check" in sentence
    earlier = dataclasses.replace(other, plaintext_sha256=hashlib.sha256(data).hexdigest())
    for read_ahead in (False, True):
        reader = ChunkStore.open(tmp_path, KEY).read_payload(earlier, DB_ID, read_ahead=read_ahead)
        with pytest.raises(IntegrityError) as refused:
            b"".join(reader)
        assert "does not have the size and SHA-256 its manifest records" in str(refused.value)
