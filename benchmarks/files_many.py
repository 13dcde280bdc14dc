"""Many small files: backup and restore of 100,000 files, time and peak memory.

Usage: python benchmarks/files_many.py [--files 100000]

The target is peak RSS under 200 MB for both directions, whatever the file count.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cosmic-many-"))
    try:
        uploads = base / "app" / "uploads"
        for index in range(args.files):
            folder = uploads / f"{index // 1000:03d}"
            if index % 1000 == 0:
                folder.mkdir(parents=True)
            (folder / f"avatar-{index:06d}.txt").write_bytes(os.urandom(256) + b"x" * 1024)
        env = {**os.environ, "BACKUP_KEY": "many files key 16", "BACKUP_FILES_DIRS": "uploads"}
        cli = [sys.executable, "-m", "cosmic_backup", "-C", str(base / "app")]
        backup_s, backup_rss = measure([*cli, "backup", "files"], env)
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
        f"restore: {restore_s:6.1f} s, {args.files / restore_s:7.0f} files/s, "
        f"peak RSS {restore_rss:4.0f} MiB (with its pre-restore backup)"
    )
    print(f"restored files: {restored} (expected {args.files})")
    print(f"under 200 MB: {'yes' if max(backup_rss, restore_rss) < 200 * 1e6 / 2**20 else 'NO'}")


if __name__ == "__main__":
    main()
