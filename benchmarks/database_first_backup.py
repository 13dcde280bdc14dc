"""A first (full) database backup into a new root, next to the pg_dump floor: the chunk
store's, the single-file format's, and optionally another checkout's, side by side.

Usage: python benchmarks/database_first_backup.py [--size MIB] [--runs 5] [--cache DIR]
           [--before SRC ...]

The benchmark database is database_throughput.py's (_pgcache.py). Each run times, in an
order that rotates from run to run, each into a new project root (removed after):

  floor        pg_dump -Fc -Z0 > /dev/null
  chunked      cosmic-backup backup database (the chunk store, the default)
  single-file  the same with BACKUP_FORMAT=single-file
  before[X]    cosmic-backup backup database with PYTHONPATH=X (another checkout's src)

Prints each run, then medians of the wall time, its ratio to the floor, and the CPU
seconds (user + system, ours with pg_dump's) and peak RSS of ours. Issue 19's target: a
first backup at most 1.10x the floor (today's single-file backup: 1.0x).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _peers import machine, pipeline
from _pgcache import bench_server, client_env, default_cache
from database_throughput import DEFAULT_MIB, timed

from cosmic_backup.components.database.throwaway import ThrowawayServer

Variant = Callable[[], tuple[float, float, int]]  # seconds, CPU seconds, peak RSS KiB


def variants(
    server: ThrowawayServer, source: str, folder: Path, befores: list[Path]
) -> dict[str, Variant]:
    env = client_env(server, source)
    raw = f"{shlex.quote(str(server.bin_dir / 'pg_dump'))} -Fc -Z0 {shlex.quote(source)}"

    def floor() -> tuple[float, float, int]:
        cpu: list[float] = []
        seconds, _ = timed(pipeline(f"{raw} > /dev/null"), env, cpu)
        return seconds, cpu[0], 0

    def ours(name: str, extra: dict[str, str]) -> Variant:
        def run() -> tuple[float, float, int]:
            root = folder / name.replace("[", "-").replace("]", "")
            root.mkdir()
            argv = [sys.executable, "-m", "cosmic_backup", "-C", str(root), "backup", "database"]
            cpu: list[float] = []
            try:
                seconds, peak = timed(argv, {**env, **extra}, cpu)
            finally:
                shutil.rmtree(root)
                os.sync()  # untimed: this run's dirty pages are not written during the next
            return seconds, cpu[0], peak

        return run

    found: dict[str, Variant] = {
        "floor": floor,
        "chunked": ours("chunked", {}),
        "single-file": ours("single-file", {"BACKUP_FORMAT": "single-file"}),
    }
    for src in befores:
        name = f"before[{src.parent.name}]"
        found[name] = ours(name, {"BACKUP_FORMAT": "chunked", "PYTHONPATH": str(src)})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=DEFAULT_MIB, help="database MiB")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--before", type=Path, action="append", default=[])
    args = parser.parse_args()
    print(machine(), flush=True)
    results: dict[str, list[tuple[float, float, int]]] = {}
    with (
        bench_server(args.cache or default_cache(args.size), args.size) as (server, src, size),
        tempfile.TemporaryDirectory(prefix="cosmic-first-backup-") as scratch,
    ):
        print(f"database: {size / 2**20:.0f} MiB", flush=True)
        table = variants(server, src, Path(scratch), args.before)
        names = list(table)
        for turn in range(args.runs):
            order = names[turn % len(names) :] + names[: turn % len(names)]
            line = []
            for name in order:
                result = table[name]()
                results.setdefault(name, []).append(result)
                line.append(f"{name} {result[0]:.2f} s")
            print(f"run {turn + 1}: " + ", ".join(line), flush=True)
    floor = statistics.median(r[0] for r in results["floor"])
    print(f"\nmedians of {args.runs} runs:")
    print(f"{'what':<28} {'seconds':>8} {'x floor':>8} {'CPU s':>7} {'peak RSS':>9}")
    for name in names:
        seconds = statistics.median(r[0] for r in results[name])
        cpu = statistics.median(r[1] for r in results[name])
        peak = max(r[2] for r in results[name])
        rss = f"{peak / 1024:.0f} MiB" if peak else ""
        print(f"{name:<28} {seconds:>8.2f} {seconds / floor:>8.2f} {cpu:>7.2f} {rss:>9}")


if __name__ == "__main__":
    main()
