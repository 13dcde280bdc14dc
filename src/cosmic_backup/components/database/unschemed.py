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
import re
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

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._head:
            return self._rest.readinto(target)  # type: ignore[attr-defined]
        n = min(len(target), len(self._head))
        memoryview(target)[:n] = self._head[:n]
        self._head = self._head[n:]
        return n


def read_head(payload: BinaryIO) -> tuple[BinaryIO, Head | None]:
    """The stream to go on reading (the same bytes) and the dump's header and TOC; None
    when they cannot be read this way (a compressed archive of an older version)."""
    buffered = b""
    want = FIRST_READ
    while True:
        chunk = payload.read(want - len(buffered))
        buffered += chunk or b""
        try:
            return _Replay(buffered, payload), parse_head(buffered)
        except _NeedMore:
            if not chunk or len(buffered) > MAX_HEAD:
                return _Replay(buffered, payload), None
            want *= 2  # parse again once doubled: a large TOC costs linear time
        except ArchiveFormatError:
            return _Replay(buffered, payload), None


def unschemed_drops(head: Head) -> list[str]:
    """The DROP statements to run after the reset, of the kinds it leaves."""
    # In reverse TOC order, as pg_restore --clean drops: a foreign server before its wrapper.
    drops = [drop for kind, drop in head.unschemed_drops if kind in DROPPED_KINDS]
    return drops[::-1]


def policy_roles(head: Head) -> set[str]:
    """The roles the dump's policies name (``CREATE POLICY p ON t ... TO a, "B"``): a
    database restores only where they exist. pg_dump writes each as quote_ident gives it."""
    roles: set[str] = set()
    for defn in head.policies:
        words = _identifiers(defn)
        if "TO" in words:
            after = words[words.index("TO") + 1 :]
            roles.update(_list_of_names(after))
    return roles - {"public", "PUBLIC"}


def _identifiers(text: str) -> list[str]:
    """The words of `text` up to its USING or WITH CHECK: bare words upper-cased as SQL
    keywords are, quoted ones as they are (a TO inside quotes is a name, not the word)."""
    words: list[str] = []
    for match in _TOKEN.finditer(text):
        quoted, bare, comma = match.group(1), match.group(2), match.group(3)
        if quoted is not None:
            words.append('"' + quoted.replace('""', '"'))
        elif comma:
            words.append(",")
        elif bare:
            if bare.upper() in ("USING", "WITH"):
                break
            words.append(bare.upper() if bare.upper() == "TO" else bare)
    return words


def _list_of_names(words: list[str]) -> list[str]:
    names = []
    for index, word in enumerate(words):
        if word == ",":
            continue
        if index > 0 and words[index - 1] != ",":
            break  # the list ended
        names.append(word[1:] if word.startswith('"') else word)
    return names


# A quoted identifier, a bare word (or qualified name: table names hold dots), a comma.
_TOKEN = re.compile(r'"((?:[^"]|"")*)"|([^\s,"();]+)|(,)')


def drop_block(drops: list[str]) -> str:
    """The drops as DO blocks, each ignoring an object (or a type it names) not there."""
    tag = dollar_tag()
    return "\n".join(
        f"DO ${tag}$ BEGIN EXECUTE {sql.Literal(drop.strip()).as_string(None)}; "
        f"EXCEPTION WHEN undefined_object THEN NULL; END ${tag}$;"
        for drop in drops
    )
