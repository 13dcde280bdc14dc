"""Per-file chunking and the files cache, on real folders and a real chunk store: the files
component writes into the store's RecordWriter exactly as `backup files` does
(operations/backup.py `_write_chunked`), and every payload is compared byte for byte with
the tar the component writes into a plain stream, and restored and compared with the tree.

Files are made more than a second before the backup that should cache them (the racy
rule: a file changed within a second of the backup's start is read, never cached)."""

from __future__ import annotations

import io
import logging
import os
import sqlite3
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cosmic_backup.chunkstore import ChunkListRecord, ChunkStore
from cosmic_backup.chunkstore.files_cache import FilesCache, cache_path
from cosmic_backup.chunkstore.records import RACY_NS, RecordWriter
from cosmic_backup.components.base import BackupRequest, RestoreRequest
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.format.store_config import FILE
from tests.integration.files.test_files_component import component_in
from tests.trees import tree_snapshot
from tests.unit.chunkstore import KEY, MiB, make_store, read

LOG = logging.getLogger("test.files.cache")


def settle() -> None:
    """Past the racy window: what was written so far may be cached by the next backup."""
    time.sleep(RACY_NS / 1e9 + 0.05)


@dataclass
class Taken:
    backup_id: str
    record: ChunkListRecord
    reused: int  # files named from the cache, not opened
    warnings: list[str]
    source: dict


class Harness:
    """A project with an uploads folder and its chunk store, backed up as the CLI does."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "app"
        self.uploads = self.root / "uploads"
        self.uploads.mkdir(parents=True)
        self.backups = tmp_path / "backups"
        make_store(self.backups)
        self.component = component_in(self.root, "uploads")
        self.taken = 0
        self.restores = tmp_path / "restores"

    def store(self) -> ChunkStore:
        return ChunkStore.open(self.backups, KEY)  # each backup loads the index afresh

    def backup(
        self, *, use_cache: bool = True, on_progress: Callable[[int], None] | None = None
    ) -> Taken:
        self.taken += 1
        backup_id = f"files-20261124T03{self.taken:04d}Z"
        store = self.store()
        cache = FilesCache(store.layout, "files", LOG)
        with store.payload_writer("files", backup_id) as payload:
            writer = RecordWriter(
                payload, FILE, cache, use_cache=use_cache, on_progress=on_progress
            )
            produced = self.component.produce(writer, BackupRequest())  # type: ignore[arg-type]
            writer.finish()
            record = payload.finish()
        cache.commit()  # where `backup` commits it: after the manifest
        return Taken(
            backup_id, record, writer.reused_files, produced.warnings, produced.source.to_dict()
        )

    def payload(self, taken: Taken) -> bytes:
        return read(self.store(), taken.record, taken.backup_id)

    def plain_tar(self) -> bytes:
        """The tar of the folder as a single-file backup writes it (every file read)."""
        out = io.BytesIO()
        self.component.produce(out, BackupRequest())
        return out.getvalue()

    def restored(self, taken: Taken) -> dict[str, tuple]:
        target = self.restores / taken.backup_id
        manifest = Manifest(
            taken.backup_id, "files", "ok", "full", ["manual"], "", "", "0", source=taken.source
        )
        plan = self.component.plan_restore(manifest, RestoreRequest(target=str(target)))
        self.component.consume(io.BytesIO(self.payload(taken)), manifest, plan)
        return tree_snapshot(target / "uploads")

    def cached_paths(self) -> set[str]:
        with sqlite3.connect(cache_path(self.store().layout, "files")) as db:
            rows = db.execute("SELECT folder, name FROM files")
            return {f"{folder.decode()}/{name.decode()}" for folder, name in rows}


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def _random_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))


def _mixed_tree(uploads: Path) -> None:
    """Empty, small, sparse and big files, hard links, a link and unusual names."""
    (uploads / "empty-folder").mkdir()
    (uploads / "empty.txt").write_bytes(b"")
    (uploads / "small.txt").write_text("a small file")
    (uploads / "déjà vu — résumé.pdf").write_bytes(os.urandom(3000))
    _random_file(uploads / "photos" / "big.jpg", 3 * MiB + 7)
    with (uploads / "sparse.img").open("wb") as handle:
        handle.truncate(20 * MiB)
        handle.seek(10 * MiB)
        handle.write(b"middle of a hole")
    os.link(uploads / "photos" / "big.jpg", uploads / "hard-link.jpg")
    (uploads / "latest.jpg").symlink_to("photos/big.jpg")
    private = uploads / "private.key"
    private.write_text("restricted")
    private.chmod(0o600)


def test_the_payload_is_the_same_tar_read_or_named_from_the_cache(harness: Harness) -> None:
    _mixed_tree(harness.uploads)
    settle()
    first = harness.backup()
    assert first.reused == 0
    assert harness.payload(first) == harness.plain_tar()
    assert harness.cached_paths() == {
        "uploads/empty.txt",
        "uploads/small.txt",
        "uploads/déjà vu — résumé.pdf",
        "uploads/photos/big.jpg",
        "uploads/sparse.img",
        "uploads/hard-link.jpg",
        "uploads/private.key",
    }
    second = harness.backup()
    assert second.reused == 7  # every file named from the cache
    assert (second.record.new_chunks, second.record.new_packs) == (0, 0)
    assert harness.payload(second) == harness.plain_tar()
    live = tree_snapshot(harness.uploads)
    assert harness.restored(second) == live
    assert harness.restored(first) == live
    hard = harness.restores / second.backup_id / "uploads" / "hard-link.jpg"
    assert hard.read_bytes() == (harness.uploads / "photos" / "big.jpg").read_bytes()


def test_a_file_is_cut_at_its_record_and_a_big_files_header_is_a_chunk_of_its_own(
    harness: Harness,
) -> None:
    _random_file(harness.uploads / "big.bin", 2 * MiB)
    (harness.uploads / "small.txt").write_text("small")
    taken = harness.backup()
    tar = harness.payload(taken)
    members = {m.name: m for m in _members(tar)}
    big, small = members["uploads/big.bin"], members["uploads/small.txt"]
    entries = list(harness.store().chunks_of(taken.record, taken.backup_id))[
        len(_parts(harness, taken)) :
    ]
    bounds, offset = set(), 0
    for entry in entries:
        bounds.add(offset)
        offset += entry.plain_length
    # Every record starts a chunk; the big file's content too, after its header alone.
    for member in (big, small):
        assert member.offset in bounds
    assert big.offset_data in bounds
    assert small.offset_data not in bounds  # a small file shares one chunk with its header
    assert offset == len(tar)


def _members(tar: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return archive.getmembers()


def _parts(harness: Harness, taken: Taken) -> list:
    from cosmic_backup.chunkstore.reader import open_chunk_list

    return open_chunk_list(harness.store(), taken.record, taken.backup_id).parts


def test_a_moved_file_and_a_chmod_reuse_the_contents_chunks(harness: Harness) -> None:
    _random_file(harness.uploads / "a" / "photo.jpg", 3 * MiB)
    _random_file(harness.uploads / "b" / "other.jpg", 2 * MiB)
    settle()
    first = harness.backup()
    (harness.uploads / "c").mkdir()
    (harness.uploads / "a" / "photo.jpg").rename(harness.uploads / "c" / "photo.jpg")
    (harness.uploads / "b" / "other.jpg").chmod(0o640)
    moved = harness.backup()
    assert moved.reused == 0  # the moved file has a new path, the other a new ctime
    # New: the two files' headers and the folders' (their mtimes changed); no content.
    assert moved.record.new_chunks <= 8, moved.record
    assert moved.record.added_bytes < 64 * 1024 < first.record.added_bytes // 50
    assert harness.payload(moved) == harness.plain_tar()
    assert harness.restored(moved) == tree_snapshot(harness.uploads)


def test_a_file_whose_mtime_goes_back_is_read_again_since_its_ctime_moved(
    harness: Harness,
) -> None:
    target = harness.uploads / "report.txt"
    target.write_bytes(b"version one " * 1000)
    (harness.uploads / "other.txt").write_text("unchanged")
    settle()
    harness.backup()
    before = target.stat()
    with target.open("r+b") as handle:  # same size, same mtime, other content
        handle.write(b"VERSION TWO!")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = target.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert after.st_ctime_ns != before.st_ctime_ns
    second = harness.backup()
    assert second.reused == 1  # other.txt only
    restored = harness.restores / second.backup_id / "uploads" / "report.txt"
    harness.restored(second)
    assert restored.read_bytes().startswith(b"VERSION TWO!")
    assert harness.payload(second) == harness.plain_tar()


def test_a_file_changed_while_read_is_not_cached_and_the_next_backup_reads_it(
    harness: Harness,
) -> None:
    growing = harness.uploads / "growing.log"
    _random_file(growing, 6 * MiB)
    (harness.uploads / "quiet.txt").write_text("quiet")
    settle()
    seen = [0]

    def rewrite_midway(size: int) -> None:  # a real write to the file while it is read
        seen[0] += size
        if seen[0] >= 2 * MiB and seen[0] - size < 2 * MiB:
            with growing.open("r+b") as handle:
                handle.seek(4 * MiB)
                handle.write(b"written during the backup")

    first = harness.backup(on_progress=rewrite_midway)
    assert any("growing.log changed while it was read" in w for w in first.warnings)
    assert harness.cached_paths() == {"uploads/quiet.txt"}  # no entry that could lie
    second = harness.backup()
    assert second.reused == 1  # quiet.txt; growing.log read again
    harness.restored(second)
    restored = harness.restores / second.backup_id / "uploads" / "growing.log"
    assert restored.read_bytes() == growing.read_bytes()


def test_a_file_changed_just_before_the_backup_is_read_but_not_cached(harness: Harness) -> None:
    (harness.uploads / "old.txt").write_text("old")
    settle()
    harness.backup()
    fresh = harness.uploads / "fresh.txt"
    fresh.write_text("written in the backup's second")
    second = harness.backup()
    assert second.reused == 1
    assert harness.cached_paths() == {"uploads/old.txt"}
    settle()
    third = harness.backup()
    assert third.reused == 1 and harness.cached_paths() == {"uploads/old.txt", "uploads/fresh.txt"}
    assert harness.backup().reused == 2


def test_deleted_files_are_absent_and_changed_ones_rechunked(harness: Harness) -> None:
    for number in range(100):
        _random_file(harness.uploads / f"{number % 10}" / f"f{number:03d}.bin", 300 * 1024)
    settle()
    first = harness.backup()
    (harness.uploads / "3" / "f013.bin").unlink()
    _random_file(harness.uploads / "4" / "f014.bin", 300 * 1024)  # 1% of the files changed
    second = harness.backup()
    assert second.reused == 98
    names = {m.name for m in _members(harness.payload(second))}
    assert "uploads/3/f013.bin" not in names and "uploads/4/f014.bin" in names
    assert "uploads/3/f013.bin" not in harness.cached_paths()
    ratio = second.record.added_bytes / first.record.added_bytes
    assert 0.005 < ratio < 0.015, ratio  # 1% changed adds about 1%
    assert harness.restored(second) == tree_snapshot(harness.uploads)


def test_force_read_reads_every_file_and_adds_nothing(harness: Harness) -> None:
    _mixed_tree(harness.uploads)
    settle()
    harness.backup()
    forced = harness.backup(use_cache=False)
    assert forced.reused == 0
    assert (forced.record.new_chunks, forced.record.new_packs) == (0, 0)
    assert harness.backup().reused == 7  # and the cache it wrote serves the next one


def test_a_chunk_missing_from_the_store_makes_the_file_read_again(harness: Harness) -> None:
    _random_file(harness.uploads / "photo.jpg", 2 * MiB)
    settle()
    harness.backup()
    for pack in (harness.backups / "store" / "packs").glob("*/*"):
        pack.unlink()  # lost, or pruned: the cache's chunks are no longer stored
    second = harness.backup()
    assert second.reused == 0 and second.record.new_chunks >= 2
    assert harness.restored(second) == tree_snapshot(harness.uploads)


def test_the_cache_is_private_and_a_damaged_one_only_costs_a_full_read(harness: Harness) -> None:
    _mixed_tree(harness.uploads)
    settle()
    harness.backup()
    path = cache_path(harness.store().layout, "files")
    assert (path.stat().st_mode & 0o777) == 0o600
    path.write_bytes(b"not a database at all" * 100)
    damaged = harness.backup()
    assert damaged.reused == 0 and damaged.record.new_chunks == 0
    assert harness.restored(damaged) == tree_snapshot(harness.uploads)
    assert harness.backup().reused == 7  # rebuilt
    assert (path.stat().st_mode & 0o777) == 0o600


def test_a_failed_backup_keeps_the_old_cache_and_leaves_no_new_one(harness: Harness) -> None:
    (harness.uploads / "kept.txt").write_text("kept")
    settle()
    harness.backup()
    store = harness.store()
    path = cache_path(store.layout, "files")
    before = path.read_bytes()
    cache = FilesCache(store.layout, "files", LOG)  # a backup that then fails
    new = path.with_name(path.name + ".new")
    assert new.is_file() and (new.stat().st_mode & 0o777) == 0o600
    cache.discard()
    assert path.read_bytes() == before and not new.exists()
    FilesCache(store.layout, "files", LOG)  # killed: its .new stays...
    FilesCache(store.layout, "files", LOG).discard()  # ...until the next backup starts
    assert not new.exists() and path.read_bytes() == before


@pytest.mark.slow
def test_a_big_file_round_trips_and_an_append_adds_only_its_tail(harness: Harness) -> None:
    big = harness.uploads / "video.mp4"
    _random_file(big, 60 * MiB + 123)
    settle()
    first = harness.backup()
    assert first.record.chunks > 30  # cut by CDC inside the file, ~1 MiB chunks
    with big.open("ab") as handle:
        handle.write(os.urandom(100_000))
    appended = harness.backup()
    assert appended.reused == 0
    assert appended.record.added_bytes < 6 * MiB  # the last chunks, not the whole file
    assert harness.payload(appended) == harness.plain_tar()
    assert harness.restored(appended) == tree_snapshot(harness.uploads)
