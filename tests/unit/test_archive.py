"""The shared tar module: faithful round trips and what the writer reports.

Refusal of crafted archives is in test_archive_safety.py.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path, PurePosixPath

import pytest

from cosmic_backup.components.archive import (
    TarWriter,
    UnsafeArchive,
    _ExactReader,
    _ForwardReader,
    list_members,
    safe_extract,
)
from cosmic_backup.errors import IntegrityError
from tests.trees import tree_snapshot

LOG = logging.getLogger("test")


def make_tree(root: Path) -> None:
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "nested" / "deeper" / "b.bin").write_bytes(os.urandom(70_000))
    (root / "héllo wörld.txt").write_text("unicode and spaces")
    (root / os.fsdecode(b"not-utf8-\xff.txt")).write_text("bytes a browser sent")
    private = root / "private.txt"
    private.write_text("secret")
    private.chmod(0o600)
    os.utime(private, (1_000_000_000, 1_000_000_000))
    (root / "nested" / "deeper").chmod(0o750)
    os.utime(root / "nested", (1_100_000_000, 1_100_000_000))
    (root / "link-to-b").symlink_to("nested/deeper/b.bin")
    (root / "nested" / "up").symlink_to("../private.txt")
    (root / "dangling").symlink_to("nothing-here")


def archive_of(root: Path, name: str = "tree") -> tuple[bytes, TarWriter]:
    out = io.BytesIO()
    with TarWriter(out, LOG) as tar:
        tar.add_tree(root, name)
    return out.getvalue(), tar


def test_round_trip_keeps_content_modes_times_and_links(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    make_tree(source)
    data, writer = archive_of(source)
    assert writer.stats.warnings == [] and writer.stats.unreadable == []
    assert (writer.stats.files, writer.stats.links, writer.stats.folders) == (4, 3, 4)
    stats = safe_extract(io.BytesIO(data), tmp_path / "out")
    assert tree_snapshot(tmp_path / "out" / "tree") == tree_snapshot(source)
    assert (stats.files, stats.links, stats.folders) == (4, 3, 4)
    assert stats.bytes == writer.stats.bytes == 70_000 + 18 + 20 + 6
    assert list_members(io.BytesIO(data)) == stats


def test_members_are_sorted_and_relative(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for name in ("b", "a", "c/z", "c/y"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(name)
    data, _ = archive_of(source, "uploads")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    assert names == ["uploads", "uploads/a", "uploads/b", "uploads/c", "uploads/c/y", "uploads/c/z"]


def test_a_single_file_and_in_memory_bytes(tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text("one")
    out = io.BytesIO()
    with TarWriter(out, LOG) as tar:
        tar.add_tree(tmp_path / "one.txt", "files/one.txt")
        tar.add_bytes("environment.env", b"A=1\n")
    safe_extract(io.BytesIO(out.getvalue()), tmp_path / "out")
    assert (tmp_path / "out" / "files" / "one.txt").read_text() == "one"
    env = tmp_path / "out" / "environment.env"
    assert env.read_bytes() == b"A=1\n"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600


def test_links_leaving_the_archive_are_reported_not_stored(tmp_path: Path) -> None:
    """A restore would refuse them, so storing them would make the backup unrestorable."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "shared").symlink_to("/mnt/shared")
    (source / "sibling").symlink_to("../static/logo.png")  # the next folder: allowed
    (source / "far").symlink_to("../../etc/passwd")
    data, writer = archive_of(source, "uploads")
    assert writer.stats.links == 1
    assert sorted(w.split(" ")[0] for w in writer.stats.warnings) == [
        "uploads/far",
        "uploads/shared",
    ]
    assert all("not stored" in w for w in writer.stats.warnings)
    safe_extract(io.BytesIO(data), tmp_path / "out")
    assert os.readlink(tmp_path / "out" / "uploads" / "sibling") == "../static/logo.png"


def test_writer_reports_vanished_and_skips_fifos(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    os.mkfifo(source / "pipe")
    out = io.BytesIO()
    with TarWriter(out, LOG) as tar:
        tar.add_tree(source, "tree")
        tar.add_tree(tmp_path / "missing", "missing")
    assert any("pipe" in w and "FIFO" in w for w in tar.stats.warnings)
    assert any("missing vanished" in w for w in tar.stats.warnings)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as stored:
        assert stored.getnames() == ["tree"]


def test_a_file_that_shrinks_or_grows_keeps_the_stream_well_formed(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    with path.open("rb", buffering=0) as handle:
        reader = _ExactReader(handle, 150)  # "stat" said 150, the file now has 100
        assert reader.read(1000) == b"x" * 100 + b"\0" * 50
        assert reader.changed
    with path.open("rb", buffering=0) as handle:
        reader = _ExactReader(handle, 60)  # it grew past what the header promised
        assert reader.read(1000) == b"x" * 60 and reader.read(10) == b""
        assert not reader.changed


def test_a_folder_swapped_for_a_link_while_walking_is_not_followed(tmp_path: Path) -> None:
    source, outside = tmp_path / "src", tmp_path / "outside"
    (source / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("must not be backed up")

    class Racing(TarWriter):
        def _add_folder(
            self, walk: list, parent: int | None, name: str, arcname: str, info: os.stat_result
        ) -> None:
            if arcname == "tree/sub":  # between lstat and open, as an attacker would
                (source / "sub").rmdir()
                (source / "sub").symlink_to(outside)
            super()._add_folder(walk, parent, name, arcname, info)

    out = io.BytesIO()
    with Racing(out, LOG) as tar:
        tar.add_tree(source, "tree")
    assert b"must not be backed up" not in out.getvalue()
    assert tar.stats.warnings == ["tree/sub changed while it was read; skipped"]


def test_files_vanishing_or_changing_mid_backup_are_reported(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("a-vanishes", "b-grows", "c-stays"):
        (source / name).write_bytes(b"x" * 1000)

    class Racing(TarWriter):
        def _add_entry(
            self, walk: list, parent: int | None, name: str, arcname: str
        ) -> None:  # listed, then deleted before it is looked at
            if name == "a-vanishes":
                (source / name).unlink()
            super()._add_entry(walk, parent, name, arcname)

        def _addfile(self, member: tarfile.TarInfo, content: object = None) -> None:
            if member.name == "tree/b-grows":  # written to while it is being read
                with (source / "b-grows").open("ab") as handle:
                    handle.write(b"y" * 500)
            super()._addfile(member, content)

    out = io.BytesIO()
    with Racing(out, LOG) as tar:
        tar.add_tree(source, "tree")
    assert tar.stats.warnings == [
        "tree/a-vanishes vanished before it was read",
        "tree/b-grows changed while it was read; the copy may be inconsistent",
    ]
    assert tar.stats.files == 2
    safe_extract(io.BytesIO(out.getvalue()), tmp_path / "out")
    assert (tmp_path / "out" / "tree" / "b-grows").read_bytes() == b"x" * 1000  # as stat said


def test_hard_linked_sources_become_two_files(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_text("same inode")
    os.link(source / "a", source / "b")
    data, _ = archive_of(source)
    safe_extract(io.BytesIO(data), tmp_path / "out")
    assert (tmp_path / "out" / "tree" / "b").read_text() == "same inode"


def test_read_only_folders_are_restored_with_their_content(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "locked").mkdir(parents=True)
    (source / "locked" / "inside.txt").write_text("in")
    (source / "locked").chmod(0o555)
    data, _ = archive_of(source)
    safe_extract(io.BytesIO(data), tmp_path / "out")
    locked = tmp_path / "out" / "tree" / "locked"
    assert (locked / "inside.txt").read_text() == "in"
    assert stat.S_IMODE(locked.stat().st_mode) == 0o555


class _Trickle(io.RawIOBase):
    """A stream that returns what it is asked for in short, uneven reads, as a pipe or
    a chunk reader may, and counts them."""

    def __init__(self, data: bytes, longest: int) -> None:
        self._data = memoryview(data)
        self._longest = longest
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self.reads += 1
        size = min(len(buffer), self._longest - self.reads % 7, len(self._data))
        buffer[:size] = self._data[:size]
        self._data = self._data[size:]
        return size


def test_short_reads_of_the_source_extract_the_same_tree(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    make_tree(source)
    data, _ = archive_of(source)
    stats = safe_extract(_Trickle(data, longest=9), tmp_path / "out")
    assert tree_snapshot(tmp_path / "out" / "tree") == tree_snapshot(source)
    assert list_members(_Trickle(data, longest=9)) == stats


def test_a_files_content_is_read_in_a_few_large_reads(tmp_path: Path) -> None:
    # tarfile's stream mode pulled 10 KiB records, a hundred calls per MiB and a join of
    # them all: a third of a restore's extracting thread.
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    data, _ = archive_of(tmp_path / "src")
    trickle = _Trickle(data, longest=len(data))
    safe_extract(trickle, tmp_path / "out")
    assert (tmp_path / "out" / "tree" / "big.bin").read_bytes() == (
        tmp_path / "src" / "big.bin"
    ).read_bytes()
    assert trickle.reads < 40


def test_the_tar_reader_only_goes_forward() -> None:
    reader = _ForwardReader(io.BytesIO(bytes(range(200))))
    assert reader.read(10) == bytes(range(10)) and reader.tell() == 10
    assert reader.seek(50) == 50 and reader.read(1) == b"\x32"
    with pytest.raises(tarfile.ReadError, match="go back"):
        reader.seek(20)
    assert reader.seek(500) == 200 and reader.read(5) == b""


def test_a_damaged_stream_is_an_integrity_error(tmp_path: Path) -> None:
    garbage = io.BytesIO(b"not a tar archive at all" * 100)
    with pytest.raises(IntegrityError, match="damaged"):
        safe_extract(garbage, tmp_path / "out")
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_bytes(os.urandom(5000))
    data, _ = archive_of(source)
    with pytest.raises(IntegrityError, match="damaged"):
        list_members(io.BytesIO(data[:3000]))


def _two_members(first_size_field: bytes | None = None) -> bytearray:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, content in (("tree/x", b"abc"), ("tree/y", b"def")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    data = bytearray(out.getvalue())
    if first_size_field is not None:
        data[124:136] = first_size_field
        data[148:156] = b" " * 8
        data[148:156] = b"%06o\0 " % sum(data[:512])
    return data


@pytest.mark.parametrize("reader", ["extract", "list"])
def test_a_header_that_cannot_be_parsed_mid_archive_is_damage_not_the_end(
    tmp_path: Path, reader: str
) -> None:
    # tarfile ends its iteration silently at such a header: without the check of what
    # follows, the restore reported one file where the archive holds two.
    data = _two_members()
    data[1024 + 148] ^= 0x01  # the second header's checksum
    with pytest.raises(IntegrityError, match="data after its end marker"):
        if reader == "extract":
            safe_extract(io.BytesIO(bytes(data)), tmp_path / "out")
        else:
            list_members(io.BytesIO(bytes(data)))
    intact = _two_members()
    assert list_members(io.BytesIO(bytes(intact))).files == 2


def test_a_negative_size_is_refused(tmp_path: Path) -> None:
    # Base-256 size fields can say -1: stream mode looped on it for ever, and "r:" mode
    # read the content as the next header and stopped.
    data = bytes(_two_members(first_size_field=b"\xff" * 12))
    with pytest.raises(UnsafeArchive, match="size is negative"):
        safe_extract(io.BytesIO(data), tmp_path / "out")
    with pytest.raises(UnsafeArchive, match="size is negative"):
        list_members(io.BytesIO(data))
    assert list((tmp_path / "out").iterdir()) == []


def test_a_full_disk_while_extracting_is_one_sentence(tmp_path: Path) -> None:
    """RLIMIT_FSIZE stands in for a full disk: the write fails with EFBIG, in a child."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "big").write_bytes(os.urandom(200_000))
    data, _ = archive_of(source)
    (tmp_path / "archive.tar").write_bytes(data)
    script = f"""
import resource, signal, sys
from pathlib import Path, PurePosixPath
from cosmic_backup.components.archive import safe_extract
from cosmic_backup.errors import OperationFailed
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
try:
    safe_extract(open({str(tmp_path / "archive.tar")!r}, "rb"), Path({str(tmp_path / "out")!r}))
except OperationFailed as exc:
    print(exc.message)
    sys.exit(3)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 3, result.stderr
    assert "Extracting the backup into" in result.stdout
    assert "File too large" in result.stdout


def test_excluded_paths_are_left_out_by_identity(tmp_path: Path) -> None:
    """A hard link or another spelling of an excluded file is still the same file."""
    source = tmp_path / "src"
    (source / "logs").mkdir(parents=True)
    (source / "logs" / "today.log").write_text("log")
    (source / "key").write_text("secret")
    os.link(source / "key", source / "key-again")
    (source / "kept.txt").write_text("kept")
    out = io.BytesIO()
    with TarWriter(
        out, LOG, exclude=[source / "logs", tmp_path / "src" / ".." / "src" / "key"]
    ) as tar:
        tar.add_tree(source, "tree")
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as archive:
        assert archive.getnames() == ["tree", "tree/kept.txt"]
    assert sorted(tar.stats.excluded) == ["tree/key", "tree/key-again", "tree/logs"]


def test_extraction_skips_members_at_the_given_places(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "backups" / "files").mkdir(parents=True)
    (source / "backups" / "files" / "old.enc").write_text("an old backup")
    (source / "backups-not").mkdir()
    (source / "photo.jpg").write_text("photo")
    os.link(source / "backups" / "files" / "old.enc", source / "hard")
    out = io.BytesIO()
    with TarWriter(out, LOG) as tar:
        tar.add_tree(source, "tree")
    dest = tmp_path / "out"
    safe_extract(io.BytesIO(out.getvalue()), dest, skip=[PurePosixPath("tree/backups")])
    found = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert found == ["tree", "tree/backups-not", "tree/hard", "tree/photo.jpg"]
