"""The new database a `--jobs` restore fills, and the swap that puts it in the target's place.

Everything here runs on the `postgres` maintenance database of the target's server:
a database cannot be created, renamed or dropped from a session connected to it.

- The new database is named ``<target>_cosmic_<token>`` and carries, until the swap, a
  comment naming the run that owns it (pid, its start time, host): the next run on this
  host drops it when that run is gone (killed), and never one whose owner is alive.
- It is created like the target (owner, encoding, locale, tablespace unless pg_default,
  from template0)
  and given the target's database-level grants and settings, which a dump without
  --create does not hold. Its connection limit is set at the swap, so that pg_restore's
  N connections are not refused meanwhile.
- The swap is one short transaction: ``ALTER DATABASE target RENAME TO
  target_cosmic_old_<token>; ALTER DATABASE new RENAME TO target`` (PostgreSQL allows
  RENAME in a transaction block; CREATE and DROP DATABASE it does not). A rename needs
  no other session on either database, so it is tried only when none is connected.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cosmic_backup.components.database.blockers import Blocker, connected_sessions
from cosmic_backup.components.database.connection import connect
from cosmic_backup.components.database.replication import disarm_subscriptions
from cosmic_backup.components.database.url import Target
from cosmic_backup.process import mark_alive, process_mark

MARK = "_cosmic_"
OLD_MARK = "_cosmic_old_"
OWNER_NOTE = "cosmic-backup --jobs restore in progress "
DEFAULT_TABLESPACE = "pg_default"  # template0's
MAX_NAME_BYTES = 63  # NAMEDATALEN - 1: longer names are cut by the server
SWAP_POLL = 0.5
SWAP_GRACE = 1.0  # a swap that waits less than this is not worth a word
# Settings whose value the server stores as a list of quoted identifiers.
LIST_SETTINGS = frozenset(
    {"search_path", "temp_tablespaces", "session_preload_libraries", "local_preload_libraries"}
)

TARGET_QUERY = """
SELECT r.rolsuper, r.rolcreatedb, pg_has_role(d.datdba, 'MEMBER'),
       to_jsonb(d) - 'datfrozenxid' - 'datminmxid', pg_get_userbyid(d.datdba),
       pg_encoding_to_char(d.encoding), t.spcname,
       shobj_description(d.oid, 'pg_database')
FROM pg_catalog.pg_roles r, pg_catalog.pg_database d
JOIN pg_catalog.pg_tablespace t ON t.oid = d.dattablespace
WHERE r.rolname = current_user AND d.datname = %s
"""
SESSIONS_QUERY = """
SELECT count(*) FROM pg_catalog.pg_stat_activity
WHERE datname = ANY (%s) AND pid <> pg_backend_pid() AND backend_type = 'client backend'
"""


def maintenance(target: Target) -> Target:
    """The same server and credentials, connected to the `postgres` database."""
    return Target({**target.params, "dbname": "postgres"}, target.notes)


def connect_maintenance(target: Target, timeout: int, *, autocommit: bool = True) -> Any:
    return connect(maintenance(target), timeout, autocommit=autocommit)


@dataclass(frozen=True)
class Shape:
    """What the target is, as far as a new database copies it, and what we may do."""

    name: str
    superuser: bool
    createdb: bool
    owns: bool  # a member of the owner role (ownership is what RENAME checks)
    row: dict[str, Any]  # pg_database's row, whatever this server's columns are
    owner: str
    encoding: str
    tablespace: str
    comment: str | None


def read_shape(conn: psycopg.Connection, name: str) -> Shape | None:
    found = conn.execute(TARGET_QUERY, [name]).fetchone()
    if found is None:
        return None
    superuser, createdb, owns, row, owner, encoding, tablespace, comment = found
    return Shape(name, superuser, createdb, owns, row, owner, encoding, tablespace, comment)


def other_sessions(conn: psycopg.Connection, names: list[str]) -> int:
    row = conn.execute(SESSIONS_QUERY, [names]).fetchone()
    return int(row[0]) if row else 0


# -- names -----------------------------------------------------------------------------
def _base(target_name: str, mark: str, token: str) -> str:
    """The target's name, cut (on a character boundary) so that base+mark+token fits."""
    room = MAX_NAME_BYTES - len(mark) - len(token)
    cut = target_name.encode()[:room].decode(errors="ignore")
    return cut


def new_name(target_name: str, token: str) -> str:
    return f"{_base(target_name, MARK, token)}{MARK}{token}"


def old_name(target_name: str, token: str) -> str:
    return f"{_base(target_name, OLD_MARK, token)}{OLD_MARK}{token}"


def _prefix(target_name: str) -> str:
    """What every new database of this target begins with (tokens are 6 characters)."""
    return f"{_base(target_name, MARK, 'x' * 6)}{MARK}"


# -- ownership marks -------------------------------------------------------------------
def owner_mark() -> dict[str, Any]:
    return {**process_mark(), "host": socket.gethostname()}


# -- creating, filling, dropping -------------------------------------------------------
def create_like(conn: psycopg.Connection, shape: Shape, name: str) -> None:
    """CREATE DATABASE `name` like the target, marked as ours until the swap."""
    conn.execute(_create_statement(shape, name))
    note = OWNER_NOTE + json.dumps(owner_mark())
    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(_ident(name), note))


def _create_statement(shape: Shape, name: str) -> sql.Composed:
    row = shape.row
    parts = [
        sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
            _ident(name), _ident(shape.owner)
        ),
        # No connection limit while pg_restore's N connections fill it: the target's is
        # set in the swap.
        sql.SQL("ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            shape.encoding, row["datcollate"], row["datctype"]
        ),
    ]
    if shape.tablespace != DEFAULT_TABLESPACE:
        # Named, a tablespace needs CREATE on it, which a CREATEDB role lacks even on
        # pg_default; left out, the new database gets template0's, pg_default, unchecked.
        parts.append(sql.SQL("TABLESPACE {}").format(_ident(shape.tablespace)))
    provider = row.get("datlocprovider")  # 15+: c (libc), i (ICU), b (builtin, 17+)
    locale = row.get("datlocale") or row.get("daticulocale")
    if provider == "i":
        parts.append(sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(locale or ""))
        if row.get("daticurules"):
            parts.append(sql.SQL("ICU_RULES {}").format(row["daticurules"]))
    elif provider == "b":
        parts.append(sql.SQL("LOCALE_PROVIDER builtin BUILTIN_LOCALE {}").format(locale or ""))
    elif provider == "c":
        parts.append(sql.SQL("LOCALE_PROVIDER libc"))
    return sql.SQL(" ").join(parts)


def copy_properties(conn: psycopg.Connection, shape: Shape, name: str) -> None:
    """The target's grants on the database and its ALTER DATABASE ... SET settings, which
    live in the shared catalogs, not in the dump."""
    if shape.row.get("datacl") is not None:
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(_ident(name)))
        grants = conn.execute(
            "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, "
            "a.privilege_type, a.is_grantable FROM pg_catalog.pg_database d, "
            "aclexplode(d.datacl) a WHERE d.datname = %s",
            [shape.name],
        ).fetchall()
        for grantee, privilege, grantable in grants:
            conn.execute(_grant(name, grantee, privilege, grantable))
    settings = conn.execute(
        "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END, "
        "unnest(s.setconfig) FROM pg_catalog.pg_db_role_setting s "
        "JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase WHERE d.datname = %s",
        [shape.name],
    ).fetchall()
    for role, setting in settings:
        conn.execute(_setting(name, role, setting))


def _grant(name: str, grantee: str | None, privilege: str, grantable: bool) -> sql.Composed:
    who = sql.SQL("PUBLIC") if grantee is None else _ident(grantee)
    option = sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL("")
    return sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
        sql.SQL(privilege), _ident(name), who, option
    )


def _setting(name: str, role: str | None, setting: str) -> sql.Composed:
    key, _, value = setting.partition("=")
    where = sql.SQL("ALTER DATABASE {}").format(_ident(name))
    if role is not None:
        where = sql.SQL("ALTER ROLE {} IN DATABASE {}").format(_ident(role), _ident(name))
    variable = sql.SQL(".").join(_ident(part) for part in key.split("."))
    if key.lower() in LIST_SETTINGS:
        items = sql.SQL(", ").join(sql.Literal(item) for item in split_list(value))
        return sql.SQL("{} SET {} TO {}").format(where, variable, items)
    return sql.SQL("{} SET {} TO {}").format(where, variable, sql.Literal(value))


def split_list(value: str) -> list[str]:
    """The items of a stored list setting, unquoted: 'app, "$user"' -> app, $user."""
    items: list[str] = []
    current, quoted, i = "", False, 0
    while i < len(value):
        char = value[i]
        if quoted:
            if char == '"' and value[i + 1 : i + 2] == '"':
                current += '"'
                i += 1
            elif char == '"':
                quoted = False
            else:
                current += char
        elif char == '"':
            quoted = True
        elif char == ",":
            items.append(current.strip())
            current = ""
        else:
            current += char
        i += 1
    items.append(current.strip())
    return [item for item in items if item]


def drop(
    conn: psycopg.Connection,
    name: str,
    log: logging.Logger,
    *,
    ours_on: Target | None = None,
    timeout: int = 10,
) -> bool:
    """Drop one of OUR databases (its sessions are our own pg_restore's); True if gone.

    With `ours_on` (the target, for its server and credentials), a database we created
    that holds the dump's subscriptions, which DROP DATABASE refuses, loses them first."""
    try:
        _drop_statement(conn, name)
    except psycopg.errors.ObjectInUse as exc:
        if ours_on is None or not _has_subscriptions(conn, name):
            log.warning("could not drop the database %s: %s", name, exc)
            return False
        return _drop_subscriber(conn, name, log, ours_on, timeout)
    except psycopg.Error as exc:
        log.warning("could not drop the database %s: %s", name, exc)
        return False
    return True


def _drop_statement(conn: psycopg.Connection, name: str) -> None:
    statement = sql.SQL("DROP DATABASE IF EXISTS {}").format(_ident(name))
    try:
        conn.execute(statement + sql.SQL(" WITH (FORCE)"))
    except psycopg.errors.SyntaxError:  # before PostgreSQL 13
        conn.execute(statement)


def _has_subscriptions(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_catalog.pg_subscription s JOIN pg_catalog.pg_database d "
        "ON d.oid = s.subdbid WHERE d.datname = %s",
        [name],
    ).fetchone()
    return bool(row and row[0])


def _drop_subscriber(
    conn: psycopg.Connection, name: str, log: logging.Logger, target: Target, timeout: int
) -> bool:
    try:
        inside = Target({**target.params, "dbname": name}, target.notes)
        with connect(inside, timeout, autocommit=True) as own:
            dropped = disarm_subscriptions(own)
        log.info("dropped the subscription(s) %s the dump made in %s", dropped, name)
        _drop_statement(conn, name)
    except psycopg.Error as exc:
        log.warning("could not drop the database %s: %s", name, exc)
        return False
    return True


# -- the swap --------------------------------------------------------------------------
@dataclass(frozen=True)
class SwapResult:
    done: bool
    sessions: int  # other sessions connected when it gave up
    who: tuple[Blocker, ...] = ()  # and which


def swap(
    target: Target,
    shape: Shape,
    new: str,
    old: str,
    *,
    wait: int,
    terminate: bool,
    timeout: int,
    on_wait: Callable[[list[Blocker]], None] = lambda _sessions: None,
) -> SwapResult:
    """Rename target -> old and new -> target in one transaction, once no other session is
    connected to either; wait up to `wait` seconds for that (ending the target's sessions
    first when `terminate`). After a second of waiting, `on_wait` is told which sessions
    it waits for, again whenever a new one comes."""
    began = time.monotonic()
    deadline, told = began + wait, set[int]()
    with connect_maintenance(target, timeout, autocommit=False) as conn:
        conn.execute(sql.SQL("SET lock_timeout = {}").format(f"{wait}s"))
        conn.commit()
        while True:
            if terminate:
                _terminate(conn, shape.name)
            sessions = other_sessions(conn, [shape.name, new])
            conn.commit()
            if sessions == 0:
                try:
                    _rename_pair(conn, shape, new, old)
                    return SwapResult(True, 0)
                except psycopg.errors.ObjectInUse:
                    conn.rollback()  # a session came in between (or a walsender): again
                    sessions = 1
            who = connected_sessions(conn, [shape.name, new])
            conn.commit()
            if who and time.monotonic() - began >= SWAP_GRACE and {b.pid for b in who} - told:
                told |= {b.pid for b in who}
                on_wait(who)
            if time.monotonic() >= deadline:
                return SwapResult(False, max(sessions, len(who)), tuple(who))
            time.sleep(SWAP_POLL)


def _rename_pair(conn: psycopg.Connection, shape: Shape, new: str, old: str) -> None:
    rename = sql.SQL("ALTER DATABASE {} RENAME TO {}")
    conn.execute(rename.format(_ident(shape.name), _ident(old)))
    conn.execute(rename.format(_ident(new), _ident(shape.name)))
    # In the same transaction, the restored database stops being marked as a run's own
    # (which the next run would drop) and gets the target's comment.
    comment = sql.SQL("COMMENT ON DATABASE {} IS {}")
    conn.execute(comment.format(_ident(shape.name), shape.comment))
    limit = sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}")
    conn.execute(limit.format(_ident(shape.name), int(shape.row.get("datconnlimit", -1))))
    conn.commit()


def _terminate(conn: psycopg.Connection, name: str) -> None:
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE datname = %s "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        [name],
    )


# -- leftovers of killed runs ----------------------------------------------------------
def leftover_databases(conn: psycopg.Connection, target_name: str) -> tuple[list[str], list[str]]:
    """(new databases of this target whose run is gone, old copies kept by earlier runs)."""
    rows = conn.execute(
        "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_catalog.pg_database "
        "WHERE starts_with(datname, %s) ORDER BY 1",
        [_prefix(target_name)],
    ).fetchall()
    old_prefix = f"{_base(target_name, OLD_MARK, 'x' * 6)}{OLD_MARK}"
    gone, kept = [], []
    for name, comment in rows:
        if name.startswith(old_prefix):
            kept.append(name)
        elif (comment or "").startswith(OWNER_NOTE) and _gone(comment[len(OWNER_NOTE) :]):
            gone.append(name)
    return gone, kept


def _gone(text: str) -> bool:
    """Whether the run that wrote this mark has ended; only on this host can we tell."""
    try:
        mark = json.loads(text)
    except ValueError:
        return False
    return mark.get("host") == socket.gethostname() and not mark_alive(mark)


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)
