"""Files backup and restore throughput next to `tar -czf - | openssl enc`, same run.

Usage: python benchmarks/files_throughput.py [--mib 2048] [--runs 3]

The folder holds uploads-like files: half already-compressed (random bytes, like photos)
and half text, 1 MiB each. Prints medians of MB/s and the peak RSS of our process.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure
from _peers import files_peers, files_round, report_files

ITERATIONS = 600_000


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-peers", action="store_true", help="leave borg and restic out")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cosmic-files-bench-"))
    peers = files_peers(args.no_peers, base)  # borg, restic: benchmarks/_peers.py
    try:
        project = base / "app"
        make_uploads(project / "uploads", args.mib)
        key = base / "key"
        key.write_text("bench files key\n")
        env = {**os.environ, "BACKUP_KEY": "bench files key 16", "BACKUP_FILES_DIRS": "uploads"}
        cli = [sys.executable, "-m", "cosmic_backup", "-C", str(project)]
        times: dict[str, list[float]] = {"ours_b": [], "ref_b": [], "ours_r": [], "ref_r": []}
        peak = 0.0
        for run in range(args.runs):
            seconds, rss = measure([*cli, "backup", "files"], env)
            times["ours_b"].append(seconds)
            peak = max(peak, rss)
            enc = base / "ref.tar.gz.enc"
            seconds, _ = measure(
                f"tar -czf - -C {project} uploads | openssl enc -aes-256-cbc -pbkdf2 -iter "
                f"{ITERATIONS} -md sha256 -pass file:{key} -out {enc}",
                shell=True,
            )
            times["ref_b"].append(seconds)
            out = base / f"ours-{run}"
            seconds, rss = measure(
                [*cli, "restore", "files", "latest", "--target-dir", str(out)], env
            )
            times["ours_r"].append(seconds)
            peak = max(peak, rss)
            ref_out = base / f"ref-{run}"
            ref_out.mkdir()
            seconds, _ = measure(
                f"openssl enc -d -aes-256-cbc -pbkdf2 -iter {ITERATIONS} -md sha256 -pass "
                f"file:{key} -in {enc} | tar -xzf - -C {ref_out}",
                shell=True,
            )
            times["ref_r"].append(seconds)
            shutil.rmtree(out)
            shutil.rmtree(ref_out)
            for peer in peers:
                target = base / f"{peer.name}-{run}"
                backup_s, restore_s = files_round(peer, project, "uploads", target)
                times.setdefault(f"{peer.name}_b", []).append(backup_s)
                times.setdefault(f"{peer.name}_r", []).append(restore_s)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    mb = args.mib * 1024 * 1024 / 1e6
    print(
        f"folder: {args.mib} MiB in {args.mib} files (half random, half text); "
        f"{args.runs} runs, medians"
    )
    rows = [
        ("cosmic-backup backup files", "ours_b"),
        ("tar -czf | openssl enc", "ref_b"),
        ("cosmic-backup restore files", "ours_r"),
        ("openssl enc -d | tar -xzf", "ref_r"),
    ]
    print(f"{'operation':<32}{'seconds':>9}{'MB/s':>8}")
    for name, key_name in rows:
        median = statistics.median(times[key_name])
        print(f"{name:<32}{median:>9.2f}{mb / median:>8.0f}")
    report_files(peers, times, mb)
    backup_ratio = statistics.median(times["ours_b"]) / statistics.median(times["ref_b"])
    restore_ratio = statistics.median(times["ours_r"]) / statistics.median(times["ref_r"])
    print(f"time ratio ours / reference: backup {backup_ratio:.2f}, restore {restore_ratio:.2f}")
    print(f"peak RSS of cosmic-backup: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
