"""Database backup and restore times next to plain pg_dump / pg_restore, in the same run.

Usage: python benchmarks/database_throughput.py [--mib 1024] [--runs 3]

Starts a scratch PostgreSQL server, fills a database with about --mib MiB of app-like
rows, then alternates, run by run: plain `pg_dump -Fc` to a file, `cosmic-backup backup
database`, plain `pg_restore --single-transaction` into a fresh database, and
`cosmic-backup restore database --into` a fresh database. Prints medians and ratios and
the peak RSS of our process (the server's memory is not ours).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cosmic_backup.components.database.scratch import ScratchServer, scratch_server

ROWS_PER_MIB = 5200  # about 200 bytes per row on disk with its index


def fill(server: ScratchServer, dbname: str, mib: int) -> int:
    rows = mib * ROWS_PER_MIB
    with server.admin(dbname) as conn:
        conn.execute(
            "CREATE TABLE events (id bigserial PRIMARY KEY, user_id int, kind text, "
            "payload jsonb, amount numeric(12,2), at timestamptz)"
        )
        conn.execute(
            "INSERT INTO events (user_id, kind, payload, amount, at) "
            "SELECT g %% 10000, (ARRAY['view','click','buy','share'])[1 + g %% 4], "
            "jsonb_build_object('page', '/p/' || (g %% 977), 'ref', md5(g::text)), "
            "(g %% 100000) / 100.0, now() - g * interval '1 second' "
            "FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.execute("VACUUM ANALYZE events")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return int(size)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Seconds and peak RSS (KiB) of a child process."""
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {result.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, max(before, after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with scratch_server() as server, tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        source = server.create_database("bench")
        size = fill(server, source, args.mib)
        bin_dir = server.bin_dir
        env = {
            **os.environ,
            "PGPASSWORD": server.password,
            "BACKUP_KEY": "bench key " * 4,
            "DATABASE_URL": server.url(source),
        }
        conn = ["--host=127.0.0.1", f"--port={server.port}", "--username=postgres"]
        cli = [sys.executable, "-m", "cosmic_backup", "-C", str(root)]
        results: dict[str, list[float]] = {
            k: [] for k in ("pg_dump", "ours_backup", "pg_restore", "ours_restore")
        }
        peak = 0
        for _ in range(args.runs):
            dump = root / "plain.dump"
            seconds, _ = timed(
                [str(bin_dir / "pg_dump"), *conn, "-Fc", f"--file={dump}", source], env
            )
            results["pg_dump"].append(seconds)
            seconds, rss = timed([*cli, "backup", "database"], env)
            results["ours_backup"].append(seconds)
            peak = max(peak, rss)
            target = server.create_database("plain")
            seconds, _ = timed(
                [
                    str(bin_dir / "pg_restore"),
                    *conn,
                    "--no-owner",
                    "--single-transaction",
                    f"--dbname={target}",
                    str(dump),
                ],
                env,
            )
            results["pg_restore"].append(seconds)
            into = server.url(server.create_database("ours"))
            seconds, rss = timed(
                [
                    *cli,
                    "restore",
                    "database",
                    "latest",
                    "--into",
                    into,
                    "--yes",
                    "--no-safety-backup",
                ],
                env,
            )
            results["ours_restore"].append(seconds)
            peak = max(peak, rss)
        listing = subprocess.run(
            [*cli, "--json", "list", "database"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        stored = json.loads(listing.stdout)[-1]["stored_size"]
        plain_size = (root / "plain.dump").stat().st_size
    medians = {k: statistics.median(v) for k, v in results.items()}
    print(
        f"database: {size / 2**20:.0f} MiB on disk, plain pg_dump -Fc {plain_size / 2**20:.0f}"
        f" MiB, ours stored {stored / 2**20:.0f} MiB (encrypted); {args.runs} runs, medians"
    )
    print(f"{'operation':<42}{'seconds':>9}")
    print(f"{'pg_dump -Fc (compressed, to a file)':<42}{medians['pg_dump']:>9.2f}")
    print(f"{'cosmic-backup backup database':<42}{medians['ours_backup']:>9.2f}")
    print(f"{'pg_restore --single-transaction':<42}{medians['pg_restore']:>9.2f}")
    print(f"{'cosmic-backup restore database --into':<42}{medians['ours_restore']:>9.2f}")
    print(f"backup ratio ours / pg_dump: {medians['ours_backup'] / medians['pg_dump']:.2f}")
    print(f"restore ratio ours / pg_restore: {medians['ours_restore'] / medians['pg_restore']:.2f}")
    print(f"peak RSS of cosmic-backup: {peak / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
