"""The files component on its own: produce into memory, consume from it, kill it anywhere.

No encryption here (the CLI tests cover the whole line); real folders, real renames, a
real tmpfs mount point, and real SIGKILLs at every step of a restore.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cosmic_backup.components.archive import UnsafeArchive
from cosmic_backup.components.base import BackupRequest, RestoreRequest
from cosmic_backup.components.files import (
    FilesComponent,
    is_mount_point,
    recover_interrupted_restore,
)
from cosmic_backup.errors import NotConfigured, OperationFailed, UsageError
from cosmic_backup.format.manifest import TAG_PRE_RESTORE, Manifest
from cosmic_backup.settings import load_settings
from tests.trees import tree_snapshot

BACKUP_ID = "files-20261124T030000Z"


def component_in(root: Path, dirs: str = "static,uploads") -> FilesComponent:
    settings = load_settings(root, environ={"BACKUP_FILES_DIRS": dirs})
    return FilesComponent(settings, logging.getLogger("test.files"))


def settle(component: FilesComponent) -> None:
    """What the next command does first, under the lock: settle an interrupted restore."""
    recover_interrupted_restore(component.settings, component.log)


def backup_of(component: FilesComponent) -> tuple[bytes, Manifest]:
    out = io.BytesIO()
    produced = component.produce(out, BackupRequest())
    manifest = Manifest(
        BACKUP_ID, "files", "ok", "full", ["manual"], "", "", "0", source=produced.source.to_dict()
    )
    manifest.warnings = produced.warnings
    return out.getvalue(), manifest


def restore(component: FilesComponent, data: bytes, manifest: Manifest, target: str | None = None):
    plan = component.plan_restore(manifest, RestoreRequest(target=target))
    return plan, component.consume(io.BytesIO(data), manifest, plan)


def fill(folder: Path, variant: str) -> None:
    """Content that differs between variants in names, bytes, modes, times and links."""
    (folder / "nested" / "deeper").mkdir(parents=True, exist_ok=True)
    (folder / "empty").mkdir(exist_ok=True)
    (folder / "nested" / "deeper" / f"{variant}.bin").write_bytes(os.urandom(30_000))
    (folder / f"héllo {variant}.txt").write_text(variant)
    private = folder / "private.txt"
    private.write_text(f"secret {variant}")
    private.chmod(0o600 if variant == "old" else 0o640)
    os.utime(private, (946_684_800, 946_684_800))
    (folder / "latest").symlink_to(f"nested/deeper/{variant}.bin")
    os.utime(folder / "nested", (978_307_200, 978_307_200))


def empty(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def leftovers(*places: Path) -> list[str]:
    return sorted(p.name for place in places for p in place.iterdir() if ".cosmic-" in p.name)


def test_round_trip_of_two_folders(tmp_path: Path) -> None:
    for name in ("uploads", "static"):
        (tmp_path / name).mkdir()
        fill(tmp_path / name, "old")
    component = component_in(tmp_path)
    data, manifest = backup_of(component)
    source = manifest.source
    assert [f["name"] for f in source["folders"]] == ["static", "uploads"]
    assert source["files"] == 6 and source["links"] == 2 and source["unreadable"] == []
    assert source["bytes"] == sum(f["bytes"] for f in source["folders"])
    assert manifest.warnings == []
    before = {name: tree_snapshot(tmp_path / name) for name in ("uploads", "static")}
    empty(tmp_path / "uploads")
    fill(tmp_path / "uploads", "new")
    plan, report = restore(component, data, manifest)
    assert plan.safety_backup is not None and plan.safety_backup.tags == (TAG_PRE_RESTORE,)
    assert {name: tree_snapshot(tmp_path / name) for name in ("uploads", "static")} == before
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "tmp" / "backups" / ".files-restore.json").exists()
    assert report.details["files"] == 6
    assert not is_mount_point(tmp_path / "uploads")
    assert component.check_payload(io.BytesIO(data), manifest)["files"] == 6


def test_missing_folders_are_named(tmp_path: Path) -> None:
    component = component_in(tmp_path)
    with pytest.raises(NotConfigured, match=r"None of the file folders exist \(static, uploads\)"):
        component.check_configured()
    with pytest.raises(OperationFailed, match="static, uploads"):
        component.produce(io.BytesIO(), BackupRequest())
    (tmp_path / "uploads").mkdir()
    component.check_configured()
    _, manifest = backup_of(component)
    assert manifest.source["missing"] == ["static"]
    assert manifest.warnings == ["the folder static does not exist; not backed up"]


def test_two_folders_with_one_name_go_back_where_they_came_from(tmp_path: Path) -> None:
    (tmp_path / "uploads").mkdir()
    (tmp_path / "uploads" / "here.txt").write_text("project uploads")
    other = tmp_path / "mnt" / "uploads"
    other.mkdir(parents=True)
    (other / "there.txt").write_text("mounted uploads")
    data, manifest = backup_of(component_in(tmp_path, f"uploads,{other}"))
    assert [f["name"] for f in manifest.source["folders"]] == ["uploads", "uploads-2"]
    (tmp_path / "uploads" / "here.txt").write_text("changed")
    (other / "there.txt").write_text("changed")
    restore(component_in(tmp_path, f"{other},uploads"), data, manifest)  # order swapped
    assert (tmp_path / "uploads" / "here.txt").read_text() == "project uploads"
    assert (other / "there.txt").read_text() == "mounted uploads"


def test_a_folder_that_is_a_link_is_restored_through_it(tmp_path: Path) -> None:
    real = tmp_path / "data" / "uploads"
    real.mkdir(parents=True)
    (real / "a.txt").write_text("a")
    (tmp_path / "uploads").symlink_to(real)
    component = component_in(tmp_path, "uploads")
    data, manifest = backup_of(component)
    (real / "a.txt").write_text("changed")
    restore(component, data, manifest)
    assert (tmp_path / "uploads").is_symlink()
    assert (real / "a.txt").read_text() == "a"
    assert leftovers(tmp_path, real.parent) == []


def test_target_dir_leaves_the_live_folders_alone(tmp_path: Path) -> None:
    (tmp_path / "uploads").mkdir()
    fill(tmp_path / "uploads", "old")
    component = component_in(tmp_path, "uploads")
    data, manifest = backup_of(component)
    live = tree_snapshot(tmp_path / "uploads")
    plan, _ = restore(component, data, manifest, target="review")
    assert plan.safety_backup is None
    assert tree_snapshot(tmp_path / "review" / "uploads") == live
    with pytest.raises(UsageError, match="not empty"):
        component.plan_restore(manifest, RestoreRequest(target="review"))
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        component.plan_restore(manifest, RestoreRequest(target="a-file"))


def hostile_archive() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        good = tarfile.TarInfo("uploads/fine.txt")
        good.size = 4
        tar.addfile(good, io.BytesIO(b"fine"))
        bad = tarfile.TarInfo("uploads/../../escaped.txt")
        bad.size = 4
        tar.addfile(bad, io.BytesIO(b"evil"))
    return out.getvalue()


def test_a_refused_archive_leaves_no_trace(tmp_path: Path) -> None:
    (tmp_path / "uploads").mkdir()
    (tmp_path / "uploads" / "keep.txt").write_text("keep")
    component = component_in(tmp_path, "uploads")
    _, manifest = backup_of(component)
    with pytest.raises(UnsafeArchive, match=r"uploads/\.\./\.\./escaped\.txt"):
        restore(component, hostile_archive(), manifest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp", "uploads"]
    assert [p.name for p in (tmp_path / "uploads").iterdir()] == ["keep.txt"]
    assert not (tmp_path / "tmp" / "backups" / ".files-restore.json").exists()
    (tmp_path / "empty-target").mkdir()
    for target in ("new-target", "empty-target"):
        with pytest.raises(UnsafeArchive):
            restore(component, hostile_archive(), manifest, target=target)
    assert not (tmp_path / "new-target").exists()
    assert list((tmp_path / "empty-target").iterdir()) == []
    assert not (tmp_path.parent / "escaped.txt").exists()


# -- SIGKILL at every step ------------------------------------------------------------------
# Every call of these in the restoring process is a point where it may die.
KILL_POINTS = ("rename", "replace", "rmdir", "sync", "utime", "mkdir")


def run_killed_at(step: int, action: Callable[[], None]) -> bool:
    """Run `action` in a child that SIGKILLs itself at its `step`-th kill point.

    True when it was killed, False when it finished before reaching that step.
    """
    pid = os.fork()
    if pid == 0:  # the child: count the kill points, die at the chosen one
        try:
            seen = [0]

            def counted(real: Callable[..., object]) -> Callable[..., object]:
                def call(*args: object, **kwargs: object) -> object:
                    seen[0] += 1
                    if seen[0] == step:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real(*args, **kwargs)

                return call

            for name in KILL_POINTS:
                setattr(os, name, counted(getattr(os, name)))
            action()
            os._exit(0)
        except BaseException:  # a child must never return into pytest
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.waitstatus_to_exitcode(status) == 0, "the restore failed instead of finishing"
    return False


def mounted(tmp_path: Path, how: list[str]) -> Iterator[Path]:
    """`static` as a real mount point: a folder that cannot be renamed."""
    static = tmp_path / "static"
    static.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting needs root")
    result = subprocess.run(["mount", *how, str(static)], capture_output=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here: {result.stderr.decode().strip()}")
    yield static
    subprocess.run(["umount", "-l", str(static)], check=True)


@pytest.fixture
def tmpfs_static(tmp_path: Path) -> Iterator[Path]:
    yield from mounted(tmp_path, ["-t", "tmpfs", "-o", "size=16m", "tmpfs"])


@pytest.fixture
def bind_static(tmp_path: Path) -> Iterator[Path]:
    """A bind mount from the same disk, which os.path.ismount does not see."""
    (tmp_path / "volume").mkdir()
    yield from mounted(tmp_path, ["--bind", str(tmp_path / "volume")])


@pytest.mark.parametrize("static_fixture", [None, "tmpfs_static", "bind_static"])
def test_sigkill_at_any_step_leaves_folders_fully_old_or_fully_new(
    tmp_path: Path, static_fixture: str | None, request: pytest.FixtureRequest
) -> None:
    if static_fixture:
        assert is_mount_point(request.getfixturevalue(static_fixture))
    folders = [tmp_path / "uploads", tmp_path / "static"]
    for folder in folders:
        folder.mkdir(exist_ok=True)
        fill(folder, "new")
    data, manifest = backup_of(component_in(tmp_path))
    new = [tree_snapshot(folder) for folder in folders]

    def make_old() -> None:
        for folder in folders:
            empty(folder)
            fill(folder, "old")

    make_old()
    old = [tree_snapshot(folder) for folder in folders]
    outcomes = set()
    step = 0
    while True:
        step += 1
        killed = run_killed_at(step, lambda: restore(component_in(tmp_path), data, manifest))
        settle(component_in(tmp_path))  # what the next run does first, under the lock
        state = [tree_snapshot(folder) for folder in folders]
        assert state in (old, new), f"mixed folders after a kill at step {step}"
        assert leftovers(tmp_path, *folders) == []
        assert not (tmp_path / "tmp" / "backups" / ".files-restore.json").exists()
        outcomes.add("new" if state == new else "old")
        if not killed:
            break
        if state == new:
            make_old()
    assert state == new  # the uninterrupted run restored
    assert outcomes == {"old", "new"}  # both kinds of interruption were met
    assert step > 10
