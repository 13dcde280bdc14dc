"""Restores of databases tied to logical replication (issue 18 item 7), on a real server
with wal_level=logical: a CDC slot (test_decoding), a publisher streaming to a real
subscription in another database of the same server, and that subscriber itself.

Slots, walsenders and subscriptions are read before anything is changed: --jobs falls
back to the one-transaction restore, which keeps the slots; a subscriber is refused with
the statements that detach it; our own new database that holds the dump's subscription
is still dropped."""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from cosmic_backup.components.database import newdb
from cosmic_backup.components.database.url import parse_database_url
from tests.conftest import Project
from tests.integration.database.appdb import execute, scalar
from tests.integration.database.conftest import PostgresServer
from tests.integration.database.test_jobs_restore import KEY, RESTORE, databases, dbname

_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{next(_names)}"


def slots_of(postgres: PostgresServer, name: str) -> list[str]:
    with postgres.admin() as conn:
        rows = conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = %s ORDER BY 1", [name]
        ).fetchall()
    return [row[0] for row in rows]


def subscription_slot(url: str, subscription: str) -> str | None:
    """The slot subscription `subscription` uses; None when there is no such subscription."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT subslotname FROM pg_subscription WHERE subname = %s", [subscription]
        ).fetchone()
    return row[0] if row else None


def backed_up(project: Project, url: str) -> Project:
    project.env.update({"DATABASE_URL": url, "BACKUP_KEY": KEY})
    made = project.run("backup", "database")
    assert made.returncode == 0, made.stderr
    return project


@dataclass
class Pair:
    """A publisher database and a subscriber database streaming from it."""

    pub_url: str
    sub_url: str
    subscription: str
    slot: str


def detach(url: str, subscription: str) -> None:
    execute(
        url,
        f"ALTER SUBSCRIPTION {subscription} DISABLE",
        f"ALTER SUBSCRIPTION {subscription} SET (slot_name = NONE)",
        f"DROP SUBSCRIPTION {subscription}",
    )


@pytest.fixture
def pair(postgres: PostgresServer) -> Iterator[Pair]:
    pub = postgres.create_database("pub")
    sub = postgres.create_database("sub")
    pub_url, sub_url = postgres.url(pub), postgres.url(sub)
    name = unique("sub")
    execute(
        pub_url,
        "CREATE TABLE t (id int PRIMARY KEY)",
        "INSERT INTO t SELECT generate_series(1, 50)",
        f"CREATE PUBLICATION {name}_pub FOR TABLE t",
        f"SELECT pg_create_logical_replication_slot('{name}', 'pgoutput')",
    )
    conninfo = f"host=127.0.0.1 port={postgres.port} dbname={pub} user=postgres"
    execute(
        sub_url,
        "CREATE TABLE t (id int PRIMARY KEY)",
        f"CREATE SUBSCRIPTION {name} CONNECTION '{conninfo} password={postgres.password}' "
        f"PUBLICATION {name}_pub WITH (connect = false)",
        f"ALTER SUBSCRIPTION {name} ENABLE",
    )
    deadline = time.monotonic() + 30
    while not scalar(pub_url, "SELECT count(*) FROM pg_stat_replication"):
        assert time.monotonic() < deadline, "the subscription never connected"
        time.sleep(0.1)
    yield Pair(pub_url, sub_url, name, name)
    if subscription_slot(sub_url, name) is not None:
        detach(sub_url, name)
    with postgres.admin() as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s AND NOT active",
            [name],
        )


def test_jobs_with_a_cdc_slot_restores_in_one_transaction_and_keeps_the_slot(
    project: Project, postgres: PostgresServer
) -> None:
    name = postgres.create_database("cdc")
    url = postgres.url(name)
    execute(url, "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 200) g")
    backed_up(project, url)
    slot = unique("cdc")
    execute(url, f"SELECT pg_create_logical_replication_slot('{slot}', 'test_decoding')")
    execute(url, "DELETE FROM t WHERE id > 10")
    try:
        result = project.run(*RESTORE, "--jobs", "2")
        assert result.returncode == 0, result.stderr
        said = result.stdout + result.stderr
        assert f"the logical replication slot(s) {slot} (test_decoding)" in said
        assert "restoring in one transaction instead, which keeps the slots" in said
        assert scalar(url, "SELECT count(*) FROM t") == 200
        assert slots_of(postgres, name) == [slot]  # the CDC consumer's position is kept
        assert databases(postgres, f"{name}_cosmic_") == []
    finally:
        execute(url, f"SELECT pg_drop_replication_slot('{slot}')")


def test_jobs_of_a_publisher_names_its_walsender_and_keeps_its_slot(
    project: Project, postgres: PostgresServer, pair: Pair
) -> None:
    backed_up(project, pair.pub_url)
    execute(pair.pub_url, "DELETE FROM t WHERE id > 5")
    pub = dbname(pair.pub_url)

    result = project.run(*RESTORE, "--jobs", "2", "--terminate-sessions")
    assert result.returncode == 0, result.stderr
    said = result.stdout + result.stderr
    assert f"the logical replication slot(s) {pair.slot} (pgoutput)" in said
    assert "the walsender(s) pid " in said and f"application {pair.subscription})" in said
    assert "restoring in one transaction instead" in said
    assert scalar(pair.pub_url, "SELECT count(*) FROM t") == 50
    assert slots_of(postgres, pub) == [pair.slot]
    assert databases(postgres, f"{pub}_cosmic_") == []


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_subscriber_is_refused_before_anything_with_the_way_to_detach_it(
    project: Project, postgres: PostgresServer, pair: Pair, jobs: str
) -> None:
    backed_up(project, pair.sub_url)
    execute(pair.sub_url, "INSERT INTO t VALUES (1000)")
    sub = dbname(pair.sub_url)
    made = len(list(project.backups.joinpath("database").glob("*.json")))

    result = project.run("restore", "database", "latest", "--yes", "--jobs", jobs)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    s = pair.subscription
    assert f"has the logical replication subscription(s) {s}" in result.stderr
    assert (
        f"ALTER SUBSCRIPTION {s} DISABLE; ALTER SUBSCRIPTION {s} SET (slot_name = NONE); "
        f"DROP SUBSCRIPTION {s};" in result.stderr
    )
    assert "nothing was changed" in result.stderr
    # Nothing was changed: no pre-restore backup, no new database, the row still there.
    assert len(list(project.backups.joinpath("database").glob("*.json"))) == made
    assert databases(postgres, f"{sub}_cosmic_") == []
    assert scalar(pair.sub_url, "SELECT count(*) FROM t WHERE id = 1000") == 1

    # The advice works: detached, the restore runs, the subscription comes back disabled
    # with its slot, and ENABLE resumes it from the publisher's slot.
    detach(pair.sub_url, s)
    again = project.run(*RESTORE, "--jobs", jobs)
    assert again.returncode == 0, again.stderr
    assert scalar(pair.sub_url, "SELECT count(*) FROM t WHERE id = 1000") == 0
    assert subscription_slot(pair.sub_url, s) == pair.slot
    assert f"restored disabled (as pg_dump writes them): ALTER SUBSCRIPTION {s} ENABLE;" in (
        again.stdout
    )
    assert databases(postgres, f"{sub}_cosmic_") == []


def test_a_new_database_holding_the_dumps_subscription_is_still_dropped(
    postgres: PostgresServer, pair: Pair
) -> None:
    # What a --jobs restore of a subscriber's backup leaves when it fails before the swap:
    # the dump's subscription (disabled, connect = false), which DROP DATABASE refuses.
    ours = postgres.create_database("ours")
    conninfo = f"host=127.0.0.1 port={postgres.port} dbname={dbname(pair.pub_url)}"
    execute(
        postgres.url(ours),
        f"CREATE SUBSCRIPTION {pair.subscription} CONNECTION '{conninfo}' "
        f"PUBLICATION {pair.subscription}_pub WITH (connect = false, slot_name = "
        f"'{pair.slot}')",
    )
    target = parse_database_url(pair.sub_url)
    with postgres.admin() as conn:
        assert not newdb.drop(conn, ours, logging.getLogger("test"))  # as before
        assert newdb.drop(conn, ours, logging.getLogger("test"), ours_on=target)
    assert databases(postgres, ours) == []
    # The real subscriber's slot on the publisher was not dropped with the copy.
    assert slots_of(postgres, dbname(pair.pub_url)) == [pair.slot]
