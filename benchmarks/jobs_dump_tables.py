"""`backup database --jobs 2` against plain `pg_dump -Fd -j2` on databases of many tables.

Usage: python benchmarks/jobs_dump_tables.py [--tables 5000 --tables 20000] [--runs 3]

For each --tables N (default 5,000 and 20,000) a database of N tiny tables (one row each:
the cost is per table, not per byte) is built on a throwaway server, then each run times,
the order alternating from run to run:
  pg_dump  pg_dump -Fd -j2 --file=FOLDER   (the floor: what --jobs 2 runs underneath)
  ours     cosmic-backup backup database --jobs 2
and prints each run, the medians and the ratio ours / pg_dump. Issue 18 item 12 measured
68.4 s against 11.7 s at 20,000 tables before the TOC's data files were named in linear
time.

pg_dump locks every table it dumps in one transaction, so the server is restarted with
enough lock slots (max_locks_per_transaction) for N tables, as an operator of such a
database must configure it.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure
from _pgcache import client_env

from cosmic_backup.components.database.throwaway import (
    ThrowawayServer,
    _run_as,
    throwaway_server,
)

TABLES_PER_TRANSACTION = 1000  # creating them: each transaction holds a lock per table
MAX_CONNECTIONS = 50  # the throwaway server's


MAKE_TABLES = """
CREATE PROCEDURE pg_temp.make_tables(first int, last int) LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN first..last LOOP
    EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, note text)', i);
    EXECUTE format('INSERT INTO t%s VALUES (1, %L)', i, 'one');
  END LOOP;
END $$
"""


def build(server: ThrowawayServer, tables: int) -> str:
    """A new database of `tables` tables of one row each; its name."""
    name = server.create_database(f"tables{tables}")
    with server.admin(name) as conn:
        conn.execute(MAKE_TABLES)
        for first in range(0, tables, TABLES_PER_TRANSACTION):
            last = min(first + TABLES_PER_TRANSACTION, tables) - 1
            conn.execute("CALL pg_temp.make_tables(%s, %s)", (first, last))
        conn.execute("VACUUM ANALYZE")
    return name


def allow_locks(server: ThrowawayServer, tables: int) -> None:
    """Enough lock slots for one transaction that locks every table (pg_dump's), then a
    restart: the setting takes effect only at server start."""
    per_transaction = max(64, 2 * tables // MAX_CONNECTIONS + 64)
    with server.admin() as conn:
        conn.execute(f"ALTER SYSTEM SET max_locks_per_transaction = {per_transaction}")
    prefix, _, _ = _run_as()
    pg_ctl = [*prefix, str(server.bin_dir / "pg_ctl"), "-D", str(server.folder / "data")]
    log = str(server.folder / "server.log")
    subprocess.run([*pg_ctl, "-l", log, "-w", "restart"], check=True, capture_output=True)


def environment(server: ThrowawayServer, database: str) -> dict[str, str]:
    """The password in the environment, never in argv."""
    return {**client_env(server, database), "PGDATABASE": database}


def time_pg_dump(server: ThrowawayServer, env: dict[str, str], scratch: Path) -> float:
    folder = scratch / "plain-dump"
    shutil.rmtree(folder, ignore_errors=True)
    argv = [str(server.bin_dir / "pg_dump"), "-Fd", "-j2", "-Z0", f"--file={folder}"]
    seconds, _ = measure(argv, env)
    shutil.rmtree(folder, ignore_errors=True)
    return seconds


def time_ours(env: dict[str, str], root: Path) -> float:
    argv = [sys.executable, "-m", "cosmic_backup", "-C", str(root)]
    seconds, _ = measure([*argv, "backup", "database", "--jobs", "2"], env)
    shutil.rmtree(root / "backups", ignore_errors=True)  # each run writes a new backup
    return seconds


def bench(server: ThrowawayServer, tables: int, runs: int) -> tuple[float, float]:
    """Medians (pg_dump, ours) in seconds for a database of `tables` tables."""
    allow_locks(server, tables)
    database = build(server, tables)
    env = environment(server, database)
    timings: dict[str, list[float]] = {"pg_dump": [], "ours": []}
    with tempfile.TemporaryDirectory(prefix="cosmic-jobs-tables-") as folder:
        scratch = Path(folder)
        variants = {
            "pg_dump": lambda: time_pg_dump(server, env, scratch),
            "ours": lambda: time_ours(env, scratch / "project"),
        }
        for run in range(runs):
            order = list(variants) if run % 2 == 0 else list(reversed(variants))
            seconds = {key: variants[key]() for key in order}
            for key, value in seconds.items():
                timings[key].append(value)
            shown = ", ".join(f"{key} {seconds[key]:.2f} s" for key in timings)
            print(f"{tables} tables, run {run + 1}: {shown}", flush=True)
    server.drop_database(database)
    return statistics.median(timings["pg_dump"]), statistics.median(timings["ours"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, action="append", help="tables (repeatable)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = []
    with throwaway_server() as server:
        for tables in args.tables or [5000, 20000]:
            results.append((tables, *bench(server, tables, args.runs)))
    print("\n| tables | pg_dump -Fd -j2 (median s) | backup --jobs 2 (median s) | ratio |")
    print("| ---: | ---: | ---: | ---: |")
    for tables, plain, ours in results:
        print(f"| {tables} | {plain:.2f} | {ours:.2f} | {ours / plain:.2f} |")


if __name__ == "__main__":
    main()
