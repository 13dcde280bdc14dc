"""The objects a dump's table of contents lists, and whether a restored database has them.

A restore test reads the dump once: while the restore reads it, a tee feeds the same
bytes to ``pg_restore --list`` (TocTee), whose lines name every object. After the
restore, each listed table, view, materialized view, sequence, function, index,
constraint and extension must be present in the restored database; one that is not
means the dump does not restore what it claims to hold.
"""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import tempfile
from dataclasses import dataclass
from typing import BinaryIO

from cosmic_backup.components.database.connection import connect
from cosmic_backup.components.database.tools import Tool
from cosmic_backup.components.database.url import Target
from cosmic_backup.errors import OperationFailed
from cosmic_backup.process import Child

# The kinds of TOC entry checked, longest first: "FK CONSTRAINT" before "CONSTRAINT".
CHECKED_KINDS = (
    "MATERIALIZED VIEW",
    "FK CONSTRAINT",
    "CONSTRAINT",
    "EXTENSION",
    "FUNCTION",
    "PROCEDURE",
    "SEQUENCE",
    "INDEX",
    "TABLE",
    "VIEW",
)

# Entries whose kind begins like a checked one but is data or a link between objects.
NOT_OBJECTS = (
    "MATERIALIZED VIEW DATA",
    "SEQUENCE OWNED BY",
    "SEQUENCE SET",
    "TABLE ATTACH",
    "TABLE DATA",
    "INDEX ATTACH",
)


@dataclass(frozen=True, order=True)
class DbObject:
    kind: str  # as pg_restore --list names it: "TABLE", "FK CONSTRAINT"...
    schema: str  # "-" for an extension
    tag: str  # the name; "table constraint" for a constraint, "name(args)" for a function

    def __str__(self) -> str:
        where = "" if self.schema == "-" else f"{self.schema}."
        return f"{self.kind.lower()} {where}{self.tag}"


def parse_toc(listing: str) -> set[DbObject]:
    """The checked objects of a ``pg_restore --list`` output.

    A line is ``ID; CATALOG_OID OID KIND SCHEMA TAG OWNER``; KIND may hold spaces, and so
    may TAG (a constraint's is "table name"), so KIND is matched against the known ones
    and OWNER is the last word (empty for an extension).
    """
    found: set[DbObject] = set()
    for line in listing.splitlines():
        if not line.strip() or line.startswith(";") or "; " not in line:
            continue
        parts = line.split("; ", 1)[1].split(" ", 2)
        if len(parts) < 3:
            continue
        rest = parts[2]
        if rest.startswith(tuple(f"{other} " for other in NOT_OBJECTS)):
            continue
        kind = next((k for k in CHECKED_KINDS if rest.startswith(k + " ")), None)
        if kind is None:
            continue
        schema_and_tag = rest[len(kind) + 1 :]
        schema, _, tag_owner = schema_and_tag.partition(" ")
        tag = tag_owner.rsplit(" ", 1)[0] if " " in tag_owner else tag_owner
        found.add(DbObject(kind, schema, tag))
    return found


# Every object of the checked kinds in the connected database, named as pg_dump names it.
# Every column is text in every branch: a UNION takes its columns' types from the first
# branch, and as `name` (63 bytes) a constraint's "table constraint" would be cut short.
# Run under an empty search_path, as pg_dump runs: oidvectortypes() then qualifies a
# function's argument types outside pg_catalog ("f(public.mood)"), as the TOC does.
PRESENT_OBJECTS = """
SELECT CASE c.relkind WHEN 'r' THEN 'TABLE' WHEN 'p' THEN 'TABLE' WHEN 'v' THEN 'VIEW'
       WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE' ELSE 'INDEX' END::text,
       n.nspname::text, c.relname::text
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'i', 'I')
UNION ALL
SELECT CASE co.contype WHEN 'f' THEN 'FK CONSTRAINT' ELSE 'CONSTRAINT' END, n.nspname::text,
       coalesce(c.relname, t.typname)::text || ' ' || co.conname::text
FROM pg_catalog.pg_constraint co JOIN pg_catalog.pg_namespace n ON n.oid = co.connamespace
LEFT JOIN pg_catalog.pg_class c ON c.oid = co.conrelid
LEFT JOIN pg_catalog.pg_type t ON t.oid = co.contypid
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, n.nspname::text,
       p.proname::text || '(' || pg_catalog.oidvectortypes(p.proargtypes) || ')'
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
UNION ALL
SELECT 'EXTENSION', '-', e.extname::text FROM pg_catalog.pg_extension e
"""


def missing_objects(target: Target, listed: set[DbObject], timeout: int) -> list[DbObject]:
    """The objects of `listed` that the database at `target` does not have."""
    with connect(target, timeout, autocommit=True) as conn:
        conn.execute("SELECT pg_catalog.set_config('search_path', '', false)")
        present = {DbObject(*row) for row in conn.execute(PRESENT_OBJECTS).fetchall()}
    return sorted(listed - present)


class TocTee(io.RawIOBase):
    """A reader that hands on `source` and feeds the same bytes to ``pg_restore --list``.

    pg_restore reads the table of contents at the start of the dump and may stop there;
    from then on the copy is dropped. `listing()` ends it and returns its output.
    """

    def __init__(self, source: BinaryIO, pg_restore: Tool, timeout: int, log: logging.Logger):
        super().__init__()
        self._source = source
        self._output = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self._child = Child(
            [pg_restore.path, "--list"],
            env={},
            timeout=timeout,
            log=log,
            stdin=subprocess.PIPE,
            stdout=self._output,
        )
        self._open = True

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        count = self._source.readinto(target)  # type: ignore[attr-defined]
        if count and self._open:
            try:
                assert self._child.process.stdin is not None
                self._child.process.stdin.write(memoryview(target)[:count])
            except BrokenPipeError:
                self._open = False  # it has read what it needed (or failed: wait says)
        return count

    def listing(self) -> str:
        self._close_input()
        code = self._child.wait()
        if code != 0:
            raise OperationFailed(
                f"pg_restore --list cannot read the dump: {self._child.stderr_tail()}."
            )
        self._output.seek(0)
        return self._output.read().decode("utf-8", "replace")

    def _close_input(self) -> None:
        self._open = False
        stdin = self._child.process.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    def close(self) -> None:
        """Stop pg_restore --list if it still runs (a failure or an interrupt)."""
        if not self.closed:
            self._close_input()
            if self._child.process.poll() is None:
                self._child.kill()
            self._child.wait()
            self._output.close()
        super().close()
