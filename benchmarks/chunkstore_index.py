"""Memory and speed of the chunk store's loaded index (docs/format.md, "Index objects").

Usage: python benchmarks/chunkstore_index.py [--chunks 100000] [--per-pack 13]

Writes real index objects (sealed, under a fresh data key) for N random chunk ids in
packs of `--per-pack` chunks (13 is 16 MiB packs of the `file` chunker's 1.2 MiB mean),
64 packs per object as a backup writes them, then loads them back in a child process and
prints: the sorted records' size, the Python heap the loaded index holds and the peak
while loading (tracemalloc), the child's peak RSS against a bare interpreter's, the load
time and the lookup rate. For comparison, the same records in a dict of tuples.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from cosmic_backup.chunkstore.index_objects import load_index, write_index_object
from cosmic_backup.chunkstore.keys import create_store, open_store
from cosmic_backup.chunkstore.layout import StoreLayout
from cosmic_backup.format.index_text import ChunkPlace, IndexText, PackRecord
from cosmic_backup.format.keys import Key

KEY = Key(b"benchmark passphrase, not a secret")
WRAP_ITERATIONS = 1_000
PACKS_PER_OBJECT = 64
WRITTEN = "2026-11-24T02:00:00.000000Z"


def write_objects(root: Path, chunks: int, per_pack: int) -> None:
    layout = StoreLayout(root)
    config, data_key = create_store(layout, KEY, WRAP_ITERATIONS)
    packs: list[PackRecord] = []
    for first in range(0, chunks, per_pack):
        places = [
            ChunkPlace(os.urandom(32), 64 * 1024 * n, 1_200_000, 1_230_000)
            for n in range(min(per_pack, chunks - first))
        ]
        packs.append(PackRecord(os.urandom(32).hex(), 16 * 1024 * 1024, WRITTEN, places))
        if len(packs) == PACKS_PER_OBJECT:
            write_index_object(layout, data_key, config, IndexText(WRITTEN, packs))
            packs = []
    if packs:
        write_index_object(layout, data_key, config, IndexText(WRITTEN, packs))


def measure_load(root: Path) -> dict[str, float]:
    """Run in a child: load the index and report its memory and speed."""
    layout = StoreLayout(root)
    config, data_key = open_store(layout, KEY)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    loaded = load_index(layout, data_key, config)
    load_seconds = time.perf_counter() - started
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del loaded
    tracemalloc.start()  # a second load, traced: the Python heap it holds and its peak
    loaded = load_index(layout, data_key, config)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    probes = [os.urandom(32) for _ in range(50_000)]
    started = time.perf_counter()
    for probe in probes:
        loaded.index.lookup(probe)
    lookups = len(probes) / (time.perf_counter() - started)
    return {
        "chunks": len(loaded.index),
        "packs": len(loaded.index.packs),
        "records_mb": loaded.index.nbytes / 1e6,
        "held_mb": held / 1e6,
        "peak_mb": peak / 1e6,
        "rss_before_mb": rss_before / 1e3,
        "rss_peak_mb": rss_peak / 1e3,
        "load_s": load_seconds,
        "lookups_per_s": lookups,
    }


def dict_of_tuples_mb(chunks: int) -> float:
    tracemalloc.start()
    table = {
        os.urandom(32): (n // 13, 65536 * (n % 13), 1_200_000, 1_230_000) for n in range(chunks)
    }
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del table
    return held / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--per-pack", type=int, default=13)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_load(args.measure)))
        return
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        started = time.perf_counter()
        write_objects(root, args.chunks, args.per_pack)
        written_s = time.perf_counter() - started
        stored = sum(p.stat().st_size for p in (root / "store" / "index").iterdir())
        child = subprocess.run(
            [sys.executable, __file__, "--measure", str(root)],
            capture_output=True,
            check=True,
            text=True,
        )
        figures = json.loads(child.stdout)
    per_chunk = figures["held_mb"] * 1e6 / figures["chunks"]
    print(f"chunks {figures['chunks']:,} in {figures['packs']:,} packs")
    print(f"index objects stored: {stored / 1e6:.1f} MB (written in {written_s:.1f} s)")
    print(f"sorted records: {figures['records_mb']:.1f} MB (48 bytes a chunk)")
    print(
        f"loaded index holds {figures['held_mb']:.1f} MB ({per_chunk:.0f} bytes a chunk, pack "
        f"names included); peak while loading {figures['peak_mb']:.1f} MB"
    )
    print(
        f"process RSS: {figures['rss_before_mb']:.0f} MB before loading, "
        f"{figures['rss_peak_mb']:.0f} MB at its peak (untraced load)"
    )
    print(f"load {figures['load_s']:.2f} s; {figures['lookups_per_s']:,.0f} lookups/s")
    print(f"a dict of tuples of the same chunks: {dict_of_tuples_mb(figures['chunks']):.1f} MB")
    print(
        f"at 1 M chunks, growing linearly: ~{per_chunk * 1e6 / 1e6:.0f} MB held, "
        f"~{figures['peak_mb'] * 1e6 / figures['chunks']:.0f} MB peak while loading"
    )


if __name__ == "__main__":
    main()
