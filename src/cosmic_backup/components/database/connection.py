"""Connecting to PostgreSQL: a test with retries and back-off, and one sentence per failure.

A serverless compute (Neon, a paused Supabase project) may take many seconds to wake up,
so transient failures are retried for a while (BACKUP_CONNECT_WAIT, 30 s by default); a
wrong password or a missing database is not, since waiting cannot fix it.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

import psycopg

from cosmic_backup.components.database.url import Target
from cosmic_backup.errors import OperationFailed
from cosmic_backup.redact import redact

BACKOFF_SECONDS = (1, 2, 4, 8)


@dataclass(frozen=True)
class ServerInfo:
    version: str  # e.g. "15.18"
    version_num: int  # e.g. 150018

    @property
    def major(self) -> int:
        return self.version_num // 10000


class ConnectionFailed(OperationFailed):
    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


# (phrases in libpq's message, permanent?, the sentence); the first match wins.
_DIAGNOSES: tuple[tuple[tuple[str, ...], bool, str], ...] = (
    (
        ("password authentication failed", "authentication failed", 'role "" does not exist'),
        True,
        "Authentication failed for user {user} ({where}): check the user and password in "
        "DATABASE_URL.",
    ),
    (
        ("no password supplied", "password is required"),
        True,
        "The server asks for a password and DATABASE_URL has none ({where}).",
    ),
    (
        ('database "" does not exist',),
        True,
        "The database {dbname} does not exist on {host}: check the name in DATABASE_URL.",
    ),
    (
        ("invalid response to ssl negotiation", "received invalid response"),
        True,
        "Something answers at {where}, but it is not a PostgreSQL server: check the host "
        "and the port in DATABASE_URL.",
    ),
    (
        ("ssl", "no encryption"),
        True,
        "The server requires SSL (or refused the SSL settings) for {where}: add "
        "?sslmode=require to DATABASE_URL.",
    ),
    (
        ("timeout expired", "timed out"),
        False,
        "Connecting to {where} timed out after {timeout} s: check the host, the port and the "
        "firewall (a serverless database may need longer: BACKUP_CONNECT_TIMEOUT).",
    ),
    (
        ("could not translate host name", "name or service not known", "name resolution"),
        True,
        "The host {host} cannot be resolved: check the host name in DATABASE_URL.",
    ),
    (
        ("connection refused", "no such file or directory"),
        False,
        "Nothing accepts connections at {where} (connection refused): is the server running "
        "and the port right?",
    ),
    (
        ("no route to host", "network is unreachable", "host is unreachable"),
        False,
        "The host {host} is unreachable from here: check the network and the firewall.",
    ),
    (
        ("too many clients", "too many connections", "remaining connection slots"),
        False,
        "The server at {where} has no free connection slot (too many connections); try again "
        "later or raise max_connections.",
    ),
    (
        ("server closed the connection unexpectedly",),
        False,
        "The server at {where} closed the connection before it was established: it may be "
        "restarting or overloaded.",
    ),
)
# libpq quotes the names it mentions (host, user, database): they are taken out before
# matching, so a host called "ssl-db" or a database called "timeout" cannot steer it.
_QUOTED = re.compile(r'"[^"]*"')


def explain(exc: Exception, target: Target, timeout: int) -> ConnectionFailed:
    """One sentence for a connection failure, and whether retrying could help."""
    text = str(exc)
    lowered = _QUOTED.sub('""', text).lower()
    names = {
        "where": target.describe(),
        "user": target.user or "?",
        "dbname": target.dbname,
        "host": target.host,
        "timeout": timeout,
    }
    for phrases, permanent, sentence in _DIAGNOSES:
        if any(phrase in lowered for phrase in phrases):
            return ConnectionFailed(sentence.format(**names), permanent=permanent)
    first_line = redact(text.strip().splitlines()[0] if text.strip() else type(exc).__name__)
    return ConnectionFailed(f"Cannot connect to {names['where']}: {first_line}.", permanent=False)


def connect(target: Target, timeout: int, **kwargs: object) -> psycopg.Connection:
    return psycopg.connect(
        target.conninfo(), password=target.password or None, connect_timeout=timeout, **kwargs
    )  # type: ignore[arg-type]


def check_connection(
    target: Target, *, timeout: int, attempts: int, log: logging.Logger, wait: float = 0
) -> ServerInfo:
    """`SELECT 1` with retries; returns the server's version or raises one sentence.

    A transient failure is retried with back-off while fewer than `attempts` were made
    and less than `wait` seconds have passed since the first began; the last pause is
    cut short so that one attempt starts at the end of the window."""
    deadline = time.monotonic() + wait
    last: ConnectionFailed | None = None
    for attempt in range(1, max(attempts, 1) + 1):
        try:
            with connect(target, timeout, autocommit=True) as conn:
                conn.execute("SELECT 1")
                row = conn.execute(
                    "SELECT current_setting('server_version'), "
                    "current_setting('server_version_num')::int"
                ).fetchone()
                assert row is not None
                return ServerInfo(str(row[0]).split()[0], int(row[1]))
        except psycopg.Error as exc:
            last = explain(exc, target, timeout)
            log.warning("connection attempt %d failed: %s", attempt, last.message)
            left = deadline - time.monotonic()
            if last.permanent or attempt >= attempts or left <= 0:
                break
            time.sleep(min(BACKOFF_SECONDS[min(attempt - 1, len(BACKOFF_SECONDS) - 1)], left))
    assert last is not None
    raise last
