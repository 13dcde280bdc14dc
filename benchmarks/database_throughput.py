"""Database backup and restore next to pg_dump, the seed's pipeline and the peers, one run.

Usage: python benchmarks/database_throughput.py [--size MIB] [--runs 3] [--cache DIR]
           [--refill] [--no-peers] [--backup-only] [--restore-only] [--restore-test]
           [--jobs N] [--before SRC]

The database (posts, users with jsonb and bytea, an audit table; --size MiB on disk,
default 1270: the issue's 1.3 GB with 3 M posts, 750 k users, 3 M audit rows) is built
once and kept in --cache (default /var/tmp/cosmic-bench-pg-UID-SIZE): the next
invocation of the same size starts its server in a second or two instead of filling
again (see _pgcache.py; --refill builds it anew; `rm -rf` the folder frees the disk).

Each run times, one after the other (the order rotates from run to run, so no variant
always goes first or last), all fed by the same server:
  floor    pg_dump -Fc -Z0 > /dev/null
  dd       pg_dump -Fc -Z0 | dd bs=1M of=/dev/null
  raw      pg_dump -Fc -Z0 --file=raw.dump   (the dump file plain pg_restore restores)
  zlib     pg_dump -Fc --file=zlib.dump      (pg_dump's own zlib)
  seed     pg_dump | gzip | openssl enc -aes-256-cbc -pbkdf2 -pass file:KEY -out F
           (the seed's pipeline: a plain SQL dump; openssl's default 10,000 iterations)
  borg     pg_dump -Fc -Z0 | borg create --stdin-name db.dump REPO::A -  (repokey, lz4)
  restic   pg_dump -Fc -Z0 | restic backup --stdin                       (fresh repo)
  ours     cosmic-backup backup database
  ours_jN  with --jobs N (repeatable): cosmic-backup backup database --jobs N
  before   with --before SRC (repeatable): the same backup from another checkout's `src`
           (PYTHONPATH=SRC; e.g. `git archive COMMIT src | tar -x -C /tmp/old`, and copy
           its built C extension in)
then, unless --backup-only, restores into a new empty database each:
  pg_restore      pg_restore --single-transaction of raw.dump
  seed_restore    openssl enc -d | gunzip | psql  of the seed's file
  ours_restore    cosmic-backup restore database ID --into URL --no-safety-backup
                  (ID: this run's `ours` backup)
  ours_restore_jN with --jobs N: the same with --jobs N, of this run's ours_jN backup
  before_restore  with --before SRC: this run's `ours` backup restored by SRC's code
  restore_test    with --restore-test: cosmic-backup verify --restore-test database
--restore-only takes the raw dump and our backup once, before the first run, and then
times only pg_restore and ours_restore side by side (the restore target's quick loop).
borg and restic are installed for the benchmark when missing (_peers.py), or left out
with a note; --no-peers leaves them out. Prints each run, then medians, ratios to the
floor, stored sizes, the issue's targets (met or not), the peak RSS of the cosmic-backup
process itself (sampled from /proc) and its CPU seconds (with its children's).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _peers import Peer, available, machine, pipeline
from _pgcache import (
    AUDIT_PER_MIB,
    POSTS_PER_MIB,
    USERS_PER_MIB,
    bench_server,
    client_env,
    default_cache,
)

from cosmic_backup.components.database.throwaway import ThrowawayServer

DEFAULT_MIB = 1270  # the 1.33 GB database
SEED_KEY = "bench seed key"


def peak_rss_kib(pid: int) -> int:
    """The process's own high-water mark of resident memory (VmHWM), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def timed(
    argv: list[str], env: dict[str, str], cpu: list[float] | None = None
) -> tuple[float, int]:
    """Seconds, and the peak RSS (KiB) of the process itself, sampled until it exits.

    The wait blocks (no polling delay in the time); a thread samples the memory. With
    `cpu`, the CPU seconds (user + system) of the process and of the children it waited
    for (pg_dump) are appended to it: steadier than wall time on a shared machine.
    """
    with tempfile.TemporaryFile() as errors:  # a file: a chatty tool never blocks on a pipe
        start = time.perf_counter()
        process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], peak_rss_kib(process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - start
        done.set()
        sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            errors.seek(0)
            tail = errors.read().decode(errors="replace")[-2000:]
            raise SystemExit(f"{argv} failed ({process.returncode}): {tail}")
    if cpu is not None:
        cpu.append(usage.ru_utime + usage.ru_stime)
    return elapsed, peak[0]


@dataclass
class Bench:
    server: ThrowawayServer
    source: str
    root: Path  # the project root of our backups, and the reference files
    args: argparse.Namespace
    peers: list[Peer]
    results: dict[str, list[float]] = field(default_factory=dict)
    peaks: dict[str, int] = field(default_factory=dict)
    cpus: dict[str, list[float]] = field(default_factory=dict)
    stored: dict[str, int] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)  # the backup each of ours took

    @property
    def env(self) -> dict[str, str]:
        """Ours and the plain tools: the password in the environment, never in argv."""
        return client_env(self.server, self.source)

    def tool(self, name: str) -> str:
        return shlex.quote(str(self.server.bin_dir / name))

    @property
    def cli(self) -> list[str]:
        return [sys.executable, "-m", "cosmic_backup", "-C", str(self.root)]

    @property
    def seed_key(self) -> Path:
        return self.root / "seed.key"

    def shell(self, command: str, env: dict[str, str] | None = None) -> float:
        return timed(pipeline(command), env or self.env)[0]

    def ours(self, key: str, argv: list[str], env: dict[str, str] | None = None) -> float:
        seconds, peak = timed(argv, env or self.env, self.cpus.setdefault(key, []))
        self.peaks[key] = max(self.peaks.get(key, 0), peak)
        return seconds

    def backup(self, key: str, flags: list[str], env: dict[str, str] | None = None) -> float:
        """Time our backup; note its id and stored size (untimed) for the restores."""
        seconds = self.ours(key, [*self.cli, "backup", "database", *flags], env)
        listing = subprocess.run(
            [*self.cli, "--json", "list", "database"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        latest = json.loads(listing.stdout)[-1]
        self.ids[key], self.stored[key] = latest["id"], int(latest["stored_size"])
        return seconds

    def into_fresh(self, prefix: str, restore: Callable[[str], float]) -> float:
        """Time `restore(database)` into a new empty database, dropped after."""
        target = self.server.create_database(prefix)
        try:
            return restore(target)
        finally:
            self.server.drop_database(target)


# -- the backups -------------------------------------------------------------------------
def backups(b: Bench) -> list[tuple[str, Callable[[], float]]]:
    raw = f"{b.tool('pg_dump')} -Fc -Z0 {shlex.quote(b.source)}"
    files = {name: b.root / name for name in ("raw.dump", "zlib.dump", "seed.sql.gz.enc")}

    def to_file(key: str, command: str, name: str) -> Callable[[], float]:
        def run() -> float:
            seconds = b.shell(f"{command} --file={shlex.quote(str(files[name]))}")
            b.stored[key] = files[name].stat().st_size
            return seconds

        return run

    def seed() -> float:
        out = shlex.quote(str(files["seed.sql.gz.enc"]))
        key = shlex.quote(str(b.seed_key))
        dump = f"{b.tool('pg_dump')} {shlex.quote(b.source)}"
        enc = f"openssl enc -aes-256-cbc -pbkdf2 -pass file:{key} -out {out}"
        seconds = b.shell(f"{dump} | gzip | {enc}")
        b.stored["seed"] = files["seed.sql.gz.enc"].stat().st_size
        return seconds

    def peer(p: Peer) -> Callable[[], float]:
        def run() -> float:
            p.fresh()
            seconds = timed(p.stdin_backup(raw), {**b.env, **p.vars})[0]
            b.stored[p.name] = p.stored()
            return seconds

        return run

    def jobs(n: int) -> Callable[[], float]:
        return lambda: b.backup(f"ours_j{n}", ["--jobs", str(n)])

    def before(src: Path) -> Callable[[], float]:
        label = f"before[{src.parent.name}]"
        env = {**b.env, "PYTHONPATH": str(src)}
        return lambda: b.backup(label, [], env)

    return [
        ("floor", lambda: b.shell(f"{raw} > /dev/null")),
        ("dd", lambda: b.shell(f"{raw} | dd bs=1M of=/dev/null status=none")),
        ("raw", to_file("raw", raw, "raw.dump")),
        ("zlib", to_file("zlib", f"{b.tool('pg_dump')} -Fc {shlex.quote(b.source)}", "zlib.dump")),
        ("seed", seed),
        *((p.name, peer(p)) for p in b.peers),
        ("ours", lambda: b.backup("ours", [])),
        *((f"ours_j{n}", jobs(n)) for n in b.args.jobs or []),
        *((f"before[{src.parent.name}]", before(src)) for src in b.args.before or []),
    ]


# -- the restores ------------------------------------------------------------------------
def restores(b: Bench) -> list[tuple[str, Callable[[], float]]]:
    def pg_restore(db: str) -> float:
        dump = shlex.quote(str(b.root / "raw.dump"))
        flags = f"--no-owner --single-transaction --dbname={shlex.quote(db)}"
        return b.shell(f"{b.tool('pg_restore')} {flags} {dump}")

    def seed(db: str) -> float:
        key, enc = shlex.quote(str(b.seed_key)), shlex.quote(str(b.root / "seed.sql.gz.enc"))
        dec = f"openssl enc -d -aes-256-cbc -pbkdf2 -pass file:{key} -in {enc}"
        psql = f"{b.tool('psql')} -X -q -v ON_ERROR_STOP=1 --dbname={shlex.quote(db)}"
        return b.shell(f"{dec} | gunzip | {psql} > /dev/null")

    def ours(
        key: str, backup: str, flags: list[str], env: dict[str, str] | None = None
    ) -> Callable[[str], float]:
        def run(db: str) -> float:
            # No password in our argv either: libpq takes it from PGPASSWORD in the env.
            url = f"postgresql://postgres@127.0.0.1:{b.server.port}/{db}"
            restore = ["restore", "database", b.ids[backup], "--into", url, "--yes", *flags]
            return b.ours(key, [*b.cli, *restore, "--no-safety-backup"], env)

        return run

    def before(src: Path) -> Callable[[], float]:
        # This run's own backup, restored by the other checkout's code.
        key = f"before_restore[{src.parent.name}]"
        restore = ours(key, "ours", [], {**b.env, "PYTHONPATH": str(src)})
        return lambda: b.into_fresh("before", restore)

    def jobs(n: int) -> Callable[[], float]:
        restore = ours(f"ours_restore_j{n}", f"ours_j{n}", ["--jobs", str(n)])
        return lambda: b.into_fresh("jobs", restore)

    def pg_restore_jobs(n: int) -> Callable[[], float]:
        def run(db: str) -> float:  # no transaction: what a parallel pg_restore can do
            dump = shlex.quote(str(b.root / "raw.dump"))
            flags = f"--no-owner --jobs={n} --exit-on-error --dbname={shlex.quote(db)}"
            return b.shell(f"{b.tool('pg_restore')} {flags} {dump}")

        return lambda: b.into_fresh("plainj", run)

    def custom_jobs(n: int) -> Callable[[], float]:
        # The one-job (custom-format) backup restored with --jobs N: written to a file,
        # pg_restore -j N into a new database, counts checked, names swapped.
        restore = ours(f"ours_restore_cj{n}", "ours", ["--jobs", str(n)])
        return lambda: b.into_fresh("cjobs", restore)

    variants: list[tuple[str, Callable[[], float]]] = [
        ("pg_restore", lambda: b.into_fresh("plain", pg_restore)),
        ("seed_restore", lambda: b.into_fresh("seed", seed)),
        ("ours_restore", lambda: b.into_fresh("ours", ours("ours_restore", "ours", []))),
        *((f"ours_restore_j{n}", jobs(n)) for n in b.args.jobs or []),
        *((f"pg_restore_j{n}", pg_restore_jobs(n)) for n in b.args.jobs or []),
        *((f"ours_restore_cj{n}", custom_jobs(n)) for n in b.args.jobs or []),
        *((f"before_restore[{src.parent.name}]", before(src)) for src in b.args.before or []),
    ]
    if b.args.restore_test:
        test = [*b.cli, "verify", "--restore-test", "database"]
        variants.append(("restore_test", lambda: b.ours("restore_test", test)))
    return variants


RESTORE_ONLY = ("raw", "ours", "pg_restore", "ours_restore")


def restore_only(key: str) -> bool:
    return key in RESTORE_ONLY or key.startswith("before_restore")


def one_run(b: Bench, run: int) -> dict[str, float]:
    seconds: dict[str, float] = {}
    groups = [backups(b)] if b.args.backup_only else [backups(b), restores(b)]
    if b.args.restore_only:  # the backups once, untimed after the first run
        groups = [[v for v in group if restore_only(v[0])] for group in groups]
        groups = groups[1:] if run else groups
    for variants in groups:
        shift = run % len(variants)  # rotate: each variant takes its turn first
        for key, measure in variants[shift:] + variants[:shift]:
            seconds[key] = measure()
            os.sync()  # untimed: a variant's dirty pages are not written during the next one
    return seconds


# -- the report --------------------------------------------------------------------------
LABELS = {
    "floor": "`pg_dump -Fc -Z0 > /dev/null` (the floor)",
    "dd": "`pg_dump -Fc -Z0 \\| dd bs=1M of=/dev/null`",
    "raw": "`pg_dump -Fc -Z0 --file` (raw dump file)",
    "zlib": "`pg_dump -Fc` (its own zlib)",
    "seed": "`pg_dump \\| gzip \\| openssl enc -aes-256-cbc -pbkdf2` (seed)",
    "borg": "`pg_dump -Fc -Z0 \\| borg create --stdin-name db.dump REPO::A -`",
    "restic": "`pg_dump -Fc -Z0 \\| restic backup --stdin`",
    "ours": "`cosmic-backup backup database`",
    "pg_restore": "`pg_restore --single-transaction` of the -Z0 dump",
    "seed_restore": "`openssl enc -d \\| gunzip \\| psql` (seed)",
    "ours_restore": "`cosmic-backup restore database ID --into`",
    "restore_test": "`cosmic-backup verify --restore-test database`",
}


def mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def describe(b: Bench, key: str) -> str:
    if key.startswith("before_restore"):
        return f"the restore by {key[15:-1]}"
    if key.startswith("before"):
        return f"the same from {key[7:-1]}"
    if key.startswith("ours_j"):
        return f"`cosmic-backup backup database --jobs {key[6:]}`"
    if key.startswith("ours_restore_j"):
        return f"`cosmic-backup restore database ID --jobs {key[14:]} --into`"
    if key.startswith("ours_restore_cj"):
        return f"the same, of the one-job (custom-format) backup, --jobs {key[15:]}"
    if key.startswith("pg_restore_j"):
        return f"`pg_restore -j {key[12:]}` of the -Z0 dump (no transaction)"
    return LABELS.get(key, key) + "".join(f" ({p.label})" for p in b.peers if p.name == key)


def table(b: Bench, medians: dict[str, float], keys: list[str], base: str) -> None:
    print(f"| what | median s | vs {base} | stored |")
    print("| --- | ---: | ---: | ---: |")
    for key in keys:
        if key not in medians:
            continue
        label = describe(b, key)
        stored = mib(b.stored[key]) if key in b.stored else ""
        ratio = medians[key] / medians[base]
        print(f"| {label} | {medians[key]:.2f} | {ratio:.2f} | {stored} |")


def targets(b: Bench, medians: dict[str, float]) -> list[tuple[str, float, float, bool]]:
    """The issue's targets: (what, measured, limit, met), where the figures are there."""
    rows: list[tuple[str, float, float, bool]] = []

    def add(what: str, value: float, limit: float) -> None:
        rows.append((what, value, limit, value <= limit))

    m, s = medians, b.stored
    if b.args.restore_only:
        add("restore / pg_restore (≤ 1.05)", m["ours_restore"] / m["pg_restore"], 1.05)
        return rows
    add("backup / floor (target ≤ 1.10; ≤ 1.05 at 5 GB)", m["ours"] / m["floor"], 1.10)
    if "borg" in m:
        add("backup / borg time (≤ 1.00)", m["ours"] / m["borg"], 1.0)
        add("stored / borg stored (≤ 0.70)", s["ours"] / s["borg"], 0.70)
    add("stored / seed stored (≤ 1.15)", s["ours"] / s["seed"], 1.15)
    if "ours_restore" in m:
        add("restore / pg_restore (≤ 1.05)", m["ours_restore"] / m["pg_restore"], 1.05)
        add("restore / seed restore (< 1.00)", m["ours_restore"] / m["seed_restore"], 1.0)
    peak = max(b.peaks.values()) / 1024
    add("peak RSS of ours, MiB (< 200)", peak, 200)
    return rows


def report(b: Bench, size: int) -> None:
    medians = {k: statistics.median(v) for k, v in b.results.items()}
    runs = max(len(values) for values in b.results.values())
    print(f"\nmachine: {machine()}")
    rows = b.args.size * POSTS_PER_MIB, b.args.size * USERS_PER_MIB, b.args.size * AUDIT_PER_MIB
    print(
        f"database: {mib(size)} on disk, PostgreSQL {b.server.version}: {rows[0]:,} posts, "
        f"{rows[1]:,} users with jsonb and bytea, {rows[2]:,} audit rows; raw dump "
        f"{mib(b.stored['raw'])}; {runs} run(s) interleaved, medians\n"
    )
    keys = ["floor", "dd", "raw", "zlib", "seed", "borg", "restic", "ours"]
    keys += [k for k in medians if k.startswith(("ours_j", "before["))]
    if "floor" in medians:
        table(b, medians, keys, "floor")
    if "ours_restore" in medians:
        print()
        keys = ["pg_restore", "seed_restore", "ours_restore", "restore_test"]
        keys += [k for k in medians if k.startswith(("pg_restore_j", "ours_restore_", "before_r"))]
        keys = list(dict.fromkeys(keys))  # ours_restore is listed once
        table(b, medians, keys, "pg_restore")
    for n in b.args.jobs or []:
        gains = [f"backup {medians['ours'] / medians[f'ours_j{n}']:.2f}x"]
        if f"ours_restore_j{n}" in medians:
            gains.append(f"restore {medians['ours_restore'] / medians[f'ours_restore_j{n}']:.2f}x")
        print(f"\n--jobs {n} against one job: " + ", ".join(gains) + " as fast")
    print("\n| target (issue 13) | measured | limit | |\n| --- | ---: | ---: | --- |")
    for what, value, limit, met in targets(b, medians):
        print(f"| {what} | {value:.2f} | {limit:.2f} | {'met' if met else 'NOT met'} |")
    print()
    for key, peak in b.peaks.items():
        cpu = statistics.median(b.cpus[key])
        print(
            f"{key}: peak RSS of the cosmic-backup process {peak / 1024:.0f} MiB, "
            f"CPU seconds (with its children's) {cpu:.2f}"
        )


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", "--mib", type=int, default=DEFAULT_MIB, help="database MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--cache", type=Path, help="where the database is kept (one folder per size)"
    )
    parser.add_argument("--refill", action="store_true", help="build the database anew")
    parser.add_argument("--no-peers", action="store_true", help="leave borg and restic out")
    parser.add_argument(
        "--restore-test",
        action="store_true",
        help="also time `verify --restore-test database` (a throwaway server of its own)",
    )
    parser.add_argument("--backup-only", action="store_true", help="leave out the restores")
    parser.add_argument(
        "--restore-only",
        action="store_true",
        help="back up once, then time only pg_restore and ours_restore",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        action="append",
        help="also time backup and restore with --jobs N (repeatable)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        action="append",
        help="also time `backup database` from this other checkout's src folder (repeatable)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse()
    args.cache = args.cache or default_cache(args.size)
    names = [] if args.no_peers else available(["borg", "restic"])
    with (
        bench_server(args.cache, args.size, args.refill) as (server, source, size),
        tempfile.TemporaryDirectory(prefix="cosmic-db-bench-") as folder,
    ):
        root = Path(folder)
        peers = [Peer(name, root / f"peer-{name}") for name in names]
        b = Bench(server, source, root, args, peers)
        b.seed_key.write_text(SEED_KEY + "\n")
        b.seed_key.chmod(0o600)
        for run in range(args.runs):
            seconds = one_run(b, run)
            print(f"run {run + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
            for name, value in seconds.items():
                b.results.setdefault(name, []).append(value)
    report(b, size)


if __name__ == "__main__":
    main()
