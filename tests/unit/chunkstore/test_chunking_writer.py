"""The writer a producer writes into cuts the same chunks as reading the stream whole."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from cosmic_backup.chunkstore import writer as writer_module
from cosmic_backup.format.store_config import FILE, STREAM
from tests.unit.chunkstore import DB_ID, MiB, backup_id, make_store, payload, read


@pytest.mark.parametrize(
    ("kind", "background", "tail"),
    [(STREAM, False, 3 * MiB), (FILE, False, 3 * MiB), (STREAM, True, 3 * MiB), (STREAM, True, 1)],
)
def test_written_pieces_cut_as_the_whole_stream_does(
    tmp_path: Path, kind: str, background: bool, tail: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cut every 9 MiB (at least twice a chunk's max): many buffer ends inside a payload,
    # each cutting a chunk carried over from the block before; the last block is `tail`
    # long (1 byte: shorter than a chunk's max, joined to the carried chunk as it is).
    monkeypatch.setattr(writer_module, "CUT_EVERY", 9 * MiB)
    data = payload(40 * MiB, seed=3) + bytes(5 * MiB) + payload(tail, seed=4)
    store = make_store(tmp_path)
    whole = store.write_payload(io.BytesIO(data), "database", DB_ID, kind=kind)
    progress: list[int] = []
    second = backup_id(2)
    with store.payload_writer("database", second) as payload_writer:
        pushed = payload_writer.stream_writer(
            kind, on_progress=progress.append, background=background
        )
        for start in range(0, len(data), 65_521):  # odd-sized writes, as tar's and pg_dump's
            pushed.write(data[start : start + 65_521])
        pushed.finish()
        record = payload_writer.finish()
    assert sum(progress) == len(data)
    assert read(store, record, second) == data
    # The same cuts: every chunk already stored, the same entries, the same payload.
    assert (record.new_chunks, record.new_packs) == (0, 0)
    assert record.chunks == whole.chunks
