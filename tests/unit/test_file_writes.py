"""Restored files are written by a few threads: the content, owners, modes and times come
out as with one thread, memory stays under the cap, a writer's error names its file and
is raised, and nothing is left open or still being written once the extraction returns."""

from __future__ import annotations

import errno
import io
import os
import random
import tarfile
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from cosmic_backup.components.archive import UnsafeArchive, safe_extract
from cosmic_backup.components.file_writes import INLINE_BELOW, PIECE, ParallelWrites

MIB = 1024 * 1024
FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def archive(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def file(name: str, data: bytes, mode: int = 0o640, mtime: int = 1_700_000_000) -> tuple:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, mtime
    return info, data


def test_many_files_large_and_small_come_out_exact(tmp_path: Path) -> None:
    rng = random.Random(5)
    sizes = [0, 1, 511, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE + 7] + [4096] * 200
    members = [
        file(
            f"tree/{index % 7}/f{index}",
            rng.randbytes(size),
            0o600 + index % 64,
            1_600_000_000 + index,
        )
        for index, size in enumerate(sizes)
    ]
    link = tarfile.TarInfo("tree/hard")
    link.type, link.linkname = tarfile.LNKTYPE, "tree/5/f5"
    before = open_fds()
    stats = safe_extract(io.BytesIO(archive([*members, (link, b"")])), tmp_path / "out")
    assert stats.files == len(sizes)
    for info, data in members:
        path = tmp_path / "out" / info.name
        assert path.read_bytes() == data, info.name
        assert path.stat().st_mode & 0o7777 == info.mode
        assert path.stat().st_mtime == info.mtime
    assert (tmp_path / "out/tree/hard").read_bytes() == members[5][1]
    assert open_fds() == before


def test_an_unsafe_member_after_files_leaves_nothing_being_written(tmp_path: Path) -> None:
    members = [file(f"a/f{index}", bytes(2 * PIECE + index)) for index in range(20)]
    evil = tarfile.TarInfo("../escape")
    before = open_fds()
    with pytest.raises(UnsafeArchive):
        safe_extract(io.BytesIO(archive([*members, file(evil.name, b"x")])), tmp_path / "out")
    sizes = {path.name: path.stat().st_size for path in (tmp_path / "out/a").iterdir()}
    time.sleep(0.2)  # were a writer still at work, a size would change now
    assert {path.name: path.stat().st_size for path in (tmp_path / "out/a").iterdir()} == sizes
    assert sizes == {f"f{index}": 2 * PIECE + index for index in range(20)}
    assert open_fds() == before
    assert not (tmp_path / "escape").exists()


def test_bytes_in_flight_stay_under_the_cap(tmp_path: Path) -> None:
    """Writers that cannot keep up make the extracting thread wait, not memory grow."""
    cap, release = 8 * MIB, threading.Event()
    writes = ParallelWrites(workers=2, cap=cap)
    handed = []

    def finish(_fd: int) -> None:
        release.wait(10)  # a slow disk

    def extract() -> None:
        for index in range(40):
            create = partial(os.open, tmp_path / f"f{index}", FLAGS, 0o600)
            writes.write_file(
                tmp_path / f"f{index}", create, io.BytesIO(bytes(MIB)).read, MIB, finish
            )
            handed.append(index)

    thread = threading.Thread(target=extract)
    thread.start()
    time.sleep(0.5)
    assert len(handed) <= cap // MIB  # waiting for room, 32 MiB not queued up
    release.set()
    thread.join(10)
    writes.drain()
    assert len(handed) == 40
    assert all((tmp_path / f"f{index}").stat().st_size == MIB for index in range(40))


@pytest.mark.parametrize("size", [4, INLINE_BELOW])  # written here, and by a writer
def test_a_writers_error_is_raised_with_its_file_and_every_fd_closed(
    tmp_path: Path, size: int
) -> None:
    writes = ParallelWrites()
    before = open_fds()

    def broken(_fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    def extract() -> None:  # as safe_extract does it: the error comes at the next call
        try:
            for index, finish in enumerate([lambda _fd: None, broken, lambda _fd: None]):
                path = tmp_path / f"f{index}"
                create = partial(os.open, path, FLAGS, 0o600)
                writes.write_file(path, create, io.BytesIO(bytes(size)).read, size, finish)
                time.sleep(0.1)
        except BaseException:
            writes.drain(raise_errors=False)
            raise
        writes.drain()

    with pytest.raises(OSError) as raised:
        extract()
    assert raised.value.errno == errno.EIO
    assert raised.value.filename == str(tmp_path / "f1")
    assert open_fds() == before


def test_a_hard_link_right_after_its_file_finds_it_created(tmp_path: Path) -> None:
    """Files are created by the writers: a link to one waits until it exists."""
    members: list[tuple[tarfile.TarInfo, bytes]] = []
    for index in range(50):
        members.append(file(f"f{index}", bytes([index]) * (PIECE - index)))
        link = tarfile.TarInfo(f"l{index}")
        link.type, link.linkname = tarfile.LNKTYPE, f"f{index}"
        members.append((link, b""))
    safe_extract(io.BytesIO(archive(members)), tmp_path / "out")
    for index in range(50):
        linked = tmp_path / "out" / f"l{index}"
        assert linked.read_bytes() == bytes([index]) * (PIECE - index)
        assert linked.stat().st_ino == (tmp_path / "out" / f"f{index}").stat().st_ino
