"""The schema reset before a restore, on a live database: public keeps its owner, ACL and
comment; objects outside the backup's schemas are never dropped silently; and the reset
never holds locks while it queues for another (the app's reads go on)."""

from __future__ import annotations

import contextlib
import functools
import io
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cosmic_backup.components.base import RestoreReport, RestoreRequest
from cosmic_backup.errors import OperationFailed
from tests.integration.database.appdb import execute, full_state, scalar, table_contents
from tests.integration.database.conftest import ComponentFactory, PostgresServer
from tests.integration.database.test_database_component import dbname, dump_into_memory

NO_SAFETY = RestoreRequest(safety_backup=False)

PUBLIC_STATE = (
    "SELECT n.nspowner::regrole::text, n.nspacl::text, obj_description(n.oid, 'pg_namespace') "
    "FROM pg_namespace n WHERE n.nspname = 'public'"
)


def public_state(url: str) -> tuple[Any, ...]:
    """What `\\dn+ public` shows: owner, access privileges, description."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(PUBLIC_STATE).fetchone()
        assert row is not None
        return tuple(row)


def restore(make: ComponentFactory, url: str, dump: bytes, manifest: Any, **request: Any) -> Any:
    plan = make(url).plan_restore(manifest, RestoreRequest(safety_backup=False, **request))
    return make(url).consume(io.BytesIO(dump), manifest, plan)


def with_reporting_role(postgres: PostgresServer, url: str) -> str:
    """A `reporting` login that may SELECT one table, as the app's analysts have."""
    role = f"reporting_{dbname(url)}"
    execute(
        url,
        f"CREATE ROLE {role} LOGIN PASSWORD 'reporting-pw'",
        f"GRANT SELECT ON public.users TO {role}",
    )
    return postgres.url(dbname(url), role, "reporting-pw")


def test_public_keeps_its_owner_acl_and_comment_and_reporting_keeps_reading(
    component: ComponentFactory, app_db: str, postgres: PostgresServer
) -> None:
    reporting = with_reporting_role(postgres, app_db)
    fresh = postgres.url(postgres.create_database("fresh"))
    pristine = public_state(fresh)
    assert public_state(app_db) == pristine  # {pg_database_owner=UC/...,=U/...}
    dump, manifest = dump_into_memory(component, app_db)

    restore(component, app_db, dump, manifest)
    assert public_state(app_db) == pristine
    assert scalar(reporting, "SELECT count(*) FROM public.users") == 500

    restore(component, app_db, dump, manifest, target=fresh)  # --into
    assert public_state(fresh) == pristine
    assert table_contents(fresh) == table_contents(app_db)


def test_public_as_the_dump_says_wins_over_the_targets(
    component: ComponentFactory, app_db: str, postgres: PostgresServer
) -> None:
    reporting = with_reporting_role(postgres, app_db)
    role = reporting.split("//")[1].split(":")[0]
    execute(
        app_db,
        "REVOKE USAGE ON SCHEMA public FROM PUBLIC",
        f"GRANT USAGE ON SCHEMA public TO {role}",
        "COMMENT ON SCHEMA public IS 'the app lives here'",
    )
    customised = public_state(app_db)
    dump, manifest = dump_into_memory(component, app_db)
    fresh = postgres.url(postgres.create_database("fresh"))
    restore(component, app_db, dump, manifest, target=fresh)
    assert public_state(fresh) == customised
    restore(component, app_db, dump, manifest)
    assert public_state(app_db) == customised
    assert scalar(reporting, "SELECT count(*) FROM public.users") == 500


DEPENDENTS = (
    "CREATE SCHEMA reports",
    "CREATE VIEW reports.rich AS SELECT email FROM public.users WHERE balance > 100",
    "CREATE TABLE reports.notes (id int, user_id bigint REFERENCES public.users(id), email citext)",
    "INSERT INTO reports.notes VALUES (1, 1, 'a@b.c')",
)


def test_objects_outside_the_backups_schemas_are_never_dropped_silently(
    component: ComponentFactory, app_db: str
) -> None:
    dump, manifest = dump_into_memory(component, app_db)
    execute(app_db, "DELETE FROM users WHERE id > 10", *DEPENDENTS)
    before = full_state(app_db)
    with pytest.raises(OperationFailed) as refused:
        restore(component, app_db, dump, manifest)
    message = refused.value.message
    assert "would drop 3 object(s)" in message, message
    for named in ("view reports.rich", "constraint notes_user_id_fkey on table reports.notes"):
        assert named in message
    assert "column email of table reports.notes" in message
    assert "the database is unchanged" in message and "--drop-dependents" in message
    assert full_state(app_db) == before

    restore(component, app_db, dump, manifest, drop_dependents=True)
    assert scalar(app_db, "SELECT count(*) FROM users") == 500
    assert scalar(app_db, "SELECT to_regclass('reports.rich')") is None
    assert scalar(app_db, "SELECT count(*) FROM reports.notes") == 1  # the table stays


def test_a_view_in_a_schema_the_backup_holds_is_simply_replaced(
    component: ComponentFactory, app_db: str
) -> None:
    """Dependents inside the backup's schemas are the restore's to replace: no refusal."""
    dump, manifest = dump_into_memory(component, app_db)
    execute(app_db, "CREATE VIEW billing.later AS SELECT id FROM public.users")
    restore(component, app_db, dump, manifest)
    assert scalar(app_db, "SELECT to_regclass('billing.later')") is None


class Stopwatch(threading.Thread):
    """Reads one table over and over from another session, keeping the slowest read."""

    def __init__(self, url: str, query: str) -> None:
        super().__init__(daemon=True)
        self.url, self.query, self.slowest = url, query, 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("SET statement_timeout = '10s'")
            while not self.stop.is_set():
                began = time.monotonic()
                with contextlib.suppress(psycopg.errors.QueryCanceled):
                    conn.execute(self.query).fetchone()
                self.slowest = max(self.slowest, time.monotonic() - began)
                time.sleep(0.05)


def test_the_reset_never_holds_the_apps_tables_while_it_waits_for_a_lock(
    component: ComponentFactory, postgres: PostgresServer
) -> None:
    url = postgres.url(postgres.create_database("locks"))
    execute(
        url,
        "CREATE SCHEMA aaa",  # reset first: its table is locked while public's is awaited
        "CREATE TABLE aaa.first AS SELECT g AS id FROM generate_series(1, 100) g",
        "CREATE TABLE public.busy AS SELECT g AS id FROM generate_series(1, 100) g",
    )
    dump, manifest = dump_into_memory(component, url)
    execute(url, "DELETE FROM aaa.first WHERE id > 50")
    watch = Stopwatch(url, "SELECT count(*) FROM aaa.first")
    with psycopg.connect(url) as reader:
        reader.execute("SELECT count(*) FROM public.busy")  # idle in transaction now
        watch.start()
        impatient = functools.partial(component, BACKUP_LOCK_WAIT_TIMEOUT="2")
        began = time.monotonic()
        with pytest.raises(OperationFailed, match="locked by another session"):
            restore(impatient, url, dump, manifest)
        assert time.monotonic() - began < 10

        done: list[RestoreReport | BaseException] = []
        patient = functools.partial(component, BACKUP_LOCK_WAIT_TIMEOUT="30")
        worker = threading.Thread(
            target=lambda: done.append(_outcome(patient, url, dump, manifest)), daemon=True
        )
        worker.start()
        time.sleep(3)  # the restore waits for the reader all this time
        assert not done
        reader.rollback()  # the reader goes away
    worker.join(timeout=30)
    watch.stop.set()
    watch.join()
    assert done and isinstance(done[0], RestoreReport), done
    assert scalar(url, "SELECT count(*) FROM aaa.first") == 100
    assert watch.slowest < 2, f"an app read waited {watch.slowest:.1f} s"


def _outcome(make: ComponentFactory, url: str, dump: bytes, manifest: Any) -> Any:
    try:
        return restore(make, url, dump, manifest)
    except BaseException as exc:  # handed to the test's thread
        return exc


@pytest.mark.parametrize("schema", ["app.v2", 'it\'s $$ a "quoted" $x$ name'])
def test_a_schema_with_a_dot_or_quotes_in_its_name_counts_its_rows(
    component: ComponentFactory, postgres: PostgresServer, schema: str
) -> None:
    url = postgres.url(postgres.create_database("dots"))

    def statement(text: str) -> str:
        return sql.SQL(text).format(s=sql.Identifier(schema)).as_string(None)

    execute(
        url,
        statement("CREATE SCHEMA {s}"),
        statement('CREATE TABLE {s}."line.items" AS SELECT g AS id FROM generate_series(1, 7) g'),
        statement("CREATE TABLE {s}.plain AS SELECT g AS id FROM generate_series(1, 3) g"),
    )
    dump, manifest = dump_into_memory(component, url)
    assert manifest.source["row_counts"] == {f"{schema}.line.items": 7, f"{schema}.plain": 3}
    execute(url, statement("DELETE FROM {s}.plain"))
    report = restore(component, url, dump, manifest)
    assert "Row counts match the backup: 10 rows in 2 table(s)." in report.lines


def test_a_target_without_public_gets_a_fresh_databases_public(
    component: ComponentFactory, app_db: str, postgres: PostgresServer
) -> None:
    pristine = public_state(postgres.url(postgres.create_database("fresh")))
    dump, manifest = dump_into_memory(component, app_db)
    bare = postgres.url(postgres.create_database("bare"))
    execute(bare, "DROP SCHEMA public")
    restore(component, app_db, dump, manifest, target=bare)
    assert public_state(bare) == pristine


def test_without_the_reset_the_restore_still_never_holds_tables_while_it_waits(
    component: ComponentFactory, postgres: PostgresServer
) -> None:
    """A role that may not drop public (managed databases): pg_restore --clean drops the
    tables one by one; it must not queue for one with the others already locked."""
    name = postgres.create_database("limited")
    role = f"limited_{name}"
    execute(
        postgres.url(name),
        f"CREATE ROLE {role} LOGIN PASSWORD 'limited-pw'",
        f"GRANT ALL ON SCHEMA public TO {role}",
    )
    url = postgres.url(name, role, "limited-pw")
    execute(
        url,
        "CREATE TABLE t_a AS SELECT g AS id FROM generate_series(1, 100) g",
        "CREATE TABLE t_z AS SELECT g AS id FROM generate_series(1, 100) g",
    )
    dump, manifest = dump_into_memory(component, url)
    execute(url, "DELETE FROM t_z WHERE id > 50")
    watch = Stopwatch(postgres.url(name), "SELECT count(*) FROM t_z")
    done: list[RestoreReport | BaseException] = []
    patient = functools.partial(component, BACKUP_LOCK_WAIT_TIMEOUT="30")
    worker = threading.Thread(
        target=lambda: done.append(_outcome(patient, url, dump, manifest)), daemon=True
    )
    with psycopg.connect(postgres.url(name)) as reader:
        reader.execute("SELECT count(*) FROM t_a")  # idle in transaction now
        watch.start()
        worker.start()
        time.sleep(3)
        assert not done
    worker.join(timeout=30)
    watch.stop.set()
    watch.join()
    assert done and isinstance(done[0], RestoreReport), done
    assert any("may not drop and recreate the schemas" in line for line in done[0].lines)
    assert scalar(url, "SELECT count(*) FROM t_z") == 100
    assert watch.slowest < 2, f"an app read waited {watch.slowest:.1f} s"


def test_the_databases_owner_resets_public_as_it_was_without_being_superuser(
    component: ComponentFactory, postgres: PostgresServer
) -> None:
    """The usual app setup: the app's role owns the database, so it is a member of
    pg_database_owner, which owns public; the reset (not the fallback) must serve it."""
    name = postgres.create_database("owned")
    owner = f"owner_{name}"
    execute(
        postgres.url(name),
        f"CREATE ROLE {owner} LOGIN PASSWORD 'owner-pw'",
        f'ALTER DATABASE "{name}" OWNER TO {owner}',
    )
    url = postgres.url(name, owner, "owner-pw")
    execute(url, "CREATE TABLE notes AS SELECT g AS id FROM generate_series(1, 5) g")
    pristine = public_state(url)
    dump, manifest = dump_into_memory(component, url)
    execute(url, "CREATE TABLE added_later (x int)")
    report = restore(component, url, dump, manifest)
    assert not any("may not drop" in line for line in report.lines)
    assert scalar(url, "SELECT to_regclass('added_later')") is None  # the reset ran
    assert public_state(url) == pristine
