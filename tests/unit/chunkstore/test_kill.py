"""A writer killed (SIGKILL, injected by strace at its N-th rename: early, middle, late)
leaves the store readable: earlier payloads still read, and the next write succeeds and
reuses every chunk that an index object made durable before the kill."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from cosmic_backup.chunkstore import ChunkStore
from cosmic_backup.chunkstore.layout import PARTIAL_MARK
from tests.strace import killed_at
from tests.unit.chunkstore import KEY, MiB, backup_id, make_store, payload, read, write

REPO = Path(__file__).resolve().parents[3]
CHILD = """
import sys
from pathlib import Path
from cosmic_backup.chunkstore import ChunkStore
from cosmic_backup.chunkstore.layout import PARTIAL_MARK
from tests.unit.format import KEY
store = ChunkStore.open(Path(sys.argv[1]), KEY)
with open(sys.argv[2], "rb") as stream:
    store.write_payload(stream, "database", sys.argv[3], index_every=1)
"""


def killed_writer(root: Path, source: Path, backup: str, at_rename: int) -> None:
    """Run the writer in a child process that strace kills at its `at_rename`-th rename."""
    result = killed_at(
        "rename",
        at_rename,
        [sys.executable, "-c", CHILD, str(root), str(source), backup],
        cwd=REPO,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},  # no .pyc renames to count
    )
    assert result.returncode in (-9, 137), result.stderr.decode(errors="replace")


@pytest.mark.parametrize("when", ["early", "middle", "late"])
def test_a_killed_writer_leaves_a_readable_store_and_its_packs_reused(
    tmp_path: Path, when: str
) -> None:
    root = tmp_path / "backups"
    store = make_store(root)
    earlier = payload(2 * MiB, seed=31)
    earlier_record = write(store, earlier, backup_id(1))
    data = payload(8 * MiB, seed=32)
    source = tmp_path / "payload"
    source.write_bytes(data)
    # The same write on a copy of the store (same data key, so the same chunks) gives the
    # sequence of renames: pack 1, its index object, pack 2, ..., the list last.
    shutil.copytree(root, tmp_path / "reference")
    reference = write(
        ChunkStore.open(tmp_path / "reference", KEY), data, backup_id(2), index_every=1
    )
    assert reference.new_packs >= 3
    renames = 2 * reference.new_packs + 1
    at_rename = {"early": 1, "middle": 2 * (reference.new_packs // 2) + 1, "late": renames}[when]
    killed_writer(root, source, backup_id(2), at_rename)

    after = ChunkStore.open(root, KEY)
    assert read(after, earlier_record, backup_id(1)) == earlier
    assert not (root / "database" / f"{backup_id(2)}.chunks").exists()
    durable_packs = (at_rename - 1) // 2
    assert len(after.loaded_index.objects) == 1 + durable_packs
    indexed_by_the_killed_run = len(after.loaded_index.index) - earlier_record.new_chunks
    assert (indexed_by_the_killed_run > 0) == (durable_packs > 0)
    leftovers = after.remove_leftovers()
    assert (root / "store" / "tmp").is_dir() and not list((root / "store" / "tmp").iterdir())
    if when == "late":  # the list's own temporary file, which the catalog cleans up
        assert not leftovers and len(list((root / "database").glob(".*.partial-*"))) == 1
    else:
        # The pack whose rename was refused, and perhaps the next ones, which the sealing
        # thread may have begun (up to 8 MiB ahead: several of these 1 MiB packs).
        assert leftovers and all(PARTIAL_MARK in path.name for path in leftovers)

    again = write(after, data, backup_id(2))
    assert again.new_chunks == reference.new_chunks - indexed_by_the_killed_run
    assert read(ChunkStore.open(root, KEY), again, backup_id(2)) == data
