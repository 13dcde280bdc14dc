"""Throughput of the compress-encrypt-MAC stage and of its reverse, with peak memory.

Usage: python benchmarks/format_throughput.py [--mib 256] [--runs 3]

The payload is dump-like (COPY rows of ids, names, timestamps, json and numbers:
compressible, not zeros and not random), generated deterministically and streamed, so
the generator itself holds at most one chunk. Each stage runs in a fresh child process
so its peak RSS (ru_maxrss) is its own. For context, `gzip -1 | openssl enc` runs on the
same data in the same session.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1024 * 1024
ITERATIONS = 600_000


def dump_like(total: int, seed: int = 7) -> Iterator[bytes]:
    rng = random.Random(seed)
    words = ["alpha", "nebula", "comet", "orbit", "quasar", "pulsar", "galaxy", "meteor"]
    produced = 0
    row = 0
    while produced < total:
        lines = []
        size = 0
        while size < CHUNK:
            row += 1
            line = (
                f"{row}\t{rng.choice(words)}_{rng.randrange(10**6)}\t"
                f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d} "
                f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:00+00\t"
                f'{{"score": {rng.random():.6f}, "tags": ["{rng.choice(words)}"]}}\t'
                f"{rng.randrange(10**9) / 100:.2f}\n"
            )
            lines.append(line)
            size += len(line)
        block = "".join(lines).encode()[: total - produced]
        produced += len(block)
        yield block


def child_seal(source: str, target: str) -> None:
    from cosmic_backup.format.keys import Key
    from cosmic_backup.format.pipeline import SealingWriter

    key = Key(b"benchmark passphrase")
    key.fingerprint  # noqa: B018 - derive the master key before timing
    start = time.perf_counter()
    with open(source, "rb") as plain, open(target, "wb") as sink:
        writer = SealingWriter(sink, key, ITERATIONS)
        while chunk := plain.read(CHUNK):
            writer.write(chunk)
        writer.close()
    elapsed = time.perf_counter() - start
    result = writer.result
    assert result is not None
    print(
        elapsed,
        result.mac,
        result.plaintext_size,
        result.stored_size,
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    )


def child_unseal(target: str, mac: str) -> None:
    from cosmic_backup.format.keys import Key
    from cosmic_backup.format.pipeline import open_verified

    key = Key(b"benchmark passphrase")
    key.fingerprint  # noqa: B018
    start = time.perf_counter()
    with open(target, "rb") as stored:
        reader = open_verified(stored, key, expected_mac=mac, iterations=ITERATIONS)
        buffer = bytearray(CHUNK)
        while reader.readinto(buffer):
            pass
    elapsed = time.perf_counter() - start
    print(elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def run_child(*args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True
    ).stdout
    return out.split()


def openssl_pipeline(source: Path, target: Path, key_file: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        f"gzip -1 -c {source} | openssl enc -aes-256-cbc -pbkdf2 -iter {ITERATIONS} -md sha256 "
        f"-pass file:{key_file} -out {target}",
        shell=True,
        check=True,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    total = args.mib * 1024 * 1024
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "plain", Path(folder) / "sealed"
        with open(source, "wb") as out:
            for block in dump_like(total):
                out.write(block)
        key_file = Path(folder) / "key"
        key_file.write_text("benchmark passphrase\n")
        seal_times, unseal_times, seal_rss, unseal_rss, openssl_times = [], [], [], [], []
        stored_size = 0
        for _ in range(args.runs):
            elapsed, mac, _plain, stored, rss = run_child("--seal", str(source), str(target))
            seal_times.append(float(elapsed))
            seal_rss.append(int(rss))
            stored_size = int(stored)
            elapsed, rss = run_child("--unseal", str(target), mac)
            unseal_times.append(float(elapsed))
            unseal_rss.append(int(rss))
            openssl_times.append(openssl_pipeline(source, Path(folder) / "o", key_file))
    mb = total / 1e6
    print(
        f"payload: {args.mib} MiB dump-like text, stored {stored_size / total:.1%} of it, "
        f"{args.runs} runs, medians"
    )
    print(f"{'stage':<36}{'MB/s':>8}{'seconds':>10}{'peak RSS MiB':>14}")
    rows = [
        ("seal (gzip -> AES -> HMAC)", seal_times, max(seal_rss) / 1024),
        ("unseal (HMAC check, AES, gunzip)", unseal_times, max(unseal_rss) / 1024),
        ("gzip -1 | openssl enc (reference)", openssl_times, None),
    ]
    for name, times, rss in rows:
        median = statistics.median(times)
        shown = f"{rss:>14.0f}" if rss is not None else f"{'-':>14}"
        print(f"{name:<36}{mb / median:>8.0f}{median:>10.2f}{shown}")
    print(
        f"seal / reference time ratio: "
        f"{statistics.median(seal_times) / statistics.median(openssl_times):.2f}"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--seal":
        child_seal(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--unseal":
        child_unseal(sys.argv[2], sys.argv[3])
    else:
        main()
