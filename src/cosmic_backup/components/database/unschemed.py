"""The dump's objects in no schema, dropped after our reset as pg_restore --clean would.

After the reset (reset.py) the backup's schemas are gone, so pg_restore runs without
--clean: its drops would fail on what the reset took away (``ALTER DOMAIN ... DROP
CONSTRAINT IF EXISTS`` of a NOT VALID constraint errs once the domain is gone). But
objects in no schema (a publication, an event trigger, a foreign server...) outlive the
reset, and the dump's CREATE of one still there would fail ("already exists"). So the
dump's header and TOC are read first, off the stream, and the DROP statements of those
entries run after the reset, each a no-op when its object is not there. Only what the
dump itself recreates is dropped: a publication made after the backup stays.
"""

from __future__ import annotations

import io
from typing import BinaryIO

from psycopg import sql

from cosmic_backup.components.database.reset import dollar_tag
from cosmic_backup.components.database.stream_counts import (
    MAX_HEAD,
    ArchiveFormatError,
    _NeedMore,
    parse_head,
)

# The kinds pg_restore --clean drops that the schema reset leaves. A publication's
# members go with it; a subscription cannot be dropped in a transaction (restore.py
# refuses a subscriber first); an extension is created IF NOT EXISTS.
DROPPED_KINDS = frozenset(
    {
        "ACCESS METHOD",
        "CAST",
        "EVENT TRIGGER",
        "FOREIGN DATA WRAPPER",
        "PROCEDURAL LANGUAGE",
        "PUBLICATION",
        "SERVER",
        "TRANSFORM",
        "USER MAPPING",
    }
)

FIRST_READ = 64 * 1024


class _Replay(io.RawIOBase):
    """The bytes already read, then the rest of the stream."""

    def __init__(self, head: bytes, rest: BinaryIO):
        super().__init__()
        self._head, self._rest = memoryview(head), rest

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        if self._head:
            n = len(self._head) if size is None or size < 0 else size
            out, self._head = bytes(self._head[:n]), self._head[n:]
            return out
        return self._rest.read(size)


def read_unschemed_drops(payload: BinaryIO) -> tuple[BinaryIO, list[str] | None]:
    """The stream to restore from (the same bytes) and the DROP statements to run after
    the reset; None when the head cannot be read this way (a compressed archive of an
    older version): then pg_restore --clean drops as before."""
    buffered = b""
    want = FIRST_READ
    while True:
        chunk = payload.read(want - len(buffered))
        buffered += chunk or b""
        try:
            head = parse_head(buffered)
        except _NeedMore:
            if not chunk or len(buffered) > MAX_HEAD:
                return _Replay(buffered, payload), None
            want *= 2  # parse again once doubled: a large TOC costs linear time
            continue
        except ArchiveFormatError:
            return _Replay(buffered, payload), None
        drops = [drop for kind, drop in head.unschemed_drops if kind in DROPPED_KINDS]
        return _Replay(buffered, payload), drops


def drop_block(drops: list[str]) -> str:
    """The drops as DO blocks, each ignoring an object (or a type it names) not there."""
    tag = dollar_tag()
    return "\n".join(
        f"DO ${tag}$ BEGIN EXECUTE {sql.Literal(drop.strip()).as_string(None)}; "
        f"EXCEPTION WHEN undefined_object THEN NULL; END ${tag}$;"
        for drop in drops
    )
