"""Connecting to PostgreSQL: a test with retries and back-off, and one sentence per failure.

A serverless compute (Neon) may take seconds to wake up, so transient failures are
retried; a wrong password or a missing database is not, since waiting cannot fix it.
"""

from __future__ import annotations

import logging
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


def explain(exc: Exception, target: Target, timeout: int) -> ConnectionFailed:
    """One sentence for a connection failure, and whether retrying could help."""
    text = str(exc)
    lowered = text.lower()
    where = target.describe()
    user = target.params.get("user", "?")
    if "password authentication failed" in lowered or "authentication failed" in lowered:
        return ConnectionFailed(
            f"Authentication failed for user {user} ({where}): check the user and password "
            "in DATABASE_URL.",
            permanent=True,
        )
    if "no password supplied" in lowered:
        return ConnectionFailed(
            f"The server asks for a password and DATABASE_URL has none ({where}).", permanent=True
        )
    if "does not exist" in lowered and "database" in lowered:
        return ConnectionFailed(
            f"The database {target.dbname} does not exist on {target.host}: check the name "
            "in DATABASE_URL.",
            permanent=True,
        )
    if "ssl" in lowered or "no encryption" in lowered:
        return ConnectionFailed(
            f"The server requires SSL (or refused the SSL settings) for {where}: add "
            "?sslmode=require to DATABASE_URL.",
            permanent=True,
        )
    if "timeout expired" in lowered or "timed out" in lowered:
        return ConnectionFailed(
            f"Connecting to {where} timed out after {timeout} s: check the host, the port and "
            "the firewall (a serverless database may need longer: BACKUP_CONNECT_TIMEOUT).",
            permanent=False,
        )
    if "could not translate host name" in lowered or "name or service not known" in lowered:
        return ConnectionFailed(
            f"The host {target.host} cannot be resolved: check the host name in DATABASE_URL.",
            permanent=True,
        )
    if "connection refused" in lowered:
        return ConnectionFailed(
            f"Nothing accepts connections at {where} (connection refused): is the server "
            "running and the port right?",
            permanent=False,
        )
    if "no route to host" in lowered or "network is unreachable" in lowered:
        return ConnectionFailed(
            f"The host {target.host} is unreachable from here.", permanent=False
        )
    first_line = redact(text.strip().splitlines()[0] if text.strip() else type(exc).__name__)
    return ConnectionFailed(f"Cannot connect to {where}: {first_line}.", permanent=False)


def connect(target: Target, timeout: int, **kwargs: object) -> psycopg.Connection:
    return psycopg.connect(
        target.conninfo(), password=target.password or None, connect_timeout=timeout, **kwargs
    )  # type: ignore[arg-type]


def check_connection(
    target: Target, *, timeout: int, attempts: int, log: logging.Logger
) -> ServerInfo:
    """`SELECT 1` with retries; returns the server's version or raises one sentence."""
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
            log.warning("connection attempt %d/%d failed: %s", attempt, attempts, last.message)
            if last.permanent or attempt >= attempts:
                break
            time.sleep(BACKOFF_SECONDS[min(attempt - 1, len(BACKOFF_SECONDS) - 1)])
    assert last is not None
    raise last
