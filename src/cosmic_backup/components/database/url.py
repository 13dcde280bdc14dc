"""DATABASE_URL: parsing, masking, Neon's pooled hosts, and what the PostgreSQL tools get.

The tools never see the password on their command line: they get a connection string
without it (`--dbname=...`) and the password in ``PGPASSWORD``, in their environment only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg.conninfo

from cosmic_backup.errors import UsageError
from cosmic_backup.redact import mask_url_password, register_secret

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

    @property
    def host(self) -> str:
        return self.params.get("host", "localhost")

    @property
    def dbname(self) -> str:
        return self.params.get("dbname", self.params.get("user", ""))

    @property
    def is_neon(self) -> bool:
        return any(host.endswith(NEON_SUFFIX) for host in self.host.split(","))

    def conninfo(self, **extra: str) -> str:
        """A libpq connection string WITHOUT the password (safe for argv and logs)."""
        params = {k: v for k, v in self.params.items() if k != "password"}
        params.update(extra)
        return psycopg.conninfo.make_conninfo(**params)

    def describe(self) -> str:
        port = self.params.get("port")
        where = f"{self.host}:{port}" if port else self.host
        user = self.params.get("user")
        return f"database {self.dbname} on {where}" + (f" as {user}" if user else "")

    def tool_environment(self, connect_timeout: int) -> dict[str, str]:
        """What the PostgreSQL tools need in their environment, beyond --dbname.

        A connect_timeout written in the URL itself still wins: it is in --dbname.
        """
        env = {"PGCONNECT_TIMEOUT": str(connect_timeout)}
        if self.password:
            env["PGPASSWORD"] = self.password
        return env


def parse_database_url(url: str) -> Target:
    """Parse a postgres:// URL or a key=value connection string."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise UsageError(
            "DATABASE_URL is not a valid PostgreSQL connection URL "
            f"({mask_url_password(str(exc))}); "
            "it should look like postgresql://user:password@host:5432/dbname."
        ) from None
    values = {k: str(v) for k, v in params.items() if v is not None}
    register_secret(values.get("password"))
    return switch_neon_pooler(Target(values))


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
