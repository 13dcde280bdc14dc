"""Content-defined chunking candidates for the chunk store (docs/format.md, format version 2).

Usage: python benchmarks/chunking.py [--mib 128] [--runs 3]

Needs the candidates installed: pip install pyfastcdc==0.3.1 fastcdc==1.7.0 (not
dependencies of cosmic-backup yet). For each candidate and average size it prints, on
two kinds of data (dump-like COPY rows, the same generator as format_throughput.py, and
random bytes standing in for photos and archives):

- the chunker's throughput over a buffer in memory (median of --runs, one core);
- the number of chunks and their mean, smallest and largest size;
- what a 100-byte insertion in the middle adds: new chunks and new bytes;
- what scattered row edits add (the database's problem, issue 19): N edits of one row
  each at random places, as a share of the whole;
- what rows appended at the end add (the same churn if rows kept a stable order).

Then the fixed costs per object that the store's parameters rest on: HMAC-SHA256 of the
chunk ids and PBKDF2 at the counts considered.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from format_throughput import dump_like

KiB = 1024
MiB = 1024 * KiB
EDIT = 100  # bytes of one edited or inserted row
SEED = 0x5EED_C0DE  # a fixed Gear seed below 2**63 (pyfastcdc refuses larger ones)

Cutter = Callable[[bytes], list[int]]  # the chunk lengths of a buffer, in order


@dataclass(frozen=True)
class Candidate:
    name: str
    cut: Cutter


def pyfastcdc_candidate(avg: int) -> Candidate:
    import pyfastcdc

    chunker = pyfastcdc.FastCDC(avg, seed=SEED)  # min avg/4, max avg*4, normalised level 1
    if "cy" not in type(chunker).__module__:
        raise SystemExit("pyfastcdc runs without its Cython extension: reinstall the wheel.")

    def cut(buffer: bytes) -> list[int]:
        return [chunk.length for chunk in chunker.cut_buf(buffer)]

    return Candidate(
        f"pyfastcdc {pyfastcdc.__version__} avg {avg // KiB} KiB "
        f"(min {chunker.min_size // KiB}, max {chunker.max_size // KiB})",
        cut,
    )


def iscc_fastcdc_candidate(avg: int) -> Candidate:
    import fastcdc
    from fastcdc.fastcdc_cy import fastcdc_cy  # the pure-Python fallback is ~100x slower

    minimum, maximum = avg // 4, avg * 4  # the same bounds as pyfastcdc's defaults

    def cut(buffer: bytes) -> list[int]:
        return [c.length for c in fastcdc_cy(buffer, minimum, avg, maximum, fat=False)]

    return Candidate(
        f"fastcdc {fastcdc.__version__} avg {avg // KiB} KiB "
        f"(min {minimum // KiB}, max {maximum // KiB}), no seed",
        cut,
    )


def candidates() -> list[Candidate]:
    try:
        found = [pyfastcdc_candidate(avg) for avg in (256 * KiB, 512 * KiB, 1 * MiB)]
        found.append(iscc_fastcdc_candidate(512 * KiB))
    except ImportError as exc:
        raise SystemExit(
            f"{exc.name} is not installed: pip install pyfastcdc==0.3.1 fastcdc==1.7.0"
        ) from None
    return found


# -- data and its changes ---------------------------------------------------------------------
def dump_text(size: int) -> bytes:
    return b"".join(dump_like(size))


def random_bytes(size: int) -> bytes:
    return random.Random(11).randbytes(size)


def inserted(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + random.Random(3).randbytes(EDIT) + data[middle:]


def edited(data: bytes, edits: int) -> bytes:
    """`edits` rows of EDIT bytes overwritten at random places (an update in place)."""
    rng = random.Random(edits)
    out = bytearray(data)
    for _ in range(edits):
        at = rng.randrange(len(data) - EDIT)
        out[at : at + EDIT] = rng.randbytes(EDIT)
    return bytes(out)


def appended(data: bytes, share: float) -> bytes:
    return data + dump_text(int(len(data) * share))


# -- measuring --------------------------------------------------------------------------------
def pieces(data: bytes, lengths: Iterable[int]) -> list[bytes]:
    out, at = [], 0
    for length in lengths:
        out.append(hashlib.sha256(data[at : at + length]).digest())
        at += length
    return out


def added(candidate: Candidate, before: bytes, after: bytes) -> tuple[int, int]:
    """New chunks and new bytes that `after` adds to a store holding `before`."""
    known = set(pieces(before, candidate.cut(before)))
    lengths = candidate.cut(after)
    new_chunks = new_bytes = 0
    for digest, length in zip(pieces(after, lengths), lengths, strict=True):
        if digest not in known:
            new_chunks += 1
            new_bytes += length
    return new_chunks, new_bytes


def throughput(candidate: Candidate, data: bytes, runs: int) -> tuple[float, list[int]]:
    times, lengths = [], []
    for _ in range(runs):
        start = time.perf_counter()
        lengths = candidate.cut(data)
        times.append(time.perf_counter() - start)
    return len(data) / statistics.median(times) / 1e6, lengths


def report(candidate: Candidate, kind: str, data: bytes, runs: int, edits: list[int]) -> None:
    rate, lengths = throughput(candidate, data, runs)
    mean = statistics.mean(lengths)
    print(
        f"  {kind:6} {rate:7.0f} MB/s  {len(lengths):5} chunks  mean {mean / KiB:6.0f} KiB  "
        f"min {min(lengths) / KiB:5.0f}  max {max(lengths) / KiB:5.0f} KiB"
    )
    chunks, size = added(candidate, data, inserted(data))
    print(f"         +{EDIT} B in the middle: {chunks} new chunks, {size / KiB:.0f} KiB new")
    if kind != "dump":
        return
    for count in edits:
        _, size = added(candidate, data, edited(data, count))
        print(f"         {count:5} scattered row edits: {size / len(data):6.1%} of the whole new")
    _, size = added(candidate, data, appended(data, 0.01))
    print(f"         1% rows appended at the end: {size / len(data):6.2%} of the whole new")


def fixed_costs() -> None:
    chunk = random.Random(5).randbytes(MiB)
    key = bytes(32)
    start = time.perf_counter()
    for _ in range(64):
        hmac.new(key, chunk, hashlib.sha256).digest()
    rate = 64 * MiB / (time.perf_counter() - start) / 1e6
    print(f"chunk id, HMAC-SHA256 of 1 MiB chunks: {rate:.0f} MB/s on one core")
    for iterations in (1_000, 10_000, 600_000):
        start = time.perf_counter()
        hashlib.pbkdf2_hmac("sha256", b"0" * 64, b"saltsalt", iterations, dklen=48)
        print(
            f"PBKDF2-HMAC-SHA256, {iterations:,} iterations: "
            f"{(time.perf_counter() - start) * 1000:.1f} ms per object"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=128, help="size of each data set")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per figure")
    args = parser.parse_args()
    size = args.mib * MiB
    data = {"dump": dump_text(size), "random": random_bytes(size)}
    rows = data["dump"].count(b"\n")
    edits = [rows // 10_000, rows // 1_000]  # 0.01% and 0.1% of the rows
    print(f"{args.mib} MiB per data set ({rows:,} dump rows), medians of {args.runs} runs")
    for candidate in candidates():
        print(candidate.name)
        for kind, buffer in data.items():
            report(candidate, kind, buffer, args.runs, edits)
    fixed_costs()


if __name__ == "__main__":
    main()
