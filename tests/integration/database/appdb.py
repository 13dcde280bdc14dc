"""A database shaped like a real app's, and exact comparisons of a database's state.

Shared by the component-level and the CLI-level tests: equal `full_state` means every
table's rows, the columns and their types, sequences, views, materialized views,
triggers, enum values, extensions, large objects and foreign keys are equal.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

APP_SCHEMA = r"""
CREATE EXTENSION IF NOT EXISTS citext;
CREATE SCHEMA extensions;
CREATE EXTENSION pgcrypto SCHEMA extensions;
CREATE SCHEMA billing;
CREATE SCHEMA audit;
CREATE TYPE mood AS ENUM ('happy', 'sad', 'meh');
CREATE TABLE users (
    id bigserial PRIMARY KEY,
    email citext UNIQUE NOT NULL,
    mood mood,
    profile jsonb,
    avatar bytea,
    tags text[],
    balance numeric(12, 4),
    created_at timestamptz DEFAULT now()
);
CREATE SEQUENCE billing.invoice_no START 1000000 INCREMENT 5;
CREATE TABLE billing.invoices (
    id integer PRIMARY KEY DEFAULT nextval('billing.invoice_no'),
    user_id bigint REFERENCES users(id) ON DELETE CASCADE,
    amount numeric(12, 2) NOT NULL,
    lines jsonb
);
CREATE TABLE billing.payments (
    id integer GENERATED ALWAYS AS IDENTITY (START WITH 500 INCREMENT BY 10) PRIMARY KEY,
    invoice_id integer REFERENCES billing.invoices(id) ON DELETE CASCADE,
    token bytea DEFAULT extensions.gen_random_bytes(8)
);
CREATE TABLE audit.log (id serial PRIMARY KEY, what text, at timestamptz DEFAULT now());
CREATE TABLE audit.events (at date NOT NULL, what text) PARTITION BY RANGE (at);
CREATE TABLE audit.events_2025 PARTITION OF audit.events
    FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE audit.events_2026 PARTITION OF audit.events
    FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE FUNCTION audit.note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit.log (what) VALUES (TG_OP || ' ' || NEW.id); RETURN NEW; END $$;
CREATE TRIGGER invoices_audit AFTER INSERT ON billing.invoices
    FOR EACH ROW EXECUTE FUNCTION audit.note();
CREATE VIEW billing.totals AS
    SELECT u.email, sum(i.amount) AS total FROM users u JOIN billing.invoices i
    ON i.user_id = u.id GROUP BY u.email;
CREATE TABLE django_migrations (id serial PRIMARY KEY, app text, name text,
    applied timestamptz DEFAULT now());
INSERT INTO django_migrations (app, name) VALUES ('core', '0001_initial'), ('core', '0002_more');
INSERT INTO users (email, mood, profile, avatar, tags, balance, created_at)
SELECT 'user' || g || '@Example.com', (ARRAY['happy','sad','meh'])[1 + g % 3]::mood,
       jsonb_build_object('n', g, 'nested', jsonb_build_object('ok', g % 2 = 0)),
       decode(md5(g::text), 'hex'), ARRAY['t' || g, 'x'], g * 1.2345,
       '2026-01-01 00:00:00+00'::timestamptz + g * interval '1 hour'
FROM generate_series(1, 500) g;
INSERT INTO billing.invoices (user_id, amount, lines)
SELECT 1 + g % 500, g * 10.5, jsonb_build_array(g, 'line') FROM generate_series(1, 800) g;
INSERT INTO billing.payments (invoice_id) SELECT id FROM billing.invoices WHERE id % 3 = 0;
INSERT INTO audit.events SELECT '2025-06-01'::date + g, 'e' || g FROM generate_series(1, 400) g;
CREATE MATERIALIZED VIEW billing.top_users AS
    SELECT user_id, count(*) AS n FROM billing.invoices GROUP BY user_id;
SELECT setval('users_id_seq', 123456789);
SELECT lo_from_bytea(424242, convert_to('large object content', 'UTF8') || '\x0001ff'::bytea);
"""


def create_app_database(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(APP_SCHEMA)


def table_contents(url: str) -> dict[str, list[str]]:
    """Every user table's rows as text, sorted: equal dicts mean equal content.

    Plain tables and partitions; a partitioned parent holds no rows of its own."""
    with psycopg.connect(url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        ).fetchall()
        result = {}
        for schema, table in tables:
            query = sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(schema, table))
            rows = conn.execute(query).fetchall()
            result[f"{schema}.{table}"] = sorted(row[0] for row in rows)
        return result


def sequence_state(url: str) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT schemaname || '.' || sequencename, last_value, increment_by "
            "FROM pg_sequences ORDER BY 1"
        ).fetchall()
        return {name: (last, step) for name, last, step in rows}


OBJECT_QUERIES = {
    "columns": "SELECT table_schema, table_name, column_name, data_type, column_default "
    "FROM information_schema.columns WHERE table_schema NOT IN "
    "('pg_catalog', 'information_schema') ORDER BY 1, 2, 3",
    "views": "SELECT schemaname, viewname, definition FROM pg_views "
    "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
    "matviews": "SELECT schemaname, matviewname, ispopulated FROM pg_matviews ORDER BY 1, 2",
    "triggers": "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1",
    "enum": "SELECT enumlabel FROM pg_enum ORDER BY enumtypid, enumsortorder",
    "extensions": "SELECT e.extname, n.nspname FROM pg_extension e "
    "JOIN pg_namespace n ON n.oid = e.extnamespace ORDER BY 1",
    "large_objects": "SELECT oid, lo_get(oid) FROM pg_largeobject_metadata ORDER BY 1",
    "foreign_keys": "SELECT conname FROM pg_constraint WHERE contype = 'f' ORDER BY 1",
    "functions": "SELECT n.nspname, p.proname FROM pg_proc p "
    "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname IN "
    "('public', 'billing', 'audit') ORDER BY 1, 2",
}


def objects(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url, autocommit=True) as conn:
        found = {name: conn.execute(query).fetchall() for name, query in OBJECT_QUERIES.items()}
        matview = conn.execute("SELECT to_regclass('billing.top_users') IS NOT NULL").fetchone()
        if matview and matview[0]:
            found["top_users"] = conn.execute(
                "SELECT user_id, n FROM billing.top_users ORDER BY 1"
            ).fetchall()
        return found


def full_state(url: str) -> tuple[Any, ...]:
    return table_contents(url), sequence_state(url), objects(url)


def execute(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def scalar(url: str, query: str) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
        return row[0] if row else None


DESTRUCTIVE_CHANGES = (
    "DROP VIEW billing.totals",
    "DROP TABLE audit.log CASCADE",
    "DELETE FROM users WHERE id > 100",
    "ALTER TABLE users ALTER COLUMN balance TYPE text",
    "CREATE TABLE public.added_later (x int)",
    "CREATE TABLE billing.added_later (x int)",
    "SELECT lo_unlink(424242)",
    "SELECT lo_from_bytea(777, 'added after the backup')",
    "DROP EXTENSION citext CASCADE",
    "INSERT INTO django_migrations (app, name) VALUES ('core', '0003_oops')",
    # A dump holds a materialized view's query, not its rows: a restore refreshes it.
    "REFRESH MATERIALIZED VIEW billing.top_users",
)
