"""How a one-transaction restore clears what the dump recreates: the one place that
decides whether pg_restore runs with ``--clean --if-exists``.

- After our reset (reset.py) the backup's schemas are gone, so pg_restore runs without
  --clean: its drops would fail on what the reset took away. ``ALTER DOMAIN d DROP
  CONSTRAINT IF EXISTS c``, the drop of a NOT VALID domain constraint, errs once the
  domain is gone: ALTER DOMAIN has no IF EXISTS of its own. What outlives the reset, the
  dump's objects in no schema, is dropped from the dump's TOC instead (unschemed.py).
- Without the reset (a role that may not drop the schemas), --clean --if-exists drops the
  backup's objects one by one. So that the same ALTER DOMAIN finds its domain where the
  target lacks it (--into a new database, or one whose domain was dropped since), a
  placeholder domain (and its schema, if missing) is created first; pg_restore's own
  ``DROP DOMAIN IF EXISTS`` and ``DROP SCHEMA IF EXISTS`` then drop it before the dump's
  CREATE, so none is left.
- When the TOC cannot be read (an archive version this module does not know) the reset
  still runs, followed by --clean as before: a NOT VALID domain constraint then fails
  the restore, rolled back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from psycopg import sql

from cosmic_backup.components.database.reset import dollar_tag
from cosmic_backup.components.database.stream_counts import (
    MAX_HEAD,
    ArchiveFormatError,
    Head,
    _NeedMore,
    parse_head,
)
from cosmic_backup.components.database.unschemed import drop_block, read_head, unschemed_drops

CLEAN = ("--clean", "--if-exists")
TOC_FILE = "toc.dat"

# The domain's qualified name in pg_dump's drop: quoted or bare parts joined by dots.
_PART = r'(?:"(?:[^"]|"")*"|[^\s".]+)'
_ALTER_DOMAIN = re.compile(rf"ALTER DOMAIN ({_PART}(?:\.{_PART})*) DROP CONSTRAINT ")


@dataclass(frozen=True)
class Clearing:
    """SQL to run after the reset (or the lock block), and pg_restore's options."""

    sql: str
    options: tuple[str, ...]


def dump_head(payload: BinaryIO, dump_dir: Path | None) -> tuple[BinaryIO, Head | None]:
    """The stream to restore from (the same bytes) and the dump's TOC: off the stream, or
    from the toc.dat of the directory-format dump unpacked in `dump_dir`."""
    if dump_dir is None:
        return read_head(payload)
    return payload, folder_head(dump_dir)


def folder_head(dump_dir: Path) -> Head | None:
    path = dump_dir / TOC_FILE
    try:
        if path.stat().st_size > MAX_HEAD:
            return None
        return parse_head(path.read_bytes(), toc_file=True)
    except (OSError, _NeedMore, ArchiveFormatError):
        return None


def clearing(*, reset: bool, head: Head | None) -> Clearing:
    if reset and head is not None:
        drops = unschemed_drops(head)
        return Clearing(drop_block(drops) if drops else "", ())
    if reset:
        return Clearing("", CLEAN)
    placeholders = placeholder_block(head.domain_constraint_drops) if head else ""
    return Clearing(placeholders, CLEAN)


def placeholder_block(drops: list[tuple[str, str]]) -> str:
    """For each domain whose constraint pg_restore --clean will drop: create it (and its
    schema) when the target lacks it, so that ALTER DOMAIN ... DROP CONSTRAINT finds it."""
    domains: dict[tuple[str, str], None] = {}  # a domain of two such constraints once
    for schema, drop in drops:
        found = _ALTER_DOMAIN.match(drop.strip())
        if found is not None:  # else not pg_dump's shape: pg_restore reports what fails
            domains[(schema, found.group(1))] = None
    return "\n".join(_placeholder(schema, domain) for schema, domain in domains)


def _placeholder(schema: str, domain: str) -> str:
    tag = dollar_tag()
    namespace = sql.Identifier(schema).as_string(None)
    return (
        f"DO ${tag}$ BEGIN IF pg_catalog.to_regtype({sql.Literal(domain).as_string(None)}) "
        f"IS NULL THEN IF pg_catalog.to_regnamespace({sql.Literal(namespace).as_string(None)})"
        f" IS NULL THEN CREATE SCHEMA {namespace}; END IF; "
        f"CREATE DOMAIN {domain} AS integer; END IF; END ${tag}$;"
    )
