"""The shared tar module: faithful round trips, and refusal of every unsafe member."""

from __future__ import annotations

import io
import logging
import os
import stat
import tarfile
from pathlib import Path

import pytest

from cosmic_backup.components.archive import (
    TarWriter,
    UnsafeArchive,
    list_members,
    safe_extract,
)
from tests.trees import tree_snapshot

LOG = logging.getLogger("test")


def make_tree(root: Path) -> None:
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "nested" / "deeper" / "b.bin").write_bytes(os.urandom(70_000))
    (root / "héllo wörld.txt").write_text("unicode and spaces")
    private = root / "private.txt"
    private.write_text("secret")
    private.chmod(0o600)
    os.utime(private, (1_000_000_000, 1_000_000_000))
    (root / "link-to-b").symlink_to("nested/deeper/b.bin")
    (root / "nested" / "up").symlink_to("../private.txt")


def archive_of(root: Path, name: str = "tree") -> bytes:
    out = io.BytesIO()
    with TarWriter(out, LOG) as tar:
        tar.add_tree(root, name)
    return out.getvalue()


def test_round_trip_keeps_content_modes_times_and_links(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    make_tree(source)
    data = archive_of(source)
    stats = safe_extract(io.BytesIO(data), tmp_path / "out")
    assert tree_snapshot(tmp_path / "out" / "tree") == tree_snapshot(source)
    assert stats.links == 2 and stats.files == 3
    assert list_members(io.BytesIO(data)).files == 3


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


def tar_with(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    return info


MALICIOUS = {
    "absolute path": [(member("/tmp/evil"), b"x")],
    "dot-dot": [(member("ok/../../evil"), b"x")],
    "absolute symlink": [(member("link", tarfile.SYMTYPE, "/etc"), None)],
    "escaping symlink": [(member("link", tarfile.SYMTYPE, "../../.."), None)],
    "write through a symlink": [
        (member("dir", tarfile.SYMTYPE, "."), None),  # harmless on its own...
        (member("dir/x"), b"x"),  # ...but nothing may be written through it
    ],
    "hard link outside": [(member("passwd", tarfile.LNKTYPE, "/etc/passwd"), None)],
    "hard link to nothing extracted": [(member("h", tarfile.LNKTYPE, "later"), None)],
    "character device": [(member("null", tarfile.CHRTYPE), None)],
    "block device": [(member("sda", tarfile.BLKTYPE), None)],
    "fifo": [(member("pipe", tarfile.FIFOTYPE), None)],
    "duplicate overwrite": [(member("a"), b"1"), (member("a"), b"2")],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_members_are_refused_and_nothing_escapes(tmp_path: Path, case: str) -> None:
    data = tar_with(*MALICIOUS[case])
    outside_before = sorted(p.name for p in tmp_path.iterdir())
    staging = tmp_path / "staging"
    with pytest.raises(UnsafeArchive) as refused:
        safe_extract(io.BytesIO(data), staging)
    bad_name = MALICIOUS[case][-1][0].name
    assert f"'{bad_name}'" in refused.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*outside_before, "staging"])
    assert not Path("/tmp/evil").exists()
    if case not in ("write through a symlink", "duplicate overwrite"):
        with pytest.raises(UnsafeArchive):
            list_members(io.BytesIO(data))


def test_internal_links_and_hard_links_are_allowed(tmp_path: Path) -> None:
    data = tar_with(
        (member("a/file"), b"content"),
        (member("a/link", tarfile.SYMTYPE, "file"), None),
        (member("b", tarfile.SYMTYPE, "a/../a/file"), None),
        (member("hard", tarfile.LNKTYPE, "a/file"), None),
    )
    safe_extract(io.BytesIO(data), tmp_path / "out")
    assert (tmp_path / "out" / "hard").read_bytes() == b"content"
    assert (tmp_path / "out" / "a" / "link").read_bytes() == b"content"


def test_setuid_bits_are_dropped(tmp_path: Path) -> None:
    info = member("tool")
    info.mode = 0o4755
    safe_extract(io.BytesIO(tar_with((info, b"#!/bin/sh\n"))), tmp_path / "out")
    assert stat.S_IMODE((tmp_path / "out" / "tool").stat().st_mode) == 0o755


def test_extraction_needs_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "existing").write_text("keep")
    with pytest.raises(Exception, match="not empty"):
        safe_extract(io.BytesIO(tar_with((member("a"), b"1"))), tmp_path / "out")
    assert (tmp_path / "out" / "existing").read_text() == "keep"
