"""Who a restore waits for: the sessions whose locks keep its reset from starting.

The reset (reset.py) never queues for a lock: it tries for 200 ms, gives every lock back,
sleeps and tries again, for up to BACKUP_LOCK_WAIT_TIMEOUT. So ``pg_blocking_pids()`` of
our session is empty most of the time it waits, and cannot say alone who is in the way.
While our session runs the reset's block (its query begins ``DO $cosmic_``), every other
session holding a lock on a relation of the schemas it replaces is in its way: the reset
needs ACCESS EXCLUSIVE on all of them. A watcher thread with its own connection looks
after a second, then twice a second, and says who (pid, user, application, state and
since when) on screen and in the log; the final sentence of a restore that gave up
names them too.

Our sessions (the trial reset's connection, psql) carry the application name
``cosmic-backup restore <pid>``, by which the watcher tells them from the app's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

import psycopg

from cosmic_backup.components.database.connection import connect
from cosmic_backup.components.database.url import Target

GRACE_SECONDS = 1.0  # a reset that waits less than this is not worth a word
POLL_SECONDS = 0.5

BLOCKERS_QUERY = """
WITH ours AS (
  SELECT pid, state = 'active' AND ltrim(query, E' \\n\\t') LIKE 'DO $cosmic\\_%%' AS resetting
  FROM pg_catalog.pg_stat_activity WHERE application_name = %(app)s
), held AS (
  SELECT DISTINCT l.pid FROM pg_catalog.pg_locks l
  JOIN pg_catalog.pg_class c ON c.oid = l.relation
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  WHERE l.granted AND n.nspname = ANY (%(schemas)s)
    AND l.database = (SELECT oid FROM pg_catalog.pg_database
                      WHERE datname = pg_catalog.current_database())
), waited_for AS (
  SELECT pg_catalog.unnest(pg_catalog.pg_blocking_pids(pid)) AS pid FROM ours
  UNION
  SELECT pid FROM held WHERE %(anyway)s OR EXISTS (SELECT 1 FROM ours WHERE resetting)
)
SELECT a.pid, coalesce(a.usename, '?'), coalesce(a.application_name, ''),
       coalesce(a.state, 'unknown state'), coalesce(a.xact_start, a.backend_start)
FROM pg_catalog.pg_stat_activity a JOIN waited_for w ON w.pid = a.pid
WHERE a.pid <> pg_catalog.pg_backend_pid() AND a.pid NOT IN (SELECT pid FROM ours)
ORDER BY a.pid
"""


CONNECTED_QUERY = """
SELECT pid, coalesce(usename, '?'), coalesce(application_name, ''),
       coalesce(state, backend_type), coalesce(xact_start, backend_start)
FROM pg_catalog.pg_stat_activity
WHERE datname = ANY (%s) AND pid <> pg_catalog.pg_backend_pid() ORDER BY pid
"""


def restore_application_name() -> str:
    """The application name of this run's restore sessions."""
    return f"cosmic-backup restore {os.getpid()}"


@dataclass(frozen=True)
class Blocker:
    pid: int
    user: str
    application: str
    state: str
    since: datetime | None

    def describe(self) -> str:
        since = f" since {self.since.astimezone():%H:%M:%S %Z}" if self.since else ""
        app = self.application or "-"
        return f"pid {self.pid} (user {self.user}, application {app}, {self.state}{since})"


def find_blockers(
    conn: psycopg.Connection, schemas: list[str], *, anyway: bool = False
) -> list[Blocker]:
    """The sessions our restore waits for; with `anyway`, every session holding a lock on
    the relations of `schemas`, whatever our sessions are doing (after a wait gave up)."""
    params = {"app": restore_application_name(), "schemas": schemas, "anyway": anyway}
    return [Blocker(*row) for row in conn.execute(BLOCKERS_QUERY, params).fetchall()]


def connected_sessions(conn: psycopg.Connection, names: list[str]) -> list[Blocker]:
    """Every session connected to the databases `names` (walsenders and subscription
    workers too: a rename waits for them all)."""
    return [Blocker(*row) for row in conn.execute(CONNECTED_QUERY, [names]).fetchall()]


def describe_all(blockers: list[Blocker]) -> str:
    return "; ".join(blocker.describe() for blocker in blockers)


def waiting_notice(blockers: list[Blocker], wait: int) -> str:
    return (
        f"The restore is waiting for locks held by {describe_all(blockers)}; it gives up "
        f"after {wait} s (BACKUP_LOCK_WAIT_TIMEOUT). Let that transaction finish, or end "
        f"the session (SELECT pg_terminate_backend({blockers[0].pid})), for it to go on."
    )


class BlockerWatch:
    """A thread that says who the restore waits for, once per new set of sessions."""

    def __init__(
        self,
        target: Target,
        schemas: list[str],
        timeouts: tuple[int, int],  # (connect timeout, lock wait) in seconds
        log: logging.Logger,
        say: Callable[[str], None],
    ) -> None:
        self.target, self.schemas, self.log, self.say = target, schemas, log, say
        self.connect_timeout, self.wait = timeouts
        self.seen: list[Blocker] = []  # the last sessions found in the way
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="blocker-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        if self._stop.wait(GRACE_SECONDS):
            return
        try:
            with connect(self.target, self.connect_timeout, autocommit=True) as conn:
                told: set[int] = set()
                while not self._stop.is_set():
                    found = find_blockers(conn, self.schemas)
                    if found:
                        self.seen = found
                    if found and {b.pid for b in found} - told:
                        told |= {b.pid for b in found}
                        notice = waiting_notice(found, self.wait)
                        self.log.warning("%s", notice)
                        self.say(notice)
                    self._stop.wait(POLL_SECONDS)
        except psycopg.Error as exc:  # the watch only informs: never fail the restore
            self.log.info("could not look for sessions blocking the restore: %s", exc)

    def named(self, message: str) -> str:
        """`message` (a failure) with the sessions it waited for, when it waited for any."""
        if not self.seen or "locked by another session" not in message:
            return message
        if all(f"pid {b.pid} (" in message for b in self.seen):  # named already
            return message
        return f"{message.rstrip('.')}. It waited for {describe_all(self.seen)}."


@contextlib.contextmanager
def watching(
    target: Target,
    schemas: list[str],
    timeouts: tuple[int, int],
    log: logging.Logger,
    say: Callable[[str], None],
) -> Iterator[BlockerWatch]:
    watch = BlockerWatch(target, schemas, timeouts, log, say)
    watch.start()
    try:
        yield watch
    finally:
        watch.stop()
