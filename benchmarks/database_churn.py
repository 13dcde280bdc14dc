"""Database backups after a day's churn: bytes added and time, with and without the stable
row order (BACKUP_DB_ROW_ORDER), next to restic backing up the same pg_dump stream.

Usage: python benchmarks/database_churn.py [--size MIB] [--runs 3] [--cache DIR] [--no-peers]
           [--stream-kib KIB]

The benchmark database is database_throughput.py's (_pgcache.py: 3 M posts, 750 k users,
3 M audit rows at 1270 MiB). Each run copies it (CREATE DATABASE ... TEMPLATE, untimed),
then, one variant after the other (the order rotates from run to run):

  floor      pg_dump -Fc -Z0 > /dev/null, of the copy before the churn
  pk         cosmic-backup backup database, BACKUP_DB_ROW_ORDER=primary-key (a new root)
  dump       the same with BACKUP_DB_ROW_ORDER=dump (pg_dump's heap order)
  restic     pg_dump -Fc -Z0 | restic backup --stdin  (a new repository)

each a full backup, then a second one with nothing changed; then the churn of issue 19 on
the copy (0.1% of users updated, 0.01% of posts deleted, VACUUM as autovacuum would
during a day, so the freed space is reused, then 1% new posts), and a third backup of
each. Bytes added are what the backup root's (or restic repository's) files grew by.
Prints each run, then medians: times and their ratio to the floor, bytes added, and the
ratio of the churn backup's bytes to the full backup's (issue 19's target: at most 0.35).
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _peers import Peer, available, machine, pipeline, tree_bytes
from _pgcache import (
    POSTS_PER_MIB,
    USERS_PER_MIB,
    Statement,
    bench_server,
    client_env,
    default_cache,
)
from database_throughput import DEFAULT_MIB, timed

from cosmic_backup.chunkstore import keys as store_keys
from cosmic_backup.chunkstore.store import ChunkStore
from cosmic_backup.components.database.throwaway import ThrowawayServer
from cosmic_backup.format.keys import Key
from cosmic_backup.format.store_config import DEFAULT_CHUNKERS, STREAM, ChunkerParams
from cosmic_backup.settings import MIN_KDF_ITERATIONS

PHASES = ("full", "same", "churn")


def churn_statements(mib: int, day: int = 0) -> list[Statement]:
    """Issue 19's day: 0.1% of users updated, 0.01% of posts deleted, 1% new posts.

    Day `day` (0, 1, ...) updates and deletes other rows than the days before it, and its
    new posts follow theirs, so the churn can repeat (thirty_days.py)."""
    posts, users = mib * POSTS_PER_MIB, mib * USERS_PER_MIB
    first_new = posts + 1 + day * (posts // 100)
    return [
        (
            "UPDATE users SET name = name || ' (edited)', profile = profile || "
            "'{\"score\": 1}' WHERE id %% 1000 = %s AND id <= %s",
            ((7 + day) % 1000, users),
        ),
        ("DELETE FROM posts WHERE id %% 10000 = %s AND id <= %s", ((3 + day) % 10000, posts)),
        ("VACUUM users, posts", ()),
        (
            "INSERT INTO posts SELECT g, 1 + g %% %s, 'Post ' || g, 'new post #' || "
            "left(md5(g::text), 16), g %% 311, now() FROM generate_series(%s, %s) g",
            (users, first_new, first_new + posts // 100 - 1),
        ),
    ]


@dataclass
class Run:
    server: ThrowawayServer
    database: str
    folder: Path
    peers: list[Peer]
    seconds: dict[str, float] = field(default_factory=dict)
    added: dict[str, int] = field(default_factory=dict)
    _where: dict[str, Path] = field(default_factory=dict)  # each variant's root or repository

    @property
    def env(self) -> dict[str, str]:
        return client_env(self.server, self.database)

    @property
    def raw(self) -> str:
        return f"{shlex.quote(str(self.server.bin_dir / 'pg_dump'))} -Fc -Z0 {self.database}"

    def ours(self, order: str, stream_kib: int = 0) -> Callable[[], tuple[float, Path]]:
        root = self.folder / f"ours-{order}-{stream_kib}"
        root.mkdir()
        if stream_kib:
            small_stream_store(root / "tmp" / "backups", self.env["BACKUP_KEY"], stream_kib)
        argv = [sys.executable, "-m", "cosmic_backup", "-C", str(root), "backup", "database"]
        env = {**self.env, "BACKUP_DB_ROW_ORDER": order}
        return lambda: (timed(argv, env)[0], root / "tmp" / "backups")

    def peer(self, p: Peer) -> Callable[[], tuple[float, Path]]:
        p.fresh()
        argv = p.stdin_backup(self.raw)
        return lambda: (timed(argv, {**self.env, **p.vars})[0], p.repo)

    def measure(self, key: str, backup: Callable[[], tuple[float, Path]], phase: str) -> None:
        before = self._stored(key)
        seconds, where = backup()
        self._where[key] = where
        self.seconds[f"{key}_{phase}"] = seconds
        self.added[f"{key}_{phase}"] = tree_bytes(where) - before
        os.sync()  # untimed: one variant's dirty pages are not written during the next

    def _stored(self, key: str) -> int:
        where = self._where.get(key)
        return tree_bytes(where) if where is not None and where.exists() else 0


def small_stream_store(backups: Path, passphrase: str, avg_kib: int) -> None:
    """A store made before the first backup whose `stream` chunker (database dumps) has
    a mean of `avg_kib` KiB (min a quarter, max four times), not the default 512 KiB."""
    small = ChunkerParams(avg_kib * 256, avg_kib * 1024, avg_kib * 4096)
    chunkers = tuple((k, small if k == STREAM else v) for k, v in DEFAULT_CHUNKERS.items())
    original = store_keys.StoreConfig
    store_keys.StoreConfig = functools.partial(original, chunkers=chunkers)  # type: ignore[misc]
    try:
        backups.mkdir(parents=True)
        key = Key(passphrase.strip().encode())  # as the settings read BACKUP_KEY
        ChunkStore.open(backups, key, wrap_iterations=MIN_KDF_ITERATIONS)
    finally:
        store_keys.StoreConfig = original  # type: ignore[misc]


def one_run(server: ThrowawayServer, source: str, args: argparse.Namespace, turn: int) -> Run:
    database = server.create_database("churn", template=source)
    try:
        with tempfile.TemporaryDirectory(prefix="cosmic-churn-bench-") as folder:
            peers = [Peer(name, Path(folder) / f"peer-{name}") for name in args.peers]
            run = Run(server, database, Path(folder), peers)
            variants = [("pk", run.ours("primary-key")), ("dump", run.ours("dump"))]
            if args.stream_kib:
                variants += [
                    ("pk_small", run.ours("primary-key", args.stream_kib)),
                    ("dump_small", run.ours("dump", args.stream_kib)),
                ]
            variants += [(p.name, run.peer(p)) for p in peers]
            shift = turn % len(variants)
            variants = variants[shift:] + variants[:shift]
            run.seconds["floor"] = timed(pipeline(f"{run.raw} > /dev/null"), run.env)[0]
            for phase in PHASES:
                if phase == "churn":
                    with server.admin(database) as conn:
                        for statement, params in churn_statements(args.size):
                            conn.execute(statement, params or None)  # type: ignore[arg-type]
                for key, backup in variants:
                    run.measure(key, backup, phase)
            return run
    finally:
        server.drop_database(database)


def report(runs: list[Run], args: argparse.Namespace, size: int) -> None:
    seconds = {k: statistics.median(r.seconds[k] for r in runs) for k in runs[0].seconds}
    added = {k: statistics.median(r.added[k] for r in runs) for k in runs[0].added}
    floor = seconds["floor"]
    print(f"\nmachine: {machine()}")
    print(
        f"database: {size / 2**20:.0f} MiB on disk; churn: {args.size * POSTS_PER_MIB // 100:,}"
        f" new posts, {args.size * USERS_PER_MIB // 1000:,} users updated, "
        f"{args.size * POSTS_PER_MIB // 10000:,} posts deleted; {len(runs)} run(s), medians\n"
    )
    print(f"floor `pg_dump -Fc -Z0 > /dev/null`: {floor:.2f} s\n")
    print(
        "| variant | full s (x floor) | full added | nothing changed: added | "
        "after churn: s (x floor) | added | / full |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    small = ["pk_small", "dump_small"] if args.stream_kib else []
    for key in ["pk", "dump", *small, *args.peers]:
        full, same, churn = (added[f"{key}_{p}"] for p in PHASES)
        t_full, t_churn = seconds[f"{key}_full"], seconds[f"{key}_churn"]
        print(
            f"| {LABELS.get(key, key)} | {t_full:.2f} ({t_full / floor:.2f}) | {mib(full)} | "
            f"{same / 2**20:.3f} MiB | {t_churn:.2f} ({t_churn / floor:.2f}) | {mib(churn)} | "
            f"{churn / full:.3f} |"
        )
    if "restic" in args.peers:
        ratio = added["pk_churn"] / added["restic_churn"]
        print(f"\nafter the churn, primary-key order adds {ratio:.2f}x what restic adds")


LABELS = {
    "pk": "ours, BACKUP_DB_ROW_ORDER=primary-key",
    "dump": "ours, BACKUP_DB_ROW_ORDER=dump",
    "pk_small": "the same, primary-key, smaller dump chunks (--stream-kib)",
    "dump_small": "the same, dump, smaller dump chunks (--stream-kib)",
    "restic": "restic --stdin of `pg_dump -Fc -Z0`",
    "borg": "borg of `pg_dump -Fc -Z0`",
}


def mib(size: float) -> str:
    return f"{size / 2**20:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=DEFAULT_MIB, help="database MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--no-peers", action="store_true", help="leave restic out")
    parser.add_argument(
        "--stream-kib",
        type=int,
        default=0,
        help="also both orders into a store whose dump chunks average this many KiB",
    )
    args = parser.parse_args()
    args.peers = [] if args.no_peers else available(["restic"])
    runs = []
    with bench_server(args.cache or default_cache(args.size), args.size) as (server, src, size):
        for turn in range(args.runs):
            run = one_run(server, src, args, turn)
            print(
                f"run {turn + 1}: "
                + ", ".join(f"{k} {v:.2f} s" for k, v in run.seconds.items())
                + "; added "
                + ", ".join(f"{k} {mib(v)}" for k, v in run.added.items()),
                flush=True,
            )
            runs.append(run)
    report(runs, args, size)


if __name__ == "__main__":
    main()
