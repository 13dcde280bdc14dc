"""Throughput of the compress-encrypt-MAC stage and of its reverse, with peak memory.

Usage: python benchmarks/format_throughput.py [--mib 256] [--runs 3]

The payload is dump-like: rows of a COPY output (ids, names, timestamps, JSON, amounts),
compressible like a real dump, neither zeros nor random bytes, generated
deterministically one chunk at a time. Each stage runs in a fresh child process that
times only the stage itself (the per-artifact 600,000-iteration PBKDF2 included, as it is
for openssl; the key's one-off master derivation excluded) and reports its own peak RSS
(VmHWM), next to that of a child that only imports and derives the key: the difference
is what the stage itself holds. For context, `gzip -1 | openssl enc` and
`openssl enc -d | gunzip` run on the same data in the same session.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from cosmic_backup.format.compression import BACKEND
from cosmic_backup.format.keys import Key
from cosmic_backup.format.pipeline import SealingWriter, open_verified

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure

CHUNK = 1024 * 1024
ITERATIONS = 600_000
PASSPHRASE = b"benchmark passphrase"


def dump_like(total: int, seed: int = 7) -> Iterator[bytes]:
    """`total` bytes of COPY rows, one chunk at a time."""
    rng = random.Random(seed)
    words = ["alpha", "nebula", "comet", "orbit", "quasar", "pulsar", "galaxy", "meteor"]
    produced = row = 0
    while produced < total:
        lines, size = [], 0
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


# -- the children: each prints its figures on one line ---------------------------------------
def ready_key() -> Key:
    key = Key(PASSPHRASE)
    key.fingerprint  # noqa: B018 - the one-off master derivation, outside the timing
    return key


def peak_rss_mib() -> float:
    """This process's own peak RSS. Read from /proc, not ru_maxrss: Linux carries the
    parent's high-water mark across fork and exec into a child's ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_baseline() -> None:
    ready_key()
    print(peak_rss_mib())


def child_seal(source: str, target: str) -> None:
    key = ready_key()
    start = time.perf_counter()
    with open(source, "rb") as plain, open(target, "wb") as sink:
        writer = SealingWriter(sink, key, ITERATIONS)
        while chunk := plain.read(CHUNK):
            writer.write(chunk)
        writer.close()
    elapsed = time.perf_counter() - start
    sealed = writer.result
    assert sealed is not None
    print(elapsed, peak_rss_mib(), sealed.mac, sealed.stored_size, sealed.plaintext_sha256)


def child_unseal(target: str, mac: str, stored_size: str, sha256: str, size: str) -> None:
    key = ready_key()
    start = time.perf_counter()
    with open(target, "rb") as stored:
        reader = open_verified(  # everything a restore checks: MAC first, SHA-256 at the end
            stored,
            key,
            expected_mac=mac,
            iterations=ITERATIONS,
            expected_stored_size=int(stored_size),
            expected_sha256=sha256,
            expected_plaintext_size=int(size),
        )
        buffer = bytearray(CHUNK)
        while reader.readinto(buffer):
            pass
    print(time.perf_counter() - start, peak_rss_mib())


def run_child(*args: str) -> list[str]:
    return subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True
    ).stdout.split()


# -- the run ------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    total = args.mib * 1024 * 1024
    times: dict[str, list[float]] = {"seal": [], "unseal": [], "ref_seal": [], "ref_unseal": []}
    rss = {"seal": 0.0, "unseal": 0.0}
    with tempfile.TemporaryDirectory(prefix="cosmic-format-bench-") as folder:
        source, target, reference = (Path(folder) / name for name in ("plain", "sealed", "ref"))
        digest = hashlib.sha256()
        with open(source, "wb") as out:
            for block in dump_like(total):
                digest.update(block)
                out.write(block)
        key_file = Path(folder) / "key"
        key_file.write_bytes(PASSPHRASE + b"\n")
        key_file.chmod(0o600)
        options = f"-aes-256-cbc -pbkdf2 -iter {ITERATIONS} -md sha256 -pass file:{key_file}"
        baseline = float(run_child("--baseline")[0])
        stored_size = 0
        for _ in range(args.runs):
            seconds, peak, mac, stored, sha = run_child("--seal", str(source), str(target))
            assert sha == digest.hexdigest()
            times["seal"].append(float(seconds))
            rss["seal"] = max(rss["seal"], float(peak))
            stored_size = int(stored)
            seconds, peak = run_child("--unseal", str(target), mac, stored, sha, str(total))
            times["unseal"].append(float(seconds))
            rss["unseal"] = max(rss["unseal"], float(peak))
            for name, command in (
                ("ref_seal", f"gzip -1 -c {source} | openssl enc {options} -out {reference}"),
                ("ref_unseal", f"openssl enc -d {options} -in {reference} | gunzip -c"),
            ):
                seconds_taken, _ = measure(command, shell=True)  # its RSS holds ours (above)
                times[name].append(seconds_taken)
    report(args, total, stored_size, baseline, times, rss)


def report(
    args: argparse.Namespace,
    total: int,
    stored_size: int,
    baseline: float,
    times: dict[str, list[float]],
    rss: dict[str, float],
) -> None:
    mb = total / 1e6
    print(
        f"payload: {args.mib} MiB of dump-like rows, stored as {stored_size / total:.1%} of it "
        f"(gzip by {BACKEND}); {args.runs} runs, medians; {os.cpu_count()} CPUs; "
        f"Python {sys.version.split()[0]}"
    )
    print(f"{'stage':<40}{'MB/s':>7}{'seconds':>9}{'peak RSS MiB':>14}")
    rows = [
        ("seal: gzip -> AES-256-CBC -> HMAC", "seal"),
        ("unseal: HMAC check, AES, gunzip, SHA", "unseal"),
        ("gzip -1 | openssl enc (reference)", "ref_seal"),
        ("openssl enc -d | gunzip (reference)", "ref_unseal"),
    ]
    for label, name in rows:
        median = statistics.median(times[name])
        shown = f"{rss[name]:>14.0f}" if name in rss else f"{'-':>14}"
        print(f"{label:<40}{mb / median:>7.0f}{median:>9.2f}{shown}")
    print(f"a child that only imports and derives the key: {baseline:.0f} MiB peak RSS")
    for ours, theirs in (("seal", "ref_seal"), ("unseal", "ref_unseal")):
        ratio = statistics.median(times[ours]) / statistics.median(times[theirs])
        print(f"{ours} time / reference time: {ratio:.2f}")


if __name__ == "__main__":
    match sys.argv[1:2]:
        case ["--baseline"]:
            child_baseline()
        case ["--seal"]:
            child_seal(*sys.argv[2:4])
        case ["--unseal"]:
            child_unseal(*sys.argv[2:7])
        case _:
            main()
