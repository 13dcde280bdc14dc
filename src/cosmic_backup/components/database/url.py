"""DATABASE_URL: parsing, masking, Neon's pooled hosts, and what the PostgreSQL tools get.

The tools never see the password on their command line: they get a connection string
without it (`--dbname=...`) and the password in ``PGPASSWORD``, in their environment only.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field

import psycopg.conninfo

from cosmic_backup.errors import UsageError
from cosmic_backup.redact import USERINFO_CHARS, redact, register_secret, split_url_password

NEON_SUFFIX = ".neon.tech"
POOLER_MARK = "-pooler"


@dataclass(frozen=True)
class Target:
    """One database to connect to, as libpq parameters."""

    params: dict[str, str]
    notes: list[str] = field(default_factory=list)  # e.g. "switched from the pooled host"

    @property
    def password(self) -> str | None:
        return self.params.get("password")

    def _param(self, name: str, env: str) -> str | None:
        """A connection parameter as libpq sees it: the URL's, else its PG* variable."""
        return self.params.get(name) or os.environ.get(env) or None

    @property
    def host(self) -> str:
        return self._param("host", "PGHOST") or "localhost"

    @property
    def port(self) -> str | None:
        return self._param("port", "PGPORT")

    @property
    def user(self) -> str | None:
        return self._param("user", "PGUSER")

    @property
    def dbname(self) -> str:
        return self._param("dbname", "PGDATABASE") or self.user or ""

    @property
    def is_neon(self) -> bool:
        return any(host.endswith(NEON_SUFFIX) for host in self.host.split(","))

    def conninfo(self, **extra: str) -> str:
        """A libpq connection string WITHOUT the password (safe for argv and logs)."""
        params = {k: v for k, v in self.params.items() if k != "password"}
        params.update(extra)
        return psycopg.conninfo.make_conninfo(**params)

    def describe(self) -> str:
        port = self.port
        where = f"{self.host}:{port}" if port else self.host
        user = self.user
        return f"database {self.dbname} on {where}" + (f" as {user}" if user else "")

    def tool_environment(self, connect_timeout: int) -> dict[str, str]:
        """What the PostgreSQL tools need in their environment, beyond --dbname.

        A connect_timeout written in the URL itself still wins: it is in --dbname.
        """
        env = {"PGCONNECT_TIMEOUT": str(connect_timeout)}
        if self.password:
            env["PGPASSWORD"] = self.password
        return env


_EXAMPLE = "postgresql://user:password@host:5432/dbname"
_ENCODE_HINT = (
    "percent-encode every @ : / ? # % [ ] and space in the user name and password "
    "(@ as %40, / as %2F, # as %23, % as %25, space as %20)"
)


def parse_database_url(url: str, name: str = "DATABASE_URL") -> Target:
    """Parse a postgres:// URL or a key=value connection string.

    No message built here echoes the URL or libpq's words about it: when a password is
    written unencoded, libpq cuts it at a delimiter and quotes the pieces as a host, a
    port or a "percent-encoded token". The password is masked before anything is said.
    """
    _check_url_password(url, name)
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        has_password = split_url_password(url) is not None or "password" in url.lower()
        detail = "" if has_password else f" ({redact(str(exc)).rstrip('.')})"
        raise UsageError(
            f"{name} is not a valid PostgreSQL connection URL{detail}; it should look like "
            f"{_EXAMPLE}; {_ENCODE_HINT}."
        ) from None
    values = {k: str(v) for k, v in params.items() if v is not None}
    register_secret(values.get("password"))
    return switch_neon_pooler(Target(values))


def _check_url_password(url: str, name: str) -> None:
    """Register the password of a URL as a secret, and refuse one libpq would misread."""
    parts = split_url_password(url)
    if parts is None:
        return
    head, password, tail = parts
    register_secret(password)
    register_secret(urllib.parse.unquote(password))
    user = head.split("://", 1)[1][:-1]
    if not (USERINFO_CHARS.fullmatch(password) and USERINFO_CHARS.fullmatch(user)):
        raise UsageError(
            f"The password or user name in {name} ({head}***{tail}) holds characters that "
            f"must be encoded, so it would be misread; {_ENCODE_HINT}, or give the password "
            "in PGPASSWORD instead."
        )


def switch_neon_pooler(target: Target) -> Target:
    """Neon's pooled endpoint (PgBouncer) cannot serve pg_dump; use the direct one."""
    hosts = target.host.split(",")
    if not target.is_neon or not any(POOLER_MARK in host.split(".")[0] for host in hosts):
        return target
    direct = []
    for host in hosts:
        label, dot, rest = host.partition(".")
        direct.append(label.replace(POOLER_MARK, "") + dot + rest)
    params = {**target.params, "host": ",".join(direct)}
    note = (
        f"Neon: switched from the pooled host {target.host} to the direct host "
        f"{params['host']} for pg_dump and pg_restore."
    )
    return Target(params, [*target.notes, note])
