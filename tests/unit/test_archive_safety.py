"""The shared tar module refuses every unsafe member, alone or in combination."""

from __future__ import annotations

import errno
import io
import os
import stat
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cosmic_backup.components.archive import UnsafeArchive, list_members, safe_extract


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
    "link over a folder": [(member("d/f"), b"1"), (member("d", tarfile.SYMTYPE, "d2"), None)],
    "file under a file": [(member("f"), b"1"), (member("f/g"), b"2")],
    # Each link stays inside on its own; followed through one another they leave.
    "escaping link chain": [
        (member("a/b/s", tarfile.SYMTYPE, "../.."), None),
        (member("t", tarfile.SYMTYPE, "a/b/s/../../victim"), None),
    ],
    "escaping chain through a later link": [
        (member("t", tarfile.SYMTYPE, "x/../.."), None),
        (member("x", tarfile.SYMTYPE, "a/b/c"), None),  # makes x/.. mean a/b, not .
        (member("a/b/c", tarfile.DIRTYPE), None),
        (member("z", tarfile.SYMTYPE, "t/../../.."), None),
    ],
    "folder over a link": [
        (member("a/b/s", tarfile.SYMTYPE, "../.."), None),
        (member("t", tarfile.SYMTYPE, "a/b/s/../../victim"), None),
        (member("t", tarfile.DIRTYPE), None),  # its mode would land on the link's target
    ],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_members_are_refused_and_nothing_escapes(tmp_path: Path, case: str) -> None:
    data = tar_with(*MALICIOUS[case])
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    staging = tmp_path / "deep" / "staging"
    with pytest.raises(UnsafeArchive) as refused:
        safe_extract(io.BytesIO(data), staging)
    assert "was refused" in refused.value.message
    assert any(f"'{info.name}'" in refused.value.message for info, _ in MALICIOUS[case])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "victim"]
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["staging"]
    assert list(victim.iterdir()) == [] and stat.S_IMODE(victim.stat().st_mode) == 0o700
    assert not Path("/tmp/evil").exists()
    assert not any(p.is_symlink() for p in staging.rglob("*"))  # links come last, if at all
    with pytest.raises(UnsafeArchive):  # verify refuses exactly what extraction refuses
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


@pytest.mark.parametrize("restore_owner", [False, True])
def test_setuid_bits_are_dropped(tmp_path: Path, restore_owner: bool) -> None:
    """Even when owners are restored (a files restore as root, by default)."""
    info = member("tool")
    info.mode = 0o6755
    data = tar_with((info, b"#!/bin/sh\n"))
    safe_extract(io.BytesIO(data), tmp_path / "out", restore_owner=restore_owner)
    assert stat.S_IMODE((tmp_path / "out" / "tool").stat().st_mode) == 0o755


def test_extraction_needs_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "existing").write_text("keep")
    with pytest.raises(Exception, match="not empty"):
        safe_extract(io.BytesIO(tar_with((member("a"), b"1"))), tmp_path / "out")
    assert (tmp_path / "out" / "existing").read_text() == "keep"


def test_internal_link_chains_and_loops_are_allowed(tmp_path: Path) -> None:
    data = tar_with(
        (member("a/b/file"), b"deep"),
        (member("a/b/up", tarfile.SYMTYPE, ".."), None),
        (member("chain", tarfile.SYMTYPE, "a/b/up/b/file"), None),
        (member("loop1", tarfile.SYMTYPE, "loop2"), None),
        (member("loop2", tarfile.SYMTYPE, "loop1"), None),
    )
    safe_extract(io.BytesIO(data), tmp_path / "out")
    assert (tmp_path / "out" / "chain").read_bytes() == b"deep"
    assert list_members(io.BytesIO(data)).links == 4


def test_names_are_shown_without_terminal_escapes(tmp_path: Path) -> None:
    data = tar_with((member("/evil\x1b[2Jname"), b"x"))
    with pytest.raises(UnsafeArchive) as refused:
        safe_extract(io.BytesIO(data), tmp_path / "out")
    assert "\x1b" not in refused.value.message
    assert "/evil\\x1b[2Jname" in refused.value.message


# Small alphabets make hypothesis find the combinations that matter: "..", ".", empty
# parts, absolute paths, links to links, links over folders, hard links.
PARTS = st.sampled_from(["a", "b", "..", ".", ""])
PATHS = st.lists(PARTS, min_size=1, max_size=4).map("/".join)
KINDS = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE])
MEMBERS = st.lists(st.tuples(KINDS, PATHS, PATHS), max_size=7)


def _leads_outside(link: str, root: str) -> bool:
    """The kernel's verdict: a loop leads nowhere, a dangling link where it would go."""
    try:
        real = os.path.realpath(link, strict=True)
    except (FileNotFoundError, NotADirectoryError):  # dangling: judged by where it points
        real = os.path.realpath(link)
    except OSError as exc:
        assert exc.errno == errno.ELOOP
        return False
    return not (real == root or real.startswith(root + os.sep))


@settings(max_examples=300, deadline=None)
@given(MEMBERS)
@example([(tarfile.SYMTYPE, "a", "a//a")])  # a loop: harmless, allowed
@example([(tarfile.SYMTYPE, "a/b/s", "../.."), (tarfile.SYMTYPE, "t", "a/b/s/../../x")])
def test_whatever_the_members_nothing_lands_or_points_outside(
    members: list[tuple[bytes, str, str]],
) -> None:
    data = tar_with(
        *[
            (member(name, kind, link), b"x" if kind == tarfile.REGTYPE else None)
            for kind, name, link in members
        ]
    )
    with tempfile.TemporaryDirectory() as temp:
        base = Path(temp)
        (base / "victim").mkdir(mode=0o700)
        dest = base / "in" / "dest"
        try:
            safe_extract(io.BytesIO(data), dest)
            extracted = True
        except UnsafeArchive:
            extracted = False
        try:
            list_members(io.BytesIO(data))
            listed = True
        except UnsafeArchive:
            listed = False
        assert extracted == listed
        assert sorted(os.listdir(base)) == ["in", "victim"]
        assert os.listdir(base / "victim") == []
        assert stat.S_IMODE((base / "victim").stat().st_mode) == 0o700
        real_dest = os.path.realpath(dest)
        for folder, dirs, files in os.walk(dest):
            for name in dirs + files:
                path = os.path.join(folder, name)
                if os.path.islink(path):
                    assert not _leads_outside(path, real_dest), (path, os.readlink(path))
