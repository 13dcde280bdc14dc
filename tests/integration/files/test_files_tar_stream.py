"""The files archive is written without tarfile's stream (1 MiB reads straight through):
it must stay byte for byte what ``tarfile.open(mode="w|")`` writes for the same members."""

from __future__ import annotations

import io
import logging
import os
import tarfile
from pathlib import Path

from cosmic_backup.components.tar_writer import COPY_CHUNK, TarWriter

SIZES = [0, 1, 511, 512, 513, 10240, COPY_CHUNK - 1, COPY_CHUNK, COPY_CHUNK + 1, 3 * COPY_CHUNK + 7]


def make_tree(root: Path) -> None:
    deep = root / "sub" / ("é" * 60) / ("x" * 120)  # PAX headers: non-ASCII, long names
    deep.mkdir(parents=True)
    for size in SIZES:
        (root / f"f{size}").write_bytes(os.urandom(size))
    (deep / "note.txt").write_text("hello\n")
    (root / "link").symlink_to("f1")


def test_the_archive_is_what_tarfile_writes_for_the_same_members(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree")
    ours = io.BytesIO()
    with TarWriter(ours, logging.getLogger("test")) as writer:
        writer.add_tree(tmp_path / "tree", "tree")
    assert writer.stats.files == len(SIZES) + 1
    theirs = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(ours.getvalue()), mode="r|") as source,
        tarfile.open(fileobj=theirs, mode="w|", format=tarfile.PAX_FORMAT) as copy,
    ):
        for member in source:
            data = source.extractfile(member) if member.isreg() else None
            copy.addfile(member, data)
    assert len(ours.getvalue()) % tarfile.RECORDSIZE == 0
    assert ours.getvalue() == theirs.getvalue()
