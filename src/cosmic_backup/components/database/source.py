"""What a database backup's manifest records of the database it dumped."""

from __future__ import annotations

from dataclasses import dataclass, field

from cosmic_backup.components.base import Source

# How pg_dump wrote the dump: one custom-format stream (-Fc), or a folder (-Fd, with
# --jobs) sealed as one tar (directory_dump.py).
CUSTOM = "custom"
DIRECTORY = "directory"


@dataclass(frozen=True)
class DatabaseSource(Source):
    database: str = ""
    host: str = ""
    server_version: str = ""
    pg_dump_version: str = ""
    tables: list[str] = field(default_factory=list)  # "schema.table", as pg_dump names them
    # Rows per table, counted in the snapshot pg_dump dumped (empty for schema-only).
    row_counts: dict[str, int] = field(default_factory=dict)
    schemas: list[str] = field(default_factory=list)
    migration_head: str | None = None  # e.g. "django_migrations: core.0002_more"
    neon: bool = False
    pooler_switched: bool = False  # a Neon -pooler host was swapped for the direct one
    dump_format: str = CUSTOM  # older manifests lack it: they are all custom-format

    @property
    def is_directory(self) -> bool:
        return self.dump_format == DIRECTORY

    @property
    def server_major(self) -> int:
        return _major(self.server_version)

    @property
    def pg_dump_major(self) -> int:
        return _major(self.pg_dump_version)

    def summary(self) -> str:
        parts = [self.database]
        if self.is_directory:
            parts.append("directory format")
        if self.migration_head:
            parts.append(f"migration head {self.migration_head}")
        return ", ".join(filter(None, [*parts, super().summary()]))


def _major(version: str) -> int:
    head = version.split(".")[0].split()[0] if version.strip() else ""
    return int(head) if head.isdigit() else 0
