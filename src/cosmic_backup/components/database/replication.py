"""Logical replication on the target: read before anything is changed, and what it means.

Three things tie a database to replication, and a restore must know them first:

- **Logical replication slots** (``pg_replication_slots``) belong to the database's oid. A
  ``--jobs`` restore puts a new database in its place and drops the old one, and
  ``DROP DATABASE`` drops its inactive slots with it: a CDC consumer's position is lost.
  The one-transaction restore keeps the database, so it keeps them.
- **Walsenders** streaming from it (``pg_stat_activity`` backend_type ``walsender``) are
  sessions the swap must wait for, which ``--terminate-sessions`` does not end (they are
  not the app's).
- **Subscriptions** of the database (``pg_subscription``): their apply workers are
  sessions too; ``DROP DATABASE`` refuses a database that has one; and a restore in one
  transaction cannot replace one (``DROP SUBSCRIPTION cannot run inside a transaction
  block``). So a subscriber is refused, with the statements that detach it while keeping
  its slot on the publisher, and the one that re-attaches it afterwards.

pg_replication_slots, pg_subscription (without its connection string) and
pg_stat_activity's pid, user and application are readable by any role.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg
from psycopg import sql

_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_]*")
SLOTS_QUERY = """
SELECT slot_name, coalesce(plugin, ''), active
FROM pg_catalog.pg_replication_slots
WHERE slot_type = 'logical' AND database = %s ORDER BY 1
"""
WALSENDERS_QUERY = """
SELECT pid, coalesce(usename, '?'), coalesce(application_name, '')
FROM pg_catalog.pg_stat_activity
WHERE backend_type = 'walsender' AND datname = %s ORDER BY 1
"""
SUBSCRIPTIONS_QUERY = """
SELECT s.subname, s.subenabled
FROM pg_catalog.pg_subscription s
JOIN pg_catalog.pg_database d ON d.oid = s.subdbid
WHERE d.datname = %s ORDER BY 1
"""


@dataclass(frozen=True)
class Slot:
    name: str
    plugin: str
    active: bool


@dataclass(frozen=True)
class Walsender:
    pid: int
    user: str
    application: str


@dataclass(frozen=True)
class Replication:
    slots: tuple[Slot, ...]
    walsenders: tuple[Walsender, ...]
    subscriptions: tuple[str, ...]


def read_replication(conn: psycopg.Connection, dbname: str) -> Replication:
    """What ties database `dbname` to logical replication (any connection to its server)."""
    slots = tuple(Slot(*row) for row in conn.execute(SLOTS_QUERY, [dbname]).fetchall())
    senders = tuple(Walsender(*row) for row in conn.execute(WALSENDERS_QUERY, [dbname]))
    subscriptions = tuple(row[0] for row in conn.execute(SUBSCRIPTIONS_QUERY, [dbname]))
    return Replication(slots, senders, subscriptions)


def subscriber_refusal(dbname: str, subscriptions: tuple[str, ...]) -> str:
    """The sentence refusing to restore over a subscriber, with how to detach and re-attach."""
    detach = " ".join(_detach_statements(name) for name in subscriptions)
    names = ", ".join(subscriptions)
    enable = " ".join(f"ALTER SUBSCRIPTION {_shown(n)} ENABLE;" for n in subscriptions)
    return (
        f"Database {dbname} has the logical replication subscription(s) {names}, which a "
        "restore cannot replace (DROP SUBSCRIPTION cannot run in the restore's transaction, "
        "and a database with a subscription cannot be dropped); nothing was changed. Drop "
        f"the subscription first, keeping its slot on the publisher: {detach} Then restore; "
        f"a backup taken by a superuser recreates it disabled, and {enable} resumes it "
        "(else create it again)."
    )


def _shown(name: str) -> str:
    """A name as the operator types it: quoted only when it must be."""
    if _PLAIN_NAME.fullmatch(name):
        return name
    return sql.Identifier(name).as_string(None)


def _detach_statements(name: str) -> str:
    ident = _shown(name)
    return (
        f"ALTER SUBSCRIPTION {ident} DISABLE; ALTER SUBSCRIPTION {ident} SET (slot_name = "
        f"NONE); DROP SUBSCRIPTION {ident};"
    )


def jobs_obstacle(jobs: int, dbname: str, found: Replication) -> str | None:
    """Why --jobs would lose or trip on the database's replication; None when nothing does."""
    parts = []
    if found.slots:
        named = ", ".join(f"{s.name} ({s.plugin})" for s in found.slots)
        parts.append(
            f"the logical replication slot(s) {named}, which belong to the database and "
            "would be dropped with it"
        )
    if found.walsenders:
        named = ", ".join(
            f"pid {w.pid} (user {w.user}, application {w.application or '-'})"
            for w in found.walsenders
        )
        parts.append(f"the walsender(s) {named} streaming from it, which would block the swap")
    if not parts:
        return None
    return (
        f"--jobs {jobs} restores into a new database that replaces {dbname}, and {dbname} "
        f"has {'; and '.join(parts)}; restoring in one transaction instead, which keeps "
        "the slots."
    )


def slots_note(found: Replication) -> list[str]:
    """What the one-transaction restore means for the slots it keeps."""
    if not found.slots:
        return []
    names = ", ".join(s.name for s in found.slots)
    return [
        f"The logical replication slot(s) {names} stay: their consumers receive the restore "
        "as one large transaction."
    ]


def restored_subscriptions_note(conn: psycopg.Connection, dbname: str) -> list[str]:
    """After a restore (the target had no subscription: it would have been refused), the
    backup's subscriptions, which pg_dump writes disabled, and how to resume them."""
    rows = conn.execute(SUBSCRIPTIONS_QUERY, [dbname]).fetchall()
    disabled = [name for name, enabled in rows if not enabled]
    if not disabled:
        return []
    enable = " ".join(f"ALTER SUBSCRIPTION {_shown(n)} ENABLE;" for n in disabled)
    return [
        f"The backup's subscription(s) {', '.join(disabled)} were restored disabled (as "
        f"pg_dump writes them): {enable} resumes them from the publisher's slot."
    ]


# -- our own databases, which a restored subscription would keep from being dropped -----
def disarm_subscriptions(conn: psycopg.Connection) -> list[str]:
    """Drop the subscriptions of the database `conn` is connected to, never touching the
    slot on the publisher (slot_name = NONE first: the real subscriber may use it).

    Only for the databases a --jobs restore created: their subscriptions come from the
    dump (created disabled, with connect = false), not from a live subscriber."""
    names = [
        row[0]
        for row in conn.execute(
            "SELECT subname FROM pg_catalog.pg_subscription "
            "WHERE subdbid = (SELECT oid FROM pg_catalog.pg_database "
            "WHERE datname = current_database())"
        )
    ]
    for name in names:
        ident = sql.Identifier(name)
        conn.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
        conn.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident))
        conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))
    return names
