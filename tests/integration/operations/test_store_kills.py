"""Real processes killed in the chunk store's critical moments, and a backup racing a prune.

strace delivers SIGKILL at the N-th write (or rename, or unlink) of the CLI, N taken from
a traced run of the same command on a copy of the project, so the kill lands on a
pack's bytes (early, middle and late in the run), the index object's, a commit's rename
or a prune's deletion. Afterwards every listed backup verifies, the newest restores
byte for byte, the next backup and prune succeed, and no temporary file is left.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Project, clean_environ
from tests.integration.files.test_files_chunked import _redate, snapshot
from tests.integration.operations.storeproject import (
    age_store,
    listed,
    ok,
    pack_bytes,
    partial_files,
    rewrite,
    store_project,
    verify_all,
)

RETAIN_30 = {"RETENTION_DAYS": "30"}
KILLED = (-9, 137)
# "1234 write(5</root/tmp/backups/store/tmp/.partial-1234-0>, ..." as strace -f -y logs it
CALL = re.compile(r"^(\d+) +(\w+)\((.*)")
PARTIAL = re.compile(r"/store/tmp/(\.partial-\d+-\d+)")
LOCKED_EXIT = 7
LOCK_SENTENCE = re.compile(r"The backup folder .* is locked by another cosmic-backup run")


def traced(
    project: Project, *args: str, trace: str, log: Path | None = None, inject: str = ""
) -> subprocess.CompletedProcess[str]:
    command = ["strace", "-qq", "-f", "-y", "-o", str(log or os.devnull), "-e", f"trace={trace}"]
    if inject:
        command += ["-e", f"inject={inject}"]
    env = {**project.env, **RETAIN_30, "PYTHONDONTWRITEBYTECODE": "1"}  # no .pyc writes
    return subprocess.run(
        command + project.command(*args),
        env=clean_environ(env),
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def calls_of_the_cli(log: Path) -> list[tuple[str, str]]:
    """(syscall, its arguments) of the CLI's own process, in order."""
    lines = [CALL.match(line) for line in log.read_text().splitlines()]
    calls = [m for m in lines if m]
    main = calls[0].group(1)
    return [(m.group(2), m.group(3)) for m in calls if m.group(1) == main]


def reference(project: Project, tmp_path: Path, *args: str, trace: str) -> list[tuple[str, str]]:
    """The syscalls the same command makes on a copy of the project (same store, same
    data key, same data: the same sequence up to the kill)."""
    copy = Project(tmp_path / "reference", dict(project.env))
    shutil.copytree(project.root, copy.root, symlinks=True)
    log = tmp_path / "reference.strace"
    assert traced(copy, *args, trace=trace, log=log).returncode == 0
    return calls_of_the_cli(log)


def store_writes(calls: list[tuple[str, str]]) -> dict[str, list[int]]:
    """The numbers (1-based, among writes) of the writes into pack and index partials."""
    becomes = {}  # partial name -> "packs" or "index"
    for name, arguments in calls:
        if name == "rename" and (partial := PARTIAL.search(arguments)):
            becomes[partial.group(1)] = "packs" if "/store/packs/" in arguments else "index"
    found: dict[str, list[int]] = {"packs": [], "index": []}
    writes = [arguments for name, arguments in calls if name == "write"]
    for number, arguments in enumerate(writes, start=1):
        partial = PARTIAL.search(arguments.split(",", 1)[0])
        if partial and partial.group(1) in becomes:
            found[becomes[partial.group(1)]].append(number)
    return found


def commit_renames(calls: list[tuple[str, str]]) -> list[int]:
    """The numbers of the renames that commit a pack, an index object or the chunk list,
    up to the manifest's (the commit point: a kill after it leaves a listed backup)."""
    numbers = []
    for number, (_, arguments) in enumerate(calls, start=1):
        if ".manifest.json" in arguments:
            break
        if PARTIAL.search(arguments) or '.chunks"' in arguments:
            numbers.append(number)
    return numbers


def backup_and_store_calls(calls: list[tuple[str, str]]) -> list[int]:
    """The numbers of the calls on manifests, chunk lists, packs and index objects (not
    the log's or the records' files)."""
    marks = (".manifest.json", ".chunks", "/store/packs/", "/store/index/")
    return [
        number
        for number, (_, arguments) in enumerate(calls, start=1)
        if any(mark in arguments for mark in marks)
    ]


def pick(numbers: list[int], when: str) -> int:
    return {"early": numbers[0], "middle": numbers[len(numbers) // 2], "late": numbers[-1]}[when]


def assert_whole_after(project: Project, listed_before: list[str]) -> None:
    """What every kill must leave: the listed backups verify; the next backup and prune
    succeed and clean up; the newest backup restores the live tree byte for byte (which
    checks every chunk it reads, as verify does)."""
    assert [e["id"] for e in listed(project)] == listed_before
    verify_all(project)
    ok(project.run("backup", "files"))
    assert not partial_files(project), partial_files(project)
    ok(project.run("prune", env=RETAIN_30))
    live = snapshot(project)
    rewrite(project, "photo-0.bin", 0.1)  # so the restore has something to put back
    ok(project.run("restore", "files", "latest", "--yes", "--no-safety-backup"))
    assert snapshot(project) == live
    assert not partial_files(project)


def backup_to_kill(project: Project) -> list[str]:
    """A listed backup, then new data so the next backup writes several packs."""
    store_project(project, files=6)
    ok(project.run("backup", "files"))
    for number in range(4):
        rewrite(project, f"photo-{number}.bin", 1.5)
    return [e["id"] for e in listed(project)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "when"),
    [("packs", "early"), ("packs", "middle"), ("packs", "late"), ("index", "late")],
)
def test_a_backup_killed_at_a_store_write_leaves_every_listed_backup_whole(
    project: Project, tmp_path: Path, target: str, when: str
) -> None:
    before = backup_to_kill(project)
    writes = store_writes(reference(project, tmp_path, "backup", "files", trace="write,rename"))
    assert len(writes["packs"]) >= 6 and writes["index"], writes
    number = pick(writes[target], when)
    killed = traced(
        project, "backup", "files", trace="write", inject=f"write:signal=KILL:when={number}"
    )
    assert killed.returncode in KILLED, killed.stderr
    assert_whole_after(project, before)


@pytest.mark.slow
@pytest.mark.parametrize("when", ["middle", "late"])  # early: tests/unit/chunkstore/test_kill.py
def test_a_backup_killed_at_a_commit_rename_leaves_every_listed_backup_whole(
    project: Project, tmp_path: Path, when: str
) -> None:
    before = backup_to_kill(project)
    calls = reference(project, tmp_path, "backup", "files", trace="rename")
    number = pick(commit_renames(calls), when)
    killed = traced(
        project, "backup", "files", trace="rename", inject=f"rename:signal=KILL:when={number}"
    )
    assert killed.returncode in KILLED, killed.stderr
    assert_whole_after(project, before)


def prune_to_kill(project: Project) -> tuple[list[str], str]:
    """Two backups; the older one past retention and every file past the sweep's grace."""
    store_project(project, files=4)
    ok(project.run("backup", "files"))
    rewrite(project, "photo-0.bin", 1.5)
    rewrite(project, "photo-1.bin", 1.5)
    ok(project.run("backup", "files"))
    old, kept = [e["id"] for e in listed(project)]
    _redate(project, old, 40)
    age_store(project)
    return [old, kept], kept


@pytest.mark.slow
@pytest.mark.parametrize(
    ("syscall", "when"),
    [("unlink", "early"), ("unlink", "middle"), ("unlink", "late"), ("rename", "late")],
)
def test_a_prune_killed_at_a_deletion_leaves_every_listed_backup_whole_and_is_finished(
    project: Project, tmp_path: Path, syscall: str, when: str
) -> None:
    both, kept = prune_to_kill(project)
    calls = reference(project, tmp_path, "prune", trace=syscall)
    reference_packs = pack_bytes(Project(tmp_path / "reference"))
    number = pick(backup_and_store_calls(calls), when)
    killed = traced(project, "prune", trace=syscall, inject=f"{syscall}:signal=KILL:when={number}")
    assert killed.returncode in KILLED, killed.stderr
    assert [e["id"] for e in listed(project)] in (both, [kept])
    verify_all(project)
    ok(project.run("prune", env=RETAIN_30))  # finishes the job the killed one began
    assert [e["id"] for e in listed(project)] == [kept]
    if syscall == "rename":
        # Killed at the new index's rename: the packs its repack wrote are named by no
        # index, and younger than the grace period, so the next prune keeps them (a lock
        # broken by hand could mean a backup is writing them) and the one after it frees them.
        assert pack_bytes(project) > reference_packs
        age_store(project)
        ok(project.run("prune", env=RETAIN_30))
    assert pack_bytes(project) == reference_packs
    assert_whole_after(project, [kept])


def test_a_backup_and_a_prune_racing_each_other_both_finish_or_one_refuses(
    project: Project,
) -> None:
    prune_to_kill(project)
    for number in range(2, 6):
        rewrite(project, f"photo-{number}.bin", 1.5)  # a backup with packs to write
    for first, second in ((("backup", "files"), ("prune",)), (("prune",), ("backup", "files"))):
        runs = [project.popen(*first, env=RETAIN_30), project.popen(*second, env=RETAIN_30)]
        outcomes = [(run.wait(timeout=300), run.communicate()) for run in runs]
        codes = [code for code, _ in outcomes]
        assert 0 in codes, outcomes
        for code, (_, err) in outcomes:
            assert code in (0, LOCKED_EXIT), err
            if code == LOCKED_EXIT:
                assert LOCK_SENTENCE.search(err) and "Traceback" not in err, err
        verify_all(project)
    waited = [
        project.popen("--wait", *args, env=RETAIN_30) for args in (("backup", "files"), ("prune",))
    ]
    assert [run.wait(timeout=300) for run in waited] == [0, 0]
    verify_all(project)
    assert not partial_files(project)
