"""Many small files: backup and restore of 100,000 files, time and peak memory.

Usage: python benchmarks/files_many.py [--files 100000] [--runs 3] [--no-peers]

The target is peak RSS under 200 MB for both directions, whatever the file count. Also a
second backup with nothing changed (median of --runs), side by side with restic's second
backup of the same folder, and the objects each repository holds (ours: packs, index
objects, chunk lists and manifests, what an off-site copy would hold; the local files
cache is not counted, as restic's cache is not).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure
from _peers import files_peers


def objects(folder: Path, skip: str = "cache") -> int:
    """Files under `folder`, leaving out the local-only cache folder."""
    return sum(len(names) for place, _, names in os.walk(folder) if skip not in Path(place).parts)


def second_backups(argv: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    """Median seconds and the largest peak RSS of `runs` backups with nothing changed."""
    measured = [measure(argv, env) for _ in range(runs)]
    return statistics.median(s for s, _ in measured), max(r for _, r in measured)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-peers", action="store_true", help="leave restic out")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cosmic-many-"))
    peers = [p for p in files_peers(args.no_peers, base) if p.name == "restic"]
    peer_lines = []
    try:
        uploads = base / "app" / "uploads"
        for index in range(args.files):
            folder = uploads / f"{index // 1000:03d}"
            if index % 1000 == 0:
                folder.mkdir(parents=True)
            (folder / f"avatar-{index:06d}.txt").write_bytes(os.urandom(256) + b"x" * 1024)
        env = {**os.environ, "BACKUP_KEY": "many files key 16", "BACKUP_FILES_DIRS": "uploads"}
        cli = [sys.executable, "-m", "cosmic_backup", "-C", str(base / "app")]
        time.sleep(1.1)  # older than the files cache's racy second
        backup_s, backup_rss = measure([*cli, "backup", "files"], env)
        second_s, second_rss = second_backups([*cli, "backup", "files"], env, args.runs)
        stored = objects(base / "app" / "tmp" / "backups")
        # Each backup ends with retention and the store's sweep (it reads every kept
        # backup's chunk list): timed alone here, to show its share.
        sweep_s, _ = measure([*cli, "prune"], env)
        for peer in peers:
            peer.fresh()
            peer_first, _ = measure(peer.folder_backup(base / "app", "uploads"), peer.env)
            argv = peer.folder_backup(base / "app", "uploads")
            peer_second, peer_rss = second_backups(argv, peer.env, args.runs)
            peer_lines.append(
                f"{peer.label}: first backup {peer_first:6.1f} s, second {peer_second:6.2f} s "
                f"(peak RSS {peer_rss:.0f} MiB), {objects(peer.repo)} objects in its repository"
            )
        restore_s, restore_rss = measure([*cli, "restore", "files", "latest", "--yes"], env)
        restored = sum(len(files) for _, _, files in os.walk(uploads))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{args.files} files of 1.25 KiB in {args.files // 1000} folders")
    print(
        f"backup : {backup_s:6.1f} s, {args.files / backup_s:7.0f} files/s, "
        f"peak RSS {backup_rss:4.0f} MiB"
    )
    print(
        f"second backup, nothing changed: {second_s:6.2f} s (median of {args.runs}), "
        f"peak RSS {second_rss:4.0f} MiB; {stored} objects in the store and beside it"
    )
    print(f"  of which retention and the store's sweep: `prune` alone takes {sweep_s:.2f} s")
    for line in peer_lines:
        print(line)
    print(
        f"restore: {restore_s:6.1f} s, {args.files / restore_s:7.0f} files/s, "
        f"peak RSS {restore_rss:4.0f} MiB (with its pre-restore backup)"
    )
    print(f"restored files: {restored} (expected {args.files})")
    print(f"under 200 MB: {'yes' if max(backup_rss, restore_rss) < 200 * 1e6 / 2**20 else 'NO'}")


if __name__ == "__main__":
    main()
