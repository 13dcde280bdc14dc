"""Thirty days with retention: what the store holds next to restic's repository.

Usage: python benchmarks/thirty_days.py [--days 40] [--size MIB] [--files-mib 1024]
           [--retention 30] [--cache DIR]

Issue 19's month: a daily database backup and a weekly files backup, each after its
churn, with retention after every run, for `--days` simulated days (40 by default, so
that ten days of backups age out of the 30 days kept). Side by side, one day at a time:

  ours    `cosmic-backup backup database` every day and `backup files` every seventh,
          under a clock moved to the simulated day (the retention that ends each backup
          removes what is older than `--retention` days and sweeps the store);
  restic  `pg_dump -Fc -Z0 | restic backup --stdin` every day and `restic backup
          uploads` every seventh, each with `--time` of the simulated day, then
          `restic forget --keep-within (N-1)d23h --prune` (one repository for both, as
          ours is one store for both; restic keeps a snapshot exactly N days older than
          the latest, ours removes a backup older than N days, so restic is given an hour
          less to keep as many backups as ours).

The database is database_throughput.py's (_pgcache.py), copied for the run; its churn is
database_churn.py's day (0.1% of users updated, 0.01% of posts deleted, 1% new posts),
other rows each day. The files are files_throughput.py's mixed 1 MiB files; each week 1%
of them are rewritten, 1% added and 0.5% deleted. Stored bytes are the backup root
without `store/cache` (local, never stored or uploaded) and restic's repository.

Prints each day (seconds and stored bytes of both), then the end: backups kept, stored
bytes and their ratio (issue 19's target: ours at most restic's), and a final `prune`'s
time next to the chunks in the store, to set beside chunkstore_prune.py's growth.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _peers import Peer, available, machine, pipeline, root_bytes
from _pgcache import bench_server, client_env, default_cache
from database_churn import churn_statements
from database_throughput import DEFAULT_MIB
from files_throughput import PASSPHRASE, make_uploads, run

from cosmic_backup.components.database.throwaway import ThrowawayServer

MiB = 1024 * 1024
AHEAD = timedelta(days=400)  # Month.cli says why
SHIFTED_CLI = """
import sys
from datetime import UTC, datetime

from cosmic_backup import clock

real_start = datetime.now(UTC)
simulated_start = datetime.fromisoformat(sys.argv[1])
clock.SystemClock.now = lambda self: simulated_start + (datetime.now(UTC) - real_start)
sys.argv = ["cosmic-backup", *sys.argv[2:]]
from cosmic_backup.cli.main import run

run()
"""


class WeeklyChurn:
    """Each call: 1% of the files rewritten, 1% added (new names), 0.5% deleted."""

    def __init__(self, uploads: Path, seed: int = 19) -> None:
        self.uploads = uploads
        self.rng = random.Random(seed)
        self.week = 0

    def apply(self) -> None:
        existing = sorted(self.uploads.rglob("*.bin"))
        count = max(1, len(existing) // 100)
        picked = self.rng.sample(existing, count + max(1, len(existing) // 200))
        for path in picked[:count]:
            path.write_bytes(os.urandom(path.stat().st_size))
        for path in picked[count:]:
            path.unlink()
        self.week += 1
        added = self.uploads / f"week-{self.week:02d}"
        added.mkdir()
        for n in range(count):
            (added / f"added-{n:05d}.bin").write_bytes(
                os.urandom(MiB // 2) + b"added text " * (MiB // 22)
            )


class Month:
    def __init__(self, base: Path, env: dict[str, str], dump: str, retention: int) -> None:
        self.project = base / "app"
        self.backups = self.project / "tmp" / "backups"
        self.env = {
            **env,
            "BACKUP_KEY": PASSPHRASE,
            "BACKUP_FILES_DIRS": "uploads",
            "BACKUP_LOG_DIR": str(base / "logs"),
            "RETENTION_DAYS": str(retention),
        }
        self.dump = dump
        self.retention = retention
        self.restic = Peer("restic", base / "peer-restic")
        self.restic.fresh()
        self.restic_env = {**env, **self.restic.vars}
        self.repo = shlex.quote(str(self.restic.repo))

    def cli(self, at: datetime, *command: str) -> list[str]:
        """Our CLI under a clock at `at` moved `AHEAD`: restic ignores snapshots dated in
        the future, so its days are in the past; the sweep's grace period compares the
        packs' real mtimes with our clock, so our days are in the future (every pack is
        older than a day, as it would be in a month of nightly runs). Both tools' rules
        are relative (to the latest snapshot, to the clock), so only the days between
        the runs count."""
        moved = (at + AHEAD).isoformat()
        return [sys.executable, "-c", SHIFTED_CLI, moved, "-C", str(self.project), *command]

    def ours(self, at: datetime, *command: str) -> float:
        return run(self.cli(at, *command), self.env)[0]

    def theirs(self, at: datetime, command: str) -> float:
        return run(
            pipeline(f"{command} --time {shlex.quote(f'{at:%Y-%m-%d %H:%M:%S}')}"), self.restic_env
        )[0]

    def database(self, at: datetime) -> tuple[float, float]:
        ours = self.ours(at, "backup", "database")
        restic = f"restic --repo {self.repo} backup --stdin --stdin-filename db.dump --host bench"
        return ours, self.theirs(at, f"{self.dump} | {restic}")

    def files(self, at: datetime) -> tuple[float, float]:
        ours = self.ours(at, "backup", "files")
        restic = (
            f"cd {shlex.quote(str(self.project))} && restic --repo {self.repo} backup "
            "--host bench uploads"
        )
        return ours, self.theirs(at, restic)

    def restic_retention(self) -> float:
        argv = [
            "restic",
            "--repo",
            str(self.restic.repo),
            "forget",
            "--keep-within",
            f"{self.retention - 1}d23h",
            "--prune",
        ]
        return run(argv, self.restic_env)[0]

    def stored(self) -> tuple[int, int]:
        return root_bytes(self.backups), self.restic.stored()

    def kept(self, at: datetime) -> tuple[dict[str, int], int]:
        argv = self.cli(at, "list", "--json")
        listed = json.loads(
            subprocess.run(argv, env=self.env, capture_output=True, text=True, check=True).stdout
        )
        ours: dict[str, int] = {}
        for entry in listed:
            if entry["status"] == "ok":
                ours[entry["component"]] = ours.get(entry["component"], 0) + 1
        snapshots = subprocess.run(
            ["restic", "--repo", str(self.restic.repo), "snapshots", "--json"],
            env=self.restic_env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return ours, len(json.loads(snapshots))

    def status(self, at: datetime) -> dict[str, object]:
        argv = self.cli(at, "status", "--json")
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, check=False)
        return json.loads(done.stdout) if done.stdout.strip() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=40)
    parser.add_argument("--size", type=int, default=DEFAULT_MIB, help="database MiB")
    parser.add_argument("--files-mib", type=int, default=1024)
    parser.add_argument("--retention", type=int, default=30)
    parser.add_argument("--cache", type=Path)
    args = parser.parse_args()
    if not available(["restic"]):
        raise SystemExit("restic is needed for the comparison")
    print(f"machine: {machine()}", flush=True)
    with bench_server(args.cache or default_cache(args.size), args.size) as (server, src, _):
        database = server.create_database("month", template=src)
        try:
            with tempfile.TemporaryDirectory(prefix="cosmic-month-bench-") as folder:
                simulate(Path(folder), server, database, args)
        finally:
            server.drop_database(database)


def simulate(base: Path, server: ThrowawayServer, database: str, args: argparse.Namespace) -> None:
    dump = f"{shlex.quote(str(server.bin_dir / 'pg_dump'))} -Fc -Z0 {database}"
    month = Month(base, client_env(server, database), dump, args.retention)
    uploads = month.project / "uploads"
    make_uploads(uploads, args.files_mib)
    churn = WeeklyChurn(uploads)
    start = datetime.now(UTC).replace(hour=2, minute=0, second=0, microsecond=0) - timedelta(
        days=args.days + 1
    )
    print(
        f"{'day':>3} {'db ours s':>9} {'restic s':>8} {'files ours':>10} {'restic':>7} "
        f"{'forget s':>8} {'ours MB':>9} {'restic MB':>9} {'ratio':>6}",
        flush=True,
    )
    totals = {"ours": 0.0, "restic": 0.0}
    for day in range(args.days):
        at = start + timedelta(days=day)
        if day:
            with server.admin(database) as conn:
                for statement, params in churn_statements(args.size, day - 1):
                    conn.execute(statement, params or None)  # type: ignore[arg-type]
        db_ours, db_restic = month.database(at)
        files_ours = files_restic = 0.0
        if day % 7 == 0:
            if day:
                churn.apply()
                time.sleep(1.1)  # untimed: older than the files cache's racy second
            files_ours, files_restic = month.files(at + timedelta(minutes=30))
        forget = month.restic_retention()
        totals["ours"] += db_ours + files_ours
        totals["restic"] += db_restic + files_restic + forget
        ours, restic = month.stored()
        files_cells = f"{files_ours:>10.2f} {files_restic:>7.2f}" if day % 7 == 0 else " " * 18
        print(
            f"{day:>3} {db_ours:>9.2f} {db_restic:>8.2f} {files_cells} {forget:>8.2f} "
            f"{ours / 1e6:>9.1f} {restic / 1e6:>9.1f} {ours / restic:>6.3f}",
            flush=True,
        )
    end = start + timedelta(days=args.days - 1, hours=1)
    prune_seconds = month.ours(end, "prune")
    ours, restic = month.stored()
    kept, snapshots = month.kept(end)
    store = month.status(end).get("store", {})
    print(f"\nafter {args.days} days, retention {args.retention} days:")
    print(f"  backups kept: ours {kept}, restic {snapshots} snapshots")
    print(
        f"  stored: ours {ours / 1e6:.1f} MB, restic {restic / 1e6:.1f} MB, "
        f"ours / restic {ours / restic:.3f} (target: at most 1.00)"
    )
    print(
        f"  time of every backup and retention: ours {totals['ours']:.1f} s, "
        f"restic {totals['restic']:.1f} s"
    )
    print(f"  a final `prune`: {prune_seconds:.2f} s; the store: {json.dumps(store)}")


if __name__ == "__main__":
    main()
