"""Time and memory of prune's sweep of the chunk store (docs/format.md, "Prune: mark and
sweep").

Usage: python benchmarks/chunkstore_prune.py [--chunks 100000] [--pack-kib 64]

Builds a real store whose chunkers cut small chunks (mean 512 bytes, so 100 k chunks are
~50 MB and a few seconds to write), with three backups of `--chunks` chunks each: the
first one, then two that drop its first 30% and add as much new data (the second and third
share all but a splice). The first is retired, then the sweep runs in a child process
(time, peak RSS) and, on a copy of the store, in another child under tracemalloc (the
Python heap's peak). It prints the marked chunks, the packs deleted and repacked, the
bytes freed, and how the figures grow to a million chunks.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cosmic_backup.chunkstore import ChunkStore
from cosmic_backup.chunkstore.keys import create_store
from cosmic_backup.chunkstore.layout import StoreLayout, write_object
from cosmic_backup.chunkstore.prune import live_lists, sweep_store
from cosmic_backup.format.keys import Key
from cosmic_backup.format.store_config import FILE, LIST, STREAM, ChunkerParams, dump_config

KEY = Key(b"benchmark passphrase, not a secret")
WRAP_ITERATIONS = 1_000
SMALL_CHUNKS = ChunkerParams(256, 512, 2048)
MEAN_CHUNK = 512


def small_chunk_store(root: Path, pack_target: int) -> ChunkStore:
    """A store whose chunkers cut ~512-byte chunks: many chunks from few megabytes."""
    layout = StoreLayout(root)
    config, data_key = create_store(layout, KEY, WRAP_ITERATIONS, pack_target=pack_target)
    small = tuple((kind, SMALL_CHUNKS) for kind in (FILE, LIST, STREAM))
    config = dataclasses.replace(config, chunkers=small)
    layout.config.unlink()
    write_object(layout, layout.config, dump_config(config, data_key))
    return ChunkStore.open(root, KEY)


def write_manifest(root: Path, backup_id: str, store: ChunkStore, data: bytes) -> None:
    record = store.write_payload(io.BytesIO(data), "files", backup_id)
    body = {
        "id": backup_id,
        "component": "files",
        "format_version": 2,
        "chunk_list": record.manifest_field(),
        "plaintext_size": record.plaintext_size,
        "plaintext_sha256": record.plaintext_sha256,
        "stored_size": record.added_bytes,
    }
    (root / "files" / f"{backup_id}.manifest.json").write_text(json.dumps(body))


def build(root: Path, chunks: int, pack_target: int) -> float:
    rng = random.Random(7)
    size = chunks * MEAN_CHUNK
    first = rng.randbytes(size)
    cut = size * 3 // 10
    second = first[cut:] + rng.randbytes(cut)
    third = second[: size // 2] + rng.randbytes(4096) + second[size // 2 :]
    store = small_chunk_store(root, pack_target)
    started = time.perf_counter()
    for number, data in enumerate((first, second, third), start=1):
        write_manifest(root, f"files-20261124T0200{number:02d}Z", store, data)
    (root / "files" / "files-20261124T020001Z.manifest.json").unlink()  # retired
    return time.perf_counter() - started


def peak_rss_mb() -> float:
    """This process's high-water RSS (VmHWM: getrusage's would be the parent's, inherited)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e3
    return 0.0


def measure(root: Path, traced: bool) -> dict[str, float]:
    """In a child: one sweep, its time and peak RSS (or its Python heap's peak)."""
    rss_before = peak_rss_mb()
    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    result = sweep_store(
        root, KEY, live_lists(root), dry_run=False, now=datetime.now(UTC) + timedelta(days=2)
    )
    seconds = time.perf_counter() - started
    heap_peak = tracemalloc.get_traced_memory()[1] if traced else 0
    return {
        "seconds": seconds,
        "rss_before_mb": rss_before,
        "rss_peak_mb": peak_rss_mb(),
        "heap_peak_mb": heap_peak / 1e6,
        "marked": result.marked_chunks,
        "deleted_packs": len(result.deleted_packs),
        "repacked_packs": len(result.repacked_packs),
        "new_packs": len(result.new_packs),
        "freed_mb": result.freed_bytes / 1e6,
    }


def child(root: Path, traced: bool) -> dict[str, float]:
    mode = "--traced" if traced else "--untraced"
    output = subprocess.run(
        [sys.executable, __file__, mode, str(root)], capture_output=True, check=True, text=True
    )
    return json.loads(output.stdout)


def store_figures(root: Path) -> tuple[int, int]:
    packs = [p for p in (root / "store" / "packs").rglob("*") if p.is_file()]
    return len(packs), sum(p.stat().st_size for p in packs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--pack-kib", type=int, default=64)
    parser.add_argument("--traced", type=Path, help=argparse.SUPPRESS)  # the child's modes
    parser.add_argument("--untraced", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.traced or args.untraced:
        print(json.dumps(measure(args.traced or args.untraced, traced=bool(args.traced))))
        return
    with tempfile.TemporaryDirectory() as folder:
        root, copy = Path(folder) / "root", Path(folder) / "copy"
        written_s = build(root, args.chunks, args.pack_kib * 1024)
        packs_before, bytes_before = store_figures(root)
        store_chunks = len(ChunkStore.open(root, KEY).loaded_index.index)
        shutil.copytree(root, copy)
        plain = child(root, traced=False)
        traced = child(copy, traced=True)
        packs_after, bytes_after = store_figures(root)
    marked = plain["marked"]
    stored_mb = bytes_before / 1e6
    print(
        f"store: {store_chunks:,} chunks in {packs_before:,} packs, {stored_mb:.1f} MB "
        f"(built in {written_s:.0f} s)"
    )
    print(
        f"sweep: {marked:,.0f} chunks marked from 2 live backups; {plain['deleted_packs']:,.0f} "
        f"packs deleted, {plain['repacked_packs']:,.0f} repacked into "
        f"{plain['new_packs']:,.0f}; {plain['freed_mb']:.1f} MB freed; "
        f"{packs_after:,} packs, {bytes_after / 1e6:.1f} MB left"
    )
    print(f"time: {plain['seconds']:.2f} s ({plain['seconds'] / marked * 1e6:.1f} µs a chunk)")
    print(
        f"memory: process RSS {plain['rss_before_mb']:.0f} MB before, "
        f"{plain['rss_peak_mb']:.0f} MB at its peak; Python heap peak "
        f"{traced['heap_peak_mb']:.1f} MB (traced run, {traced['seconds']:.1f} s)"
    )
    per_chunk = (plain["rss_peak_mb"] - plain["rss_before_mb"]) * 1e6 / store_chunks
    print(
        f"per chunk of the store: {plain['seconds'] / store_chunks * 1e6:.1f} µs, "
        f"{per_chunk:.0f} bytes of RSS above the interpreter's"
    )


if __name__ == "__main__":
    main()
