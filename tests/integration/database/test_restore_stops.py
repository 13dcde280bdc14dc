"""A restore whose psql (or pg_restore) stops early must end at once with the real error.

The dumps here are about 100 MB, far more than the pipes between our pump, pg_restore
and psql can hold: when one child stops, the others are blocked writing unless they are
stopped too. Small dumps fit in the pipe buffers and hide exactly that (a restore that
used to hang until BACKUP_TIMEOUT). Each failure comes early (the first CREATE), in the
middle (the server session killed during the data) or late (the constraints after the
data), and every time the target must be exactly as it was.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable

import psycopg
import pytest

from cosmic_backup.components.base import RestoreRequest
from cosmic_backup.components.database import DatabaseComponent
from cosmic_backup.errors import OperationFailed
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.settings import load_settings
from tests.integration.database.appdb import execute, scalar
from tests.integration.database.conftest import ComponentFactory, PostgresServer
from tests.integration.database.test_database_component import (
    NO_SAFETY,
    dbname,
    dump_into_memory,
    freeze,
)

TIME_LIMIT = "120"  # BACKUP_TIMEOUT: a hang would end here, far beyond the bound below
PROMPT = 20.0  # seconds: the real error must arrive well within this
MIN_DUMP = 50 * 1024 * 1024
# Dropping and creating this many tables in one transaction needs more lock slots than
# the scratch server has (max_locks_per_transaction 64, max_connections 50); dumping
# them needs half as many, as plain pg_dump does.
MANY_TABLES = 2000


@pytest.fixture(scope="module")
def big_dump(
    component: ComponentFactory, postgres: PostgresServer, big_template: str
) -> tuple[bytes, Manifest]:
    dump, manifest = dump_into_memory(component, postgres.url(big_template))
    assert len(dump) > MIN_DUMP
    return dump, manifest


@pytest.fixture(scope="module")
def component(tmp_path_factory: pytest.TempPathFactory) -> ComponentFactory:
    """Module-wide, so the 100 MB dump is taken once for every case here."""
    folder = tmp_path_factory.mktemp("restore-stops")

    def make(url: str | None, **environ: str) -> DatabaseComponent:
        env = {**({"DATABASE_URL": url} if url else {}), **environ}
        return DatabaseComponent(
            load_settings(folder, environ=env), logging.getLogger("cosmic_backup")
        )

    return make


def state(url: str) -> tuple[object, ...]:
    """What a restore would change: the big table's rows and the tables that exist."""
    return (
        scalar(url, "SELECT count(*) FROM pg_catalog.pg_class WHERE relkind = 'r'"),
        scalar(url, "SELECT coalesce(sum(id), 0) FROM big"),
        scalar(url, "SELECT count(*) FROM big"),
    )


def restore_fails_promptly(
    component: ComponentFactory, url: str, dump: bytes, manifest: Manifest, **target: str
) -> OperationFailed:
    slow = component(url, BACKUP_TIMEOUT=TIME_LIMIT)
    plan = slow.plan_restore(manifest, RestoreRequest(safety_backup=False, **target))
    began = time.monotonic()
    with pytest.raises(OperationFailed) as failure:
        slow.consume(io.BytesIO(dump), manifest, plan)
    took = time.monotonic() - began
    assert took < PROMPT, f"the restore took {took:.0f} s to give up: {failure.value.message}"
    assert "BACKUP_TIMEOUT" not in failure.value.message
    assert "rolled back; the database is unchanged" in failure.value.message
    return failure.value


def test_into_a_database_where_the_user_may_not_create(
    component: ComponentFactory, postgres: PostgresServer, big_dump: tuple[bytes, Manifest]
) -> None:
    """Early: psql stops at the first CREATE TABLE, with 100 MB still to come."""
    dump, manifest = big_dump
    name = postgres.create_database("nocreate")
    execute(
        postgres.url(name),
        "DO $$ BEGIN CREATE ROLE visitor LOGIN PASSWORD 'visitor-pw'; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "CREATE TABLE keep (id int)",
        "INSERT INTO keep VALUES (1), (2)",
    )
    into = postgres.url(name, "visitor", "visitor-pw")
    failure = restore_fails_promptly(component, into, dump, manifest, target=into)
    assert "permission denied for schema public" in failure.message
    assert scalar(postgres.url(name), "SELECT count(*) FROM keep") == 2
    assert scalar(postgres.url(name), "SELECT to_regclass('public.big') IS NULL") is True


@pytest.mark.parametrize(
    ("moment", "command"),
    [("early", "CREATE TABLE"), ("late", "ALTER TABLE")],
)
def test_an_event_trigger_that_fails_a_command(
    component: ComponentFactory,
    postgres: PostgresServer,
    big_template: str,
    big_dump: tuple[bytes, Manifest],
    moment: str,
    command: str,
) -> None:
    """A DDL command refused before the data (early) or after it (the primary key)."""
    dump, manifest = big_dump
    url = postgres.url(postgres.create_database("frozen", template=big_template))
    execute(url, "DELETE FROM big WHERE id % 3 = 0")
    freeze(url, command)
    before = state(url)
    failure = restore_fails_promptly(component, url, dump, manifest)
    assert f"frozen: {command}" in failure.message, moment
    assert state(url) == before


def kill_the_restore_during_its_copy(admin_url: str, database: str) -> Callable[[], None]:
    """Terminate psql's server session once it is copying rows."""

    def watch() -> None:
        deadline = time.monotonic() + PROMPT
        with psycopg.connect(admin_url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND query ILIKE 'COPY%%' AND pid <> pg_backend_pid()",
                    (database,),
                ).fetchone()
                if row:
                    return
                time.sleep(0.05)

    return watch


def test_the_server_session_killed_mid_restore(
    component: ComponentFactory,
    postgres: PostgresServer,
    big_template: str,
    big_dump: tuple[bytes, Manifest],
) -> None:
    dump, manifest = big_dump
    name = postgres.create_database("killed", template=big_template)
    url = postgres.url(name)
    execute(url, "DELETE FROM big WHERE id > 1000")
    before = state(url)
    killer = threading.Thread(target=kill_the_restore_during_its_copy(postgres.url(), name))
    killer.start()
    try:
        failure = restore_fails_promptly(component, url, dump, manifest)
    finally:
        killer.join()
    assert "terminat" in failure.message  # "terminating connection due to administrator command"
    assert state(url) == before


def many_tables(first: int, last: int) -> str:
    return (
        f"DO $$ BEGIN FOR i IN {first}..{last} LOOP "
        "EXECUTE format('CREATE TABLE t%s (id int)', i); END LOOP; END $$"
    )


def test_out_of_shared_memory_on_many_tables_in_place(
    component: ComponentFactory, postgres: PostgresServer, big_template: str
) -> None:
    """Thousands of tables dropped and created in one transaction run out of lock slots.

    The server's hint (max_locks_per_transaction) reaches the operator, at once.
    """
    name = postgres.create_database("manytables", template=big_template)
    url = postgres.url(name)
    execute(url, *(many_tables(first, first + 499) for first in range(1, MANY_TABLES, 500)))
    dump, manifest = dump_into_memory(component, url)
    assert len(dump) > MIN_DUMP
    before = state(url)
    failure = restore_fails_promptly(component, url, dump, manifest)
    assert "out of shared memory" in failure.message
    assert "max_locks_per_transaction" in failure.message
    assert not failure.message.endswith("..")
    assert state(url) == before


def test_a_restore_that_succeeds_still_commits(
    component: ComponentFactory,
    postgres: PostgresServer,
    big_template: str,
    big_dump: tuple[bytes, Manifest],
) -> None:
    """Stopping siblings early must not touch the path where both end well."""
    dump, manifest = big_dump
    url = postgres.url(postgres.create_database("whole", template=big_template))
    expected = state(url)
    execute(url, "DELETE FROM big WHERE id % 2 = 0")
    plan = component(url).plan_restore(manifest, NO_SAFETY)
    component(url).consume(io.BytesIO(dump), manifest, plan)
    assert state(url) == expected
    assert dbname(url).startswith("whole")


def test_pg_restore_stopping_midway_stops_psql(
    component: ComponentFactory,
    postgres: PostgresServer,
    big_template: str,
    big_dump: tuple[bytes, Manifest],
) -> None:
    """The other way round: pg_restore fails on a cut dump; its error is the one shown."""
    dump, manifest = big_dump
    url = postgres.url(postgres.create_database("cut", template=big_template))
    execute(url, "DELETE FROM big WHERE id % 5 = 0")
    before = state(url)
    failure = restore_fails_promptly(component, url, dump[: len(dump) // 2], manifest)
    assert "pg_restore" in failure.message and "psql" not in failure.message
    assert state(url) == before
