"""Files backup and restore next to `tar | gzip | openssl enc`, borg and restic, same run.

Usage: python benchmarks/files_throughput.py [--mib 1024] [--runs 3] [--no-peers]
           [--before SRC]...

The folder is the issue's mixed folder: 1 MiB files, half random bytes (like photos,
which do not compress) and half text. Every run times each variant's backup, then each
restore, in a rotating order (interleaved, so a noisy neighbour hits all of them alike),
with an untimed `sync` before each step. Prints medians of wall seconds and of CPU
seconds (user + system, with children), what each stored, ratios, and our peak RSS.

  --before SRC   (repeatable) the same backup and restore run from another checkout's
                 `src` folder, e.g. `git archive HEAD~3 src | tar -x -C /tmp/before`,
                 each into its own backup folder; afterwards this checkout restores that
                 backup too (untimed), to show old backups still restore.

The machine has 2 shared cores here: compare ratios from one run, not seconds across runs.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _peers import files_peers, tree_bytes

ITERATIONS = 600_000
PASSPHRASE = "bench files key 16"  # noqa: S105 - the benchmark's own; 16 chars, the minimum


def make_uploads(folder: Path, mib: int) -> None:
    rng = random.Random(3)
    words = [b"orbit", b"nebula", b"comet", b"invoice", b"avatar", b"profile"]
    for index in range(mib):
        sub = folder / f"{index % 64:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        if index % 2:
            data = os.urandom(1024 * 1024)
        else:
            data = b" ".join(rng.choice(words) for _ in range(180_000))[: 1024 * 1024]
        (sub / f"file-{index:05d}.bin").write_bytes(data)


def run(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds with children, peak RSS MiB) of one run; fails loudly."""
    os.sync()  # untimed: the previous step's writes are not flushed during this one
    start = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        error = process.stderr.read().decode() if process.stderr else ""
        raise SystemExit(f"{' '.join(argv)} failed: {error}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def shell(script: str) -> list[str]:
    return ["bash", "-o", "pipefail", "-c", script]


@dataclass
class Variant:
    """One way to back up the folder and restore it, with what it measured."""

    label: str
    backup: Callable[[], list[str]]
    restore: Callable[[Path], list[str]]
    stored: Callable[[], int]
    env: dict[str, str] | None = None
    times: dict[str, list[float]] = field(default_factory=dict)
    peak: float = 0.0
    stored_bytes: int = 0

    def step(self, what: str, argv: list[str]) -> None:
        seconds, cpu, rss = run(argv, self.env)
        self.times.setdefault(what, []).append(seconds)
        self.times.setdefault(f"{what}_cpu", []).append(cpu)
        self.peak = max(self.peak, rss)

    def median(self, what: str) -> float:
        return statistics.median(self.times[what])


def ours(label: str, project: Path, base: Path, src: Path | None) -> Variant:
    """cosmic-backup from this checkout (`src` None) or another one's `src` folder."""
    backups = base / f"backups-{label}"
    env = {
        **os.environ,
        "BACKUP_KEY": PASSPHRASE,
        "BACKUP_FILES_DIRS": "uploads",
        "BACKUP_DIR": str(backups),
        "BACKUP_LOG_DIR": str(base / f"logs-{label}"),
    }
    if src is not None:
        env["PYTHONPATH"] = str(src)
    cli = [sys.executable, "-m", "cosmic_backup", "-C", str(project)]

    def newest() -> int:
        return max((p.stat().st_mtime, p.stat().st_size) for p in backups.rglob("*.enc"))[1]

    return Variant(
        label,
        lambda: [*cli, "backup", "files"],
        lambda out: [*cli, "restore", "files", "latest", "--target-dir", str(out)],
        newest,
        env,
    )


def reference(project: Path, base: Path) -> Variant:
    """The seed's pipeline: tar | gzip | openssl enc, and back."""
    key, enc = base / "key", base / "ref.tar.gz.enc"
    key.write_text(PASSPHRASE + "\n")
    options = f"-aes-256-cbc -pbkdf2 -iter {ITERATIONS} -md sha256 -pass file:{key}"
    return Variant(
        "tar | gzip | openssl enc",
        lambda: shell(f"tar -cf - -C {project} uploads | gzip | openssl enc {options} -out {enc}"),
        lambda out: shell(
            f"mkdir -p {out} && openssl enc -d {options} -in {enc} | gunzip | tar -xf - -C {out}"
        ),
        lambda: enc.stat().st_size,
    )


def check_restored(source: Path, out: Path, label: str) -> None:
    restored = out / "uploads"
    if tree_bytes(restored) != tree_bytes(source):
        raise SystemExit(f"{label} restored {restored} incompletely")
    shutil.rmtree(out)


def report(variants: list[Variant], mb: float) -> None:
    print(f"{'operation':<36}{'seconds':>9}{'MB/s':>8}{'CPU s':>8}{'stored MiB':>12}")
    for what in ("backup", "restore"):
        for variant in variants:
            median = variant.median(what)
            stored = f"{variant.stored_bytes / 2**20:>12.0f}" if what == "backup" else ""
            print(
                f"{f'{variant.label} {what}':<36}{median:>9.2f}{mb / median:>8.0f}"
                f"{variant.median(f'{what}_cpu'):>8.2f}{stored}"
            )


def ratios(variants: list[Variant]) -> None:
    now = variants[0]
    for other in variants[1:]:
        print(
            f"ours / {other.label}: backup {now.median('backup') / other.median('backup'):.2f} "
            f"(CPU {now.median('backup_cpu') / other.median('backup_cpu'):.2f}), restore "
            f"{now.median('restore') / other.median('restore'):.2f} "
            f"(CPU {now.median('restore_cpu') / other.median('restore_cpu'):.2f}), stored "
            f"{now.stored_bytes / other.stored_bytes:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-peers", action="store_true", help="leave borg and restic out")
    parser.add_argument("--before", type=Path, action="append", default=[], metavar="SRC")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cosmic-files-bench-"))
    peers = files_peers(args.no_peers, base)  # borg, restic: benchmarks/_peers.py
    try:
        project = base / "app"
        make_uploads(project / "uploads", args.mib)
        variants = [ours("cosmic-backup", project, base, None)]
        for src in args.before:
            variants.append(ours(f"before[{src.resolve().parent.name}]", project, base, src))
        variants.append(reference(project, base))
        for peer in peers:  # a fresh repository before each backup, untimed
            backup = partial(peer.fresh_backup, project, "uploads")
            variants.append(Variant(peer.label, backup, peer.folder_restore, peer.stored, peer.env))
        for turn in range(args.runs):
            order = variants[turn % len(variants) :] + variants[: turn % len(variants)]
            for variant in order:
                variant.step("backup", variant.backup())
                variant.stored_bytes = variant.stored()
            for variant in order:
                out = base / f"out-{turn}"
                variant.step("restore", variant.restore(out))
                check_restored(project / "uploads", out, variant.label)
        for variant in variants[1 : 1 + len(args.before)]:  # old backups still restore
            out = base / "out-compat"
            env = {k: v for k, v in (variant.env or {}).items() if k != "PYTHONPATH"}
            run(variants[0].restore(out), env)
            check_restored(project / "uploads", out, f"this checkout, from {variant.label}")
            print(f"this checkout restored the {variant.label} backup: ok")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    mb = args.mib * 1024 * 1024 / 1e6
    print(
        f"folder: {args.mib} MiB in {args.mib} files of 1 MiB (half random, half text); "
        f"{args.runs} runs interleaved, medians"
    )
    report(variants, mb)
    ratios(variants)
    print(f"peak RSS of cosmic-backup: {variants[0].peak:.0f} MiB")


if __name__ == "__main__":
    main()
