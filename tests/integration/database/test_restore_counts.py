"""The row counts a restore checks against the backup's: exact per table (ONLY, dotted
names, a missing table) and counted in several sessions at once, so one large table's
scan does not wait for the others'."""

from __future__ import annotations

import threading
import time

import psycopg

from cosmic_backup.components.database.restore import COUNT_CONNECTIONS, current_row_counts
from cosmic_backup.components.database.url import parse_database_url
from tests.integration.database.conftest import PostgresServer

TABLES = """
CREATE TABLE public.a_locked (id int);
INSERT INTO public.a_locked SELECT generate_series(1, 5);
CREATE TABLE public.animals (id int);
CREATE TABLE public.dogs () INHERITS (public.animals);
INSERT INTO public.animals VALUES (1), (2);
INSERT INTO public.dogs VALUES (3);
CREATE SCHEMA "x.y";
CREATE TABLE "x.y".z (id int);
INSERT INTO "x.y".z VALUES (1);
CREATE SCHEMA x;
CREATE TABLE x."y.z" (id int);
CREATE TABLE public.many (id int);
INSERT INTO public.many SELECT generate_series(1, 1000);
"""

LOCKED_COUNT = 'SELECT count(*) FROM ONLY "public"."a_locked"'


def test_counts_are_exact_per_table(postgres: PostgresServer) -> None:
    url = postgres.url(postgres.create_database("counts"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(TABLES)
    names = ["public.animals", "public.dogs", "x.y.z", "public.many", "public.gone"]
    names.append("public.a_locked")
    assert len(names) > COUNT_CONNECTIONS  # a session counts more than one table
    counts = current_row_counts(parse_database_url(url), names, 10)
    # "x.y.z" is both x."y.z" (no row) and "x.y".z (1 row): the first in (schema, table)
    # order is counted, as before the counts ran in parallel.
    expected = {"public.animals": 2, "public.dogs": 1, "x.y.z": 0, "public.many": 1000}
    assert counts == {**expected, "public.gone": None, "public.a_locked": 5}


def test_a_table_being_waited_for_does_not_hold_up_the_others(
    postgres: PostgresServer,
) -> None:
    """One session per table at once: while the count of a locked table waits, another
    session has already counted the next table (one session would still be waiting)."""
    url = postgres.url(postgres.create_database("counts"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(TABLES)
    result: dict[str, int | None] = {}
    with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as watcher:
        holder.execute("LOCK TABLE public.a_locked IN ACCESS EXCLUSIVE MODE")
        counting = threading.Thread(
            target=lambda: result.update(
                current_row_counts(parse_database_url(url), ["public.a_locked", "public.many"], 10)
            )
        )
        counting.start()
        try:
            assert _counted_while_waiting(watcher, LOCKED_COUNT, "many")
        finally:
            holder.rollback()  # the lock is released: the waiting count ends
            counting.join(30)
    assert result == {"public.a_locked": 5, "public.many": 1000}


def _counted_while_waiting(watcher: psycopg.Connection, waiting: str, other: str) -> bool:
    """Whether, while a session's query `waiting` waits for its lock, the table `other`
    has been scanned (its count's session ended, so its statistics are in)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        blocked = watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query = %s",
            [waiting],
        ).fetchone()
        scans = watcher.execute(
            "SELECT seq_scan FROM pg_stat_user_tables WHERE relid = %s::regclass",
            [f"public.{other}"],
        ).fetchone()
        if blocked and blocked[0] and scans and scans[0]:
            return True
        time.sleep(0.05)
    return False
