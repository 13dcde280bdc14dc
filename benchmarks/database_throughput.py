"""Database backup and restore times next to plain pg_dump / pg_restore, in the same run.

Usage: python benchmarks/database_throughput.py [--size MIB] [--runs 3] [--restore-test]
           [--backup-only] [--before SRC]

Starts a throwaway PostgreSQL server, fills a database with about --size MiB (default
1024) of app-like rows (generate_series), then alternates, run by run:
  1. plain `pg_dump -Fc` (its own zlib compression) into a file, and `pg_dump -Fc -Z0`
     (raw: what our backup adds compression, encryption and the MAC to),
  2. `cosmic-backup backup database` (pg_dump -Z0 | gzip | AES | MAC into the artifact),
  3. plain `pg_restore --single-transaction` of that file into a fresh database,
  4. `cosmic-backup restore database latest --into` a fresh database (MAC check of the
     whole artifact first, then decrypt | gunzip | pg_restore | psql in one transaction,
     then the row-count comparison),
  5. with --restore-test: `cosmic-backup verify --restore-test database` (a throwaway
     server started, the same restore into it, row counts and the dump's objects checked).
  6. `pg_dump -Fc -Z0 > /dev/null` (the floor a backup is measured against), and
     with --before SRC the same `backup database` run from another checkout's `src`
     folder (PYTHONPATH=SRC: e.g. `git archive COMMIT src | tar -x -C /tmp/old`), so a
     change is measured before and after side by side, interleaved in the same run.
--backup-only leaves out the restores (3 and 4).
Prints the medians, the ratios, and the peak RSS of the cosmic-backup process itself
(sampled from /proc; pg_dump, pg_restore, psql and the server are not ours).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from psycopg import sql

from cosmic_backup.components.database.throwaway import ThrowawayServer, throwaway_server

ROWS_PER_MIB = 5200  # about 200 bytes per row on disk with its index


def fill(server: ThrowawayServer, dbname: str, mib: int) -> int:
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
        conn.execute("CREATE INDEX events_user ON events (user_id, at)")
        conn.execute("VACUUM ANALYZE events")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(size[0]) if size else 0


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

    With `cpu`, the CPU seconds (user + system) of the process and of the children it
    waited for (pg_dump) are appended to it: steadier than wall time on a shared machine.
    """
    start = time.perf_counter()
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    peak = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, peak_rss_kib(process.pid))
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if cpu is not None:
        cpu.append(usage.ru_utime + usage.ru_stime)
    if process.returncode != 0:
        error = process.stderr.read() if process.stderr else ""
        raise SystemExit(f"{argv} failed ({process.returncode}): {error}")
    return elapsed, peak


def drop(server: ThrowawayServer, name: str) -> None:
    with server.admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))


def one_run(
    server: ThrowawayServer,
    root: Path,
    source: str,
    env: dict[str, str],
    args: argparse.Namespace,
    peaks: dict[str, int],
    cpus: dict[str, list[float]],
) -> dict[str, float]:
    bin_dir = server.bin_dir
    conn = ["--host=127.0.0.1", f"--port={server.port}", "--username=postgres"]
    cli = [sys.executable, "-m", "cosmic_backup", "-C", str(root)]
    dump = root / "plain.dump"
    seconds: dict[str, float] = {}
    seconds["pg_dump"], _ = timed(
        [str(bin_dir / "pg_dump"), *conn, "-Fc", f"--file={dump}", source], env
    )
    raw = root / "raw.dump"
    seconds["pg_dump_raw"], _ = timed(
        [str(bin_dir / "pg_dump"), *conn, "-Fc", "-Z0", f"--file={raw}", source], env
    )
    raw.unlink()
    # The floor: `timed` sends stdout to /dev/null.
    seconds["pg_dump_null"], _ = timed([str(bin_dir / "pg_dump"), *conn, "-Fc", "-Z0", source], env)
    backup = [*cli, "backup", "database"]
    seconds["ours_backup"], peak = timed(backup, env, cpus.setdefault("ours_backup", []))
    peaks["ours_backup"] = max(peaks.get("ours_backup", 0), peak)
    for other in args.before or []:
        label = f"before_backup[{other.parent.name}]"
        other_env = {**env, "PYTHONPATH": str(other)}
        seconds[label], peak = timed(backup, other_env, cpus.setdefault(label, []))
        peaks[label] = max(peaks.get(label, 0), peak)
    if args.backup_only:
        return seconds
    target = server.create_database("plain")
    seconds["pg_restore"], _ = timed(
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
    drop(server, target)
    into = server.create_database("ours")
    # No password in our argv either: libpq takes it from PGPASSWORD in `env`.
    url = f"postgresql://postgres@127.0.0.1:{server.port}/{into}"
    restore = ["restore", "database", "latest", "--into", url, "--yes"]
    seconds["ours_restore"], peak = timed([*cli, *restore, "--no-safety-backup"], env)
    peaks["ours_restore"] = max(peaks.get("ours_restore", 0), peak)
    drop(server, into)
    if args.restore_test:
        seconds["ours_restore_test"], peak = timed(
            [*cli, "verify", "--restore-test", "database"], env
        )
        peaks["ours_restore_test"] = max(peaks.get("ours_restore_test", 0), peak)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", "--mib", type=int, default=1024, help="database size in MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--restore-test",
        action="store_true",
        help="also time `verify --restore-test database` (a throwaway server of its own)",
    )
    parser.add_argument("--backup-only", action="store_true", help="leave out the restores")
    parser.add_argument(
        "--before",
        type=Path,
        action="append",
        help="also time `backup database` from this other checkout's src folder (repeatable)",
    )
    args = parser.parse_args()
    with throwaway_server() as server, tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        source = server.create_database("bench")
        began = time.perf_counter()
        size = fill(server, source, args.size)
        print(f"filled {size / 2**20:.0f} MiB in {time.perf_counter() - began:.0f} s", flush=True)
        env = {
            **os.environ,
            "PGPASSWORD": server.password,
            "BACKUP_KEY": "bench key " * 4,
            "DATABASE_URL": server.url(source),
        }
        results: dict[str, list[float]] = {}
        peaks: dict[str, int] = {}
        cpus: dict[str, list[float]] = {}
        for run in range(args.runs):
            seconds = one_run(server, root, source, env, args, peaks, cpus)
            print(f"run {run + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()))
            for name, value in seconds.items():
                results.setdefault(name, []).append(value)
        cli = [sys.executable, "-m", "cosmic_backup", "-C", str(root), "--json", "list"]
        listing = subprocess.run(
            [*cli, "database"], env=env, capture_output=True, text=True, check=True
        )
        stored = json.loads(listing.stdout)[-1]["stored_size"]
        plain_size = (root / "plain.dump").stat().st_size
    report(size, plain_size, stored, args.runs, results, peaks)
    for key, values in cpus.items():
        print(f"CPU seconds (ours + pg_dump), {key}: median {statistics.median(values):.2f}")


def report(
    size: int,
    plain: int,
    stored: int,
    runs: int,
    results: dict[str, list[float]],
    peaks: dict[str, int],
) -> None:
    medians = {k: statistics.median(v) for k, v in results.items()}
    print(
        f"database: {size / 2**20:.0f} MiB on disk; plain pg_dump -Fc {plain / 2**20:.0f} MiB; "
        f"ours stored {stored / 2**20:.0f} MiB (gzip + AES); {runs} runs, medians"
    )
    rows = [
        ("pg_dump -Fc -Z0 (raw, to a file)", "pg_dump_raw"),
        ("pg_dump -Fc (zlib, to a file)", "pg_dump"),
        ("pg_dump -Fc -Z0 > /dev/null (the floor)", "pg_dump_null"),
        ("cosmic-backup backup database", "ours_backup"),
        *((f"  the same from {key[14:-1]}", key) for key in results if key.startswith("before_")),
        ("pg_restore --single-transaction", "pg_restore"),
        ("cosmic-backup restore database --into", "ours_restore"),
        ("cosmic-backup verify --restore-test database", "ours_restore_test"),
    ]
    print(f"{'operation':<46}{'seconds':>9}")
    for label, key in rows:
        if key in medians:
            print(f"{label:<46}{medians[key]:>9.2f}")
    floors = (("pg_dump -Fc", "pg_dump"), ("raw pg_dump -Z0", "pg_dump_raw"))
    for label, key in (*floors, ("pg_dump -Z0 > /dev/null", "pg_dump_null")):
        for ours in ("ours_backup", *(k for k in medians if k.startswith("before_"))):
            print(f"backup ratio {ours} / {label}: {medians[ours] / medians[key]:.2f}")
    if "ours_restore" in medians:
        ratio = medians["ours_restore"] / medians["pg_restore"]
        print(f"restore ratio ours / pg_restore: {ratio:.2f}")
    if "ours_restore_test" in medians:
        test, restore = medians["ours_restore_test"], medians["ours_restore"]
        backup = medians["ours_backup"]
        print(f"restore test / backup: {test / backup:.2f}; / restore: {test / restore:.2f}")
    for key, peak in peaks.items():
        print(f"peak RSS of the cosmic-backup process, {key}: {peak / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
