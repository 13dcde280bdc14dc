"""A NOT VALID domain constraint (issue 18 item 3), restored on every path.

pg_dump writes such a constraint as its own post-data entry, ``ALTER DOMAIN d ADD
CONSTRAINT c CHECK (...) NOT VALID``, whose drop under ``pg_restore --clean --if-exists``
is ``ALTER DOMAIN d DROP CONSTRAINT IF EXISTS c``: ALTER DOMAIN has no IF EXISTS of its
own, so that drop fails wherever the domain is not there ("type ... does not exist").
And the rows already in the table break the constraint: the data must be loaded before
it is added, or the COPY fails.
"""

from __future__ import annotations

import io
from typing import Any

import pytest

from cosmic_backup.components.base import RestoreRequest
from tests.integration.database.appdb import execute, table_contents
from tests.integration.database.conftest import ComponentFactory, PostgresServer
from tests.integration.database.test_database_component import dump_into_memory

# The rows broke the check before it was added, NOT VALID: they stay, and so must a
# restore keep them. A second schema holds another one, so that more than public is reset,
# under names that need quoting. (Not a name holding " DROP CONSTRAINT ": pg_restore's own
# --if-exists puts its IF EXISTS inside such a name.)
NOT_VALID_DOMAINS = """
CREATE DOMAIN posint AS integer;
CREATE TABLE stock (id serial PRIMARY KEY, qty posint);
INSERT INTO stock (qty) VALUES (1), (2), (-3);
ALTER DOMAIN posint ADD CONSTRAINT posint_positive CHECK (VALUE > 0) NOT VALID;
CREATE SCHEMA "Shop ""Floor"" x";
CREATE DOMAIN "Shop ""Floor"" x"."Code ""Ä"" x" AS text;
CREATE TABLE "Shop ""Floor"" x".items (code "Shop ""Floor"" x"."Code ""Ä"" x");
INSERT INTO "Shop ""Floor"" x".items VALUES ('ok'), ('');
ALTER DOMAIN "Shop ""Floor"" x"."Code ""Ä"" x"
    ADD CONSTRAINT code_not_empty CHECK (VALUE <> '') NOT VALID;
"""

CONSTRAINTS = """
SELECT conname, convalidated FROM pg_constraint
WHERE contypid <> 0 AND connamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1
"""


def state(url: str) -> tuple[Any, ...]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        constraints = conn.execute(CONSTRAINTS).fetchall()
    return constraints, table_contents(url)


def restore(make: ComponentFactory, url: str, dump: bytes, manifest: Any, **request: Any) -> Any:
    plan = make(url).plan_restore(manifest, RestoreRequest(safety_backup=False, **request))
    return make(url).consume(io.BytesIO(dump), manifest, plan)


@pytest.fixture
def domain_db(postgres: PostgresServer) -> str:
    url = postgres.url(postgres.create_database("notvalid"))
    execute(url, NOT_VALID_DOMAINS)
    return url


def test_the_fixture_has_not_valid_constraints_and_rows_that_break_them(domain_db: str) -> None:
    assert state(domain_db)[0] == [("code_not_empty", False), ("posint_positive", False)]


def test_a_directory_format_backup_restores_in_one_transaction(
    component: ComponentFactory, domain_db: str
) -> None:
    """A `backup --jobs 2` dump restored in place without --jobs: the reset ran, so
    pg_restore's own --clean drops would meet a domain that is gone."""
    dump, manifest = dump_into_memory(component, domain_db)
    before = state(domain_db)
    jobs = {"BACKUP_DB_JOBS": "2"}
    folder_dump, folder_manifest = dump_into_memory(lambda url: component(url, **jobs), domain_db)
    assert folder_manifest.source["dump_format"] == "directory"
    execute(domain_db, "DELETE FROM stock")
    restore(component, domain_db, folder_dump, folder_manifest, jobs=1)
    assert state(domain_db) == before
    del dump, manifest


def test_a_role_that_may_not_reset_restores_into_a_database_without_the_domains(
    component: ComponentFactory, postgres: PostgresServer
) -> None:
    """No reset (the role does not own public): pg_restore --clean --if-exists drops one by
    one, and the target has no such domain yet."""
    role = "notvalid_limited"
    source, target = (postgres.create_database(name) for name in ("nvsource", "nvtarget"))
    execute(
        postgres.url(),
        f"DO $$ BEGIN CREATE ROLE {role} LOGIN PASSWORD 'limited-pw'; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    )
    for name in (source, target):
        execute(
            postgres.url(name),
            f"GRANT ALL ON SCHEMA public TO {role}",
            f'GRANT CREATE ON DATABASE "{name}" TO {role}',
        )
    source_url = postgres.url(source, role, "limited-pw")
    target_url = postgres.url(target, role, "limited-pw")
    execute(source_url, NOT_VALID_DOMAINS)
    dump, manifest = dump_into_memory(component, source_url)
    report = restore(component, source_url, dump, manifest, target=target_url)
    assert any("may not drop and recreate the schemas" in line for line in report.lines)
    assert state(target_url) == state(source_url)
    # In place too: there the domains exist, and their constraints are dropped first.
    execute(source_url, "DELETE FROM stock")
    restore(component, source_url, dump, manifest)
    assert state(source_url) == state(target_url)


def test_jobs_loads_the_rows_before_it_adds_the_not_valid_constraints(
    component: ComponentFactory, domain_db: str, postgres: PostgresServer
) -> None:
    """pg_restore -j runs post-data entries as soon as what they depend on is there: the
    domain's ADD CONSTRAINT ... NOT VALID does not wait for the table's data, whose COPY
    then fails on the rows that break it."""
    dump, manifest = dump_into_memory(component, domain_db)
    before = state(domain_db)
    for _ in range(10):
        execute(domain_db, "DELETE FROM stock")
        report = restore(component, domain_db, dump, manifest, jobs=2)
        assert any("2 parallel jobs" in line for line in report.lines), report.lines
        assert state(domain_db) == before
