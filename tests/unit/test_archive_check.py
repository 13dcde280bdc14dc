"""Restore tests of archives: each member as the archive has it, compared with the disk."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from cosmic_backup.components.archive import safe_extract
from cosmic_backup.components.archive_check import ArchiveDigests, compare_with_disk


def archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data, mode in (("up/a.txt", b"alpha", 0o644), ("up/run.sh", b"#!", 0o750)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("up/latest")
        link.type, link.linkname = tarfile.SYMTYPE, "a.txt"
        tar.addfile(link)
    return buffer.getvalue()


def extracted(tmp_path: Path) -> tuple[Path, ArchiveDigests]:
    digests = ArchiveDigests(io.BufferedReader(io.BytesIO(archive())))  # type: ignore[arg-type]
    with digests:
        safe_extract(io.BufferedReader(digests), tmp_path / "out")  # type: ignore[arg-type]
    digests.finish()
    return tmp_path / "out", digests


def test_a_faithful_extraction_has_no_differences(tmp_path: Path) -> None:
    root, digests = extracted(tmp_path)
    assert compare_with_disk(digests.members, root) == []
    assert digests.members.by_kind == {"file": 2, "link": 1}


def test_content_mode_link_and_missing_files_are_each_named(tmp_path: Path) -> None:
    root, digests = extracted(tmp_path)
    (root / "up" / "a.txt").write_bytes(b"ALPHA")  # same size, other bytes
    (root / "up" / "run.sh").chmod(0o700)
    (root / "up" / "latest").unlink()
    (root / "up" / "latest").symlink_to("run.sh")
    problems = compare_with_disk(digests.members, root)
    assert problems == [
        "up/a.txt: SHA-256 differs from the archive's",
        "up/run.sh: mode 700, archive 750",
        "up/latest: links to run.sh, not a.txt",
    ]
    (root / "up" / "a.txt").unlink()
    assert "up/a.txt is missing" in compare_with_disk(digests.members, root)
