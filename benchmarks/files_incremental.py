"""Incremental files backups next to restic, same run: what a backup after the first costs.

Usage: python benchmarks/files_incremental.py [--mib 1024] [--runs 3] [--no-peers]

The folder is files_throughput.py's mixed one (1 MiB files, half random, half text). Each
run, for each tool, in a rotating order, with a fresh repository (untimed): the first
backup; a second with nothing changed; then (once for all tools) 1% of the files are
rewritten, 1% added and 0.5% deleted, and a third backup; then a restore of the latest.
Also today's single-file full backup (BACKUP_FORMAT=single-file) of the first state.
Prints medians of wall seconds and of the bytes each backup added to the repository
(ours: the backup folder without `store/cache`, which is local and never stored or
uploaded, like restic's cache, which lives outside its repository).

The folder is older than a second before each backup (the files cache's racy rule: a file
changed within a second of a backup's start is read by it, never cached).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _peers import files_peers, machine, root_bytes, tree_bytes
from files_throughput import PASSPHRASE, check_restored, make_uploads, run

MiB = 1024 * 1024
STEPS = ("first", "second", "churned", "restore")


@dataclass
class Tool:
    label: str
    fresh: Callable[[], None]  # an empty repository, untimed
    backup: list[str]
    restore: Callable[[Path], list[str]]
    stored: Callable[[], int]
    env: dict[str, str] | None = None
    seconds: dict[str, list[float]] = field(default_factory=dict)
    added: dict[str, list[int]] = field(default_factory=dict)

    def timed(self, step: str, argv: list[str]) -> None:
        before = self.stored()
        seconds, _, _ = run(argv, self.env)
        self.seconds.setdefault(step, []).append(seconds)
        self.added.setdefault(step, []).append(self.stored() - before)

    def median(self, step: str) -> float:
        return statistics.median(self.seconds[step])

    def median_added(self, step: str) -> float:
        return statistics.median(self.added[step])


def ours(project: Path, base: Path, single_file: bool = False) -> Tool:
    label = "cosmic-backup single-file" if single_file else "cosmic-backup"
    backups = base / ("backups-single" if single_file else "backups")
    env = {
        **os.environ,
        "BACKUP_KEY": PASSPHRASE,
        "BACKUP_FILES_DIRS": "uploads",
        "BACKUP_DIR": str(backups),
        "BACKUP_LOG_DIR": str(base / "logs"),
        "BACKUP_FORMAT": "single-file" if single_file else "chunked",
        "RETENTION_DAYS": "36500",  # nothing pruned between the steps
    }
    cli = [sys.executable, "-m", "cosmic_backup", "-C", str(project)]

    return Tool(
        label,
        lambda: shutil.rmtree(backups, ignore_errors=True),
        [*cli, "backup", "files"],
        lambda out: [*cli, "restore", "files", "latest", "--target-dir", str(out)],
        lambda: root_bytes(backups),
        env,
    )


class Churn:
    """1% of the files rewritten, 1% added, 0.5% deleted; `undo` brings the first state
    back (same bytes; new times, which a fresh repository does not care about)."""

    def __init__(self, uploads: Path, files: int, seed: int) -> None:
        rng = random.Random(seed)
        existing = sorted(uploads.rglob("*.bin"))
        picked = rng.sample(existing, max(1, files // 100) + max(1, files // 200))
        self.changed = picked[: max(1, files // 100)]
        self.deleted = picked[len(self.changed) :]
        self.added = [uploads / "new" / f"added-{n:05d}.bin" for n in range(max(1, files // 100))]
        self.saved = {path: path.read_bytes() for path in self.changed + self.deleted}

    def apply(self) -> None:
        for path in self.changed:
            path.write_bytes(os.urandom(len(self.saved[path])))
        for path in self.deleted:
            path.unlink()
        self.added[0].parent.mkdir(exist_ok=True)
        for path in self.added:
            path.write_bytes(os.urandom(MiB // 2) + b"added text " * (MiB // 22))

    def undo(self) -> None:
        for path, data in self.saved.items():
            path.write_bytes(data)
        shutil.rmtree(self.added[0].parent, ignore_errors=True)


def settle() -> None:
    time.sleep(1.1)  # untimed: older than the racy second


def report(tools: list[Tool], single: Tool, mib: int) -> None:
    print(f"{'step':<34}" + "".join(f"{t.label:>26}" for t in tools))
    rows = [
        ("first backup", "first"),
        ("second backup, nothing changed", "second"),
        ("after 1% changed/1% added/0.5% del", "churned"),
        ("restore of the latest", "restore"),
    ]
    for title, step in rows:
        cells = []
        for tool in tools:
            added = tool.median_added(step)
            what = f"+{_size(added)}" if step != "restore" else ""
            cells.append(f"{tool.median(step):8.2f} s {what:>12}")
        print(f"{title:<34}" + "".join(f"{c:>26}" for c in cells))
    print(
        f"{'single-file full backup (today)':<34}{single.median('first'):>8.2f} s "
        f"+{_size(single.median_added('first'))}"
    )
    now = tools[0]
    print(
        "first backup / single-file full backup: "
        f"{now.median('first') / single.median('first'):.2f}"
    )
    for other in tools[1:]:
        for step in STEPS:
            ratio = now.median(step) / other.median(step)
            added = ""
            if step != "restore" and other.median_added(step):
                added = f", bytes {now.median_added(step) / other.median_added(step):.2f}"
            print(f"ours / {other.label}, {step}: time {ratio:.2f}{added}")


def _size(count: float) -> str:
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-peers", action="store_true", help="leave restic out")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cosmic-incremental-bench-"))
    try:
        project = base / "app"
        uploads = project / "uploads"
        make_uploads(uploads, args.mib)
        tools = [ours(project, base)]
        peers = [] if args.no_peers else files_peers(False, base)
        for peer in (p for p in peers if p.name == "restic"):
            tools.append(
                Tool(
                    peer.label,
                    peer.fresh,
                    peer.folder_backup(project, "uploads"),
                    peer.folder_restore,
                    lambda peer=peer: tree_bytes(peer.repo) if peer.repo.exists() else 0,
                    peer.env,
                )
            )
        single = ours(project, base, single_file=True)
        for turn in range(args.runs):
            churn = Churn(uploads, args.mib, seed=turn)
            order = tools[turn % len(tools) :] + tools[: turn % len(tools)]
            settle()
            single.fresh()
            single.timed("first", single.backup)
            for tool in order:
                tool.fresh()
                tool.timed("first", tool.backup)
                tool.timed("second", tool.backup)
            churn.apply()
            settle()
            for tool in order:
                tool.timed("churned", tool.backup)
            for tool in order:
                out = base / f"out-{turn}"
                tool.timed("restore", tool.restore(out))
                check_restored(uploads, out, tool.label)
            churn.undo()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(machine())
    print(
        f"folder: {args.mib} MiB in {args.mib} files of 1 MiB (half random, half text); "
        f"{args.runs} runs, rotating order, medians"
    )
    report(tools, single, args.mib)


if __name__ == "__main__":
    main()
