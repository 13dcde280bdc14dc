"""The schema migration head of well-known migration tools, when their table exists."""

from __future__ import annotations

import psycopg
from psycopg import sql

# table -> query for the newest migration (the table is looked up in any schema)
KNOWN = {
    # Django records a squashed migration (0001_squashed_0016_...) at the end of the
    # `migrate` that applied what it replaces: the latest row, but an old first migration.
    # So the latest by time among the others; a squashed one only if nothing else is there.
    "django_migrations": (
        "SELECT app || '.' || name FROM {t} "
        "ORDER BY name LIKE '%\\_squashed\\_%', applied DESC, id DESC LIMIT 1"
    ),
    "alembic_version": "SELECT version_num FROM {t} LIMIT 1",
    "_prisma_migrations": (
        "SELECT migration_name FROM {t} WHERE finished_at IS NOT NULL "
        "ORDER BY finished_at DESC LIMIT 1"
    ),
    "schema_migrations": "SELECT version::text FROM {t} ORDER BY version::text DESC LIMIT 1",
    "knex_migrations": "SELECT name FROM {t} ORDER BY id DESC LIMIT 1",
    "flyway_schema_history": (
        "SELECT version FROM {t} WHERE success AND version IS NOT NULL "
        "ORDER BY installed_rank DESC LIMIT 1"
    ),
}


def migration_head(conn: psycopg.Connection) -> str | None:
    """ "<migrations table>: <head>" of the first known migrations table, else None."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND c.relname = ANY(%s) "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "ORDER BY n.nspname = 'public' DESC",
        (list(KNOWN),),
    ).fetchall()
    for schema, table in rows:
        query = sql.SQL(KNOWN[table]).format(t=sql.Identifier(schema, table))
        try:
            with conn.transaction():
                row = conn.execute(query).fetchone()
        except psycopg.Error:
            continue  # an unexpected shape of the table: no head rather than no backup
        if row and row[0] is not None:
            return f"{table}: {row[0]}"
    return None
