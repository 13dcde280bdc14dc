"""Which database a backup came from, said in the plan, and whether restoring it replaces
another database's content (issue 18 item 9).

The manifest records the database pg_dump dumped (``source.database``, and its host).
A restore into a database of another name that holds objects replaces that database
with a copy of a different one: the backup folder's latest may be another app's. That
takes the operator's explicit consent (a terminal's confirmation, or ``--yes`` with
``--from-other-database``). A database of the same name on another host is not refused
(a server move keeps the name, and host names differ by spelling); the plan names the
host. An empty target (a new database for ``--into``) replaces nothing: no consent.
"""

from __future__ import annotations

import psycopg

from cosmic_backup.components.database.connection import connect
from cosmic_backup.components.database.source import DatabaseSource
from cosmic_backup.components.database.url import Target

# Does the database hold anything of its own: a relation, a function or a type outside
# the system schemas (the array and row types of those come with them).
HOLDS_OBJECTS = """
SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)'
) OR EXISTS (
    SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
) OR EXISTS (
    SELECT 1 FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)'
)
"""


def source_note(source: DatabaseSource) -> str:
    if not source.database:
        return "The backup's source database is unknown (its manifest does not record it)."
    host = f" on {source.host}" if source.host else ""
    return f"The backup was taken from database {source.database}{host}."


def other_database_sentence(source: DatabaseSource, target: Target, timeout: int) -> str | None:
    """One sentence when restoring `source`'s backup into `target` replaces another
    database's content; None when it is the same database (by name), or one that is
    empty, or the backup does not say where it came from."""
    if not source.database or source.database == target.dbname:
        return None
    try:
        with connect(target, timeout, autocommit=True) as conn:
            row = conn.execute(HOLDS_OBJECTS).fetchone()
        if not (row and row[0]):
            return None
    except psycopg.Error:
        pass  # unreadable: take it as holding something, the safe side
    return (
        f"This backup is of database {source.database}, not of {target.dbname}: restoring it "
        f"replaces everything in {target.dbname} with {source.database}'s content."
    )
