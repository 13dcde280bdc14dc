"""Schemas real databases hold, restored exactly and checked without false alarms: long
and multibyte names, table inheritance, range types and casts, schema publications,
operator classes in pg_catalog families, functions of user types, policies naming roles.

A check that cries wolf is worse than none: an operator who learns to ignore FAILED
stops reading it. So each case restores in every way and the checks must stay silent.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cosmic_backup.components.base import RestoreRequest
from cosmic_backup.components.database.objects import missing_objects, parse_toc
from cosmic_backup.components.database.stream_counts import Head
from cosmic_backup.components.database.unschemed import policy_roles
from cosmic_backup.components.database.url import parse_database_url
from cosmic_backup.errors import OperationFailed
from cosmic_backup.operations.restore_sandbox import with_role_advice
from tests.conftest import Project
from tests.integration.database.appdb import execute, scalar, table_contents
from tests.integration.database.conftest import ComponentFactory, PostgresServer
from tests.integration.database.test_database_component import dump_into_memory

KEY = "exact restore passphrase 0123456789"
AUDITOR = "cosmic_exact_auditor"  # a role the session's server has, a throwaway one not

# Django's own names (auth, admin): its constraint names fit in 63 bytes, but the TOC's
# "table constraint" of most is longer.
DJANGO_NAMES = """
CREATE TABLE django_content_type (id serial PRIMARY KEY, app_label varchar(100) NOT NULL,
    model varchar(100) NOT NULL,
    CONSTRAINT django_content_type_app_label_model_76bd3d3b_uniq UNIQUE (app_label, model));
CREATE TABLE auth_permission (id serial PRIMARY KEY, name varchar(255) NOT NULL,
    content_type_id integer NOT NULL, codename varchar(100) NOT NULL,
    CONSTRAINT auth_permission_content_type_id_codename_01ab375a_uniq
        UNIQUE (content_type_id, codename),
    CONSTRAINT auth_permission_content_type_id_2f476e4b_fk_django_co
        FOREIGN KEY (content_type_id) REFERENCES django_content_type (id)
        DEFERRABLE INITIALLY DEFERRED);
CREATE TABLE auth_group (id serial PRIMARY KEY, name varchar(150) NOT NULL UNIQUE);
CREATE TABLE auth_group_permissions (id bigserial PRIMARY KEY, group_id integer NOT NULL,
    permission_id integer NOT NULL,
    CONSTRAINT auth_group_permissions_group_id_permission_id_0cd325b0_uniq
        UNIQUE (group_id, permission_id),
    CONSTRAINT auth_group_permissions_group_id_b120cbf9_fk_auth_group_id
        FOREIGN KEY (group_id) REFERENCES auth_group (id) DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT auth_group_permissio_permission_id_84c5c92e_fk_auth_perm
        FOREIGN KEY (permission_id) REFERENCES auth_permission (id)
        DEFERRABLE INITIALLY DEFERRED);
CREATE INDEX auth_group_permissions_permission_id_84c5c92e ON auth_group_permissions
    (permission_id);
CREATE TABLE django_admin_log (id serial PRIMARY KEY, action_flag smallint NOT NULL,
    content_type_id integer,
    CONSTRAINT django_admin_log_action_flag_check CHECK (action_flag >= 0),
    CONSTRAINT django_admin_log_content_type_id_c4bce8eb_fk_django_co
        FOREIGN KEY (content_type_id) REFERENCES django_content_type (id)
        DEFERRABLE INITIALLY DEFERRED);
INSERT INTO django_content_type (app_label, model) VALUES ('auth', 'permission');
INSERT INTO auth_permission (name, content_type_id, codename) VALUES ('Can add', 1, 'add');
"""

# Names of two and three bytes a character, the constraint's "table constraint" > 63 bytes.
MULTIBYTE_NAMES = """
CREATE TABLE "größe_ñandú_表" ("名前" text,
    CONSTRAINT "größe_ñandú_表_名前_eindeutigkeitsüberprüfung" UNIQUE ("名前"));
INSERT INTO "größe_ñandú_表" VALUES ('東京'), ('Zürich');
"""

# A function and a procedure of a user type (the TOC says "f(public.mood)").
USER_TYPE_FUNCTIONS = """
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE FUNCTION mood_label(m mood, n integer) RETURNS text LANGUAGE sql IMMUTABLE
    AS $$ SELECT m::text || n $$;
CREATE PROCEDURE note_mood(m mood) LANGUAGE sql AS $$ SELECT 1 $$;
"""

# Objects of no schema, and operator-class members in a pg_catalog family: each in the
# dump and recreated by it, so a reset that drops them loses nothing.
RECREATED_ELSEWHERE = """
CREATE TYPE floatrange AS RANGE (subtype = float8, subtype_diff = float8mi);
CREATE TABLE spans (id int PRIMARY KEY, span floatrange);
INSERT INTO spans VALUES (1, '[1.5,2.5)'), (2, 'empty');
CREATE FUNCTION span_width(floatrange) RETURNS float8 LANGUAGE sql IMMUTABLE
    AS $$ SELECT upper($1) - lower($1) $$;
CREATE CAST (floatrange AS float8) WITH FUNCTION span_width(floatrange);
CREATE PUBLICATION cosmic_everything_public FOR TABLES IN SCHEMA public;
CREATE TYPE int8alias;
CREATE FUNCTION int8alias_in(cstring) RETURNS int8alias LANGUAGE internal IMMUTABLE STRICT
    AS 'int8in';
CREATE FUNCTION int8alias_out(int8alias) RETURNS cstring LANGUAGE internal IMMUTABLE STRICT
    AS 'int8out';
CREATE TYPE int8alias (input = int8alias_in, output = int8alias_out, like = int8);
CREATE FUNCTION int8alias_eq(int8alias, int8alias) RETURNS boolean LANGUAGE internal
    IMMUTABLE STRICT AS 'int8eq';
CREATE OPERATOR = (function = int8alias_eq, leftarg = int8alias, rightarg = int8alias);
CREATE OPERATOR CLASS int8alias_ops FOR TYPE int8alias USING hash FAMILY integer_ops
    AS OPERATOR 1 =;
"""

EVERYTHING = f"""
CREATE DOMAIN posint AS integer;
CREATE TABLE stock (id serial PRIMARY KEY, qty posint);
INSERT INTO stock (qty) VALUES (1), (2), (-3);
ALTER DOMAIN posint ADD CONSTRAINT posint_positive CHECK (VALUE > 0) NOT VALID;
CREATE TABLE animals (id int PRIMARY KEY, name text);
CREATE TABLE dogs (breed text, PRIMARY KEY (id)) INHERITS (animals);
INSERT INTO animals VALUES (1, 'generic'), (2, 'another');
INSERT INTO dogs VALUES (3, 'rex', 'collie');
CREATE TABLE a_table_whose_name_is_longer_than_29 (id bigserial PRIMARY KEY, note text);
INSERT INTO a_table_whose_name_is_longer_than_29 (note) VALUES ('one'), ('two');
CREATE TABLE secrets (id int PRIMARY KEY, holder text);
ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
CREATE POLICY auditors_read ON secrets FOR SELECT TO {AUDITOR} USING (true);
INSERT INTO secrets VALUES (1, 'x');
{DJANGO_NAMES}
{MULTIBYTE_NAMES}
{USER_TYPE_FUNCTIONS}
{RECREATED_ELSEWHERE}
"""  # noqa: S608 - the constants of this module

# What the restored database must equal, beyond its rows: every object pg_dump recreates,
# but for those whose names hold an oid (toast tables, foreign keys' internal triggers).
CATALOG = """
SELECT d FROM (SELECT pg_catalog.pg_describe_object(classid, objid, objsubid) AS d
               FROM pg_catalog.pg_depend WHERE objid >= 16384 AND classid <> 0) o
WHERE d !~ '^(toast table|index) pg_toast\\.|^trigger RI_ConstraintTrigger_'
UNION SELECT 'constraint ' || conname || ' ' || pg_catalog.pg_get_constraintdef(oid)
FROM pg_catalog.pg_constraint WHERE connamespace = 'public'::regnamespace
UNION SELECT 'policy ' || polname || ' ' || polroles::regrole[]::text FROM pg_catalog.pg_policy
UNION SELECT 'publication ' || pubname FROM pg_catalog.pg_publication
ORDER BY 1
"""


def catalog(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [row[0] for row in conn.execute(CATALOG).fetchall()]


def content(url: str) -> tuple[Any, ...]:
    return catalog(url), table_contents(url)


def assert_same(after: tuple[Any, ...], before: tuple[Any, ...]) -> None:
    """Equal catalogs and rows; what differs named, not a truncated diff."""
    gone, added = sorted(set(before[0]) - set(after[0])), sorted(set(after[0]) - set(before[0]))
    assert (gone, added) == ([], []), f"missing {gone}, not in the original {added}"
    assert after == before


def with_auditor(url: str) -> None:
    execute(
        url,
        f"DO $$ BEGIN CREATE ROLE {AUDITOR}; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    )


@pytest.fixture
def exact_db(postgres: PostgresServer) -> str:
    url = postgres.url(postgres.create_database("exact"))
    with_auditor(url)
    execute(url, "SET client_min_messages = error; " + EVERYTHING)
    return url


def listed(url: str) -> set[Any]:
    """The checked objects of the table of contents of a dump of `url`."""
    dump = subprocess.run(["pg_dump", "-Fc", url], capture_output=True, check=True).stdout
    toc = subprocess.run(["pg_restore", "--list"], input=dump, capture_output=True, check=True)
    return parse_toc(toc.stdout.decode())


def test_long_multibyte_and_user_typed_names_compare_exactly(exact_db: str) -> None:
    objects = listed(exact_db)
    target = parse_database_url(exact_db, "the test database")
    assert len(objects) > 40
    assert missing_objects(target, objects, 10) == []
    # The comparison still sees what is gone, by its whole name.
    execute(
        exact_db,
        'ALTER TABLE "größe_ñandú_表" '
        'DROP CONSTRAINT "größe_ñandú_表_名前_eindeutigkeitsüberprüfung"',
        "ALTER TABLE auth_permission DROP CONSTRAINT "
        "auth_permission_content_type_id_2f476e4b_fk_django_co",
        "DROP PROCEDURE note_mood",
    )
    assert [str(item) for item in missing_objects(target, objects, 10)] == [
        "constraint public.größe_ñandú_表 größe_ñandú_表_名前_eindeutigkeitsüberprüfung",
        "fk constraint public.auth_permission "
        "auth_permission_content_type_id_2f476e4b_fk_django_co",
        "procedure public.note_mood(public.mood)",
    ]


def restore(make: ComponentFactory, url: str, dump: bytes, manifest: Any, **request: Any) -> Any:
    plan = make(url).plan_restore(manifest, RestoreRequest(safety_backup=False, **request))
    return make(url).consume(io.BytesIO(dump), manifest, plan)


def test_what_the_dump_recreates_is_no_dependent_outside_it_and_what_it_lacks_is(
    component: ComponentFactory, exact_db: str
) -> None:
    """A range type's multirange cast, a user cast, a FOR TABLES IN SCHEMA publication and
    an operator class in a pg_catalog family are dropped by the reset and recreated by
    the dump: the reset goes ahead. An operator added to a pg_catalog family with ALTER
    OPERATOR FAMILY is not in any dump: the reset refuses to lose it."""
    dump, manifest = dump_into_memory(component, exact_db)
    before = content(exact_db)
    execute(exact_db, "DELETE FROM dogs", "DROP CAST (floatrange AS float8)")
    restore(component, exact_db, dump, manifest)
    assert_same(content(exact_db), before)

    execute(
        exact_db,
        "ALTER OPERATOR FAMILY integer_ops USING btree ADD OPERATOR 3 = (int8alias, int8alias)",
    )
    with pytest.raises(OperationFailed) as refused:
        restore(component, exact_db, dump, manifest)
    message = refused.value.message
    assert "would drop 1 object(s)" in message, message
    assert "operator 3 (int8alias, int8alias) of operator family integer_ops" in message


INHERITANCE = """
CREATE TABLE animals (id int PRIMARY KEY, name text);
CREATE TABLE dogs (breed text) INHERITS (animals);
INSERT INTO animals VALUES (1, 'generic'), (2, 'another');
INSERT INTO dogs VALUES (3, 'rex', 'collie');
"""


def test_an_inheritance_parent_counts_its_own_rows_as_the_backup_did(
    component: ComponentFactory, postgres: PostgresServer
) -> None:
    url = postgres.url(postgres.create_database("inherits"))
    execute(url, INHERITANCE)
    dump, manifest = dump_into_memory(component, url)
    assert manifest.source["row_counts"]["public.animals"] == 2  # its own, not the dog's
    report = restore(component, url, dump, manifest)  # in place
    assert report.details["row_counts"] == {"public.animals": 2, "public.dogs": 1}
    fresh = postgres.url(postgres.create_database("fresh"))
    report = restore(component, url, dump, manifest, target=fresh)
    assert report.details["row_counts"]["public.animals"] == 2
    assert table_contents(fresh) == table_contents(url)


RESTORE = ("restore", "database", "latest", "--yes", "--no-safety-backup")


def run_ok(project: Project, *args: str) -> dict[str, Any]:
    result = project.run("--json", *args)
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-3000:])
    return json.loads(result.stdout) if result.stdout.strip() else {}


@pytest.mark.slow
def test_every_kind_restores_in_every_way_with_identical_content(
    project: Project, exact_db: str, postgres: PostgresServer
) -> None:
    """The database of every case above: in place, --into, --jobs 2, the restore test
    (throwaway server, whose roles the policy names are created) and a directory-format
    backup in one transaction all end in exit 0 and the same catalog and rows."""
    project.env.update({"DATABASE_URL": exact_db, "BACKUP_KEY": KEY})
    run_ok(project, "backup", "database")
    before = content(exact_db)
    changes = ("DELETE FROM stock", "DELETE FROM dogs", "DROP POLICY auditors_read ON secrets")
    execute(exact_db, *changes)
    run_ok(project, *RESTORE)
    assert_same(content(exact_db), before)
    into = postgres.url(postgres.create_database("into"))
    run_ok(project, *RESTORE, "--into", into)
    assert_same(content(into), before)
    execute(exact_db, *changes)
    run_ok(project, *RESTORE, "--jobs", "2")
    assert_same(content(exact_db), before)
    report = run_ok(project, "verify", "--restore-test", "database")
    assert report["results"][0]["status"] == "ok", report
    assert report["results"][0]["figures"]["objects"] > 40
    # A directory-format backup (backup --jobs 2), restored in one transaction.
    project.env["BACKUP_DB_JOBS"] = "2"
    run_ok(project, "backup", "database")
    execute(exact_db, *changes)
    run_ok(project, *RESTORE, "--jobs", "1")
    assert_same(content(exact_db), before)


def django_settings(url: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(url)
    database = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params["dbname"],
        "USER": params["user"],
        "PASSWORD": params["password"],
        "HOST": params["host"],
        "PORT": params["port"],
    }
    apps = ["admin", "auth", "contenttypes", "sessions"]
    return (
        f"SECRET_KEY = 'test'\nUSE_TZ = True\nDATABASES = {{'default': {database!r}}}\n"
        f"INSTALLED_APPS = {[f'django.contrib.{app}' for app in apps]!r}\n"
    )


@pytest.mark.slow
def test_djangos_own_migrations_back_up_and_pass_the_restore_test(
    project: Project, postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.url(postgres.create_database("django"))
    (tmp_path / "djsettings.py").write_text(django_settings(url))
    migrate = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--no-input", "--skip-checks"],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "djsettings", "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    longest = scalar(
        url,
        "SELECT max(octet_length(c.relname::text || ' ' || co.conname::text)) "
        "FROM pg_constraint co JOIN pg_class c ON c.oid = co.conrelid",
    )
    assert longest > 63  # the names that were cut
    project.env.update({"DATABASE_URL": url, "BACKUP_KEY": KEY})
    run_ok(project, "backup", "database")
    report = run_ok(project, "verify", "--restore-test", "database")
    assert report["results"][0]["status"] == "ok", report
    listed = json.loads(project.run("--json", "list", "database").stdout)
    assert listed[-1]["restore_test"]["ok"] is True


def test_the_roles_policies_name_are_read_as_pg_dump_quotes_them() -> None:
    head = Head((1, 15), 4, {}, 0)
    head.policies = [
        "CREATE POLICY auditors ON public.secrets FOR SELECT TO cosmic_auditor USING (true);",
        'CREATE POLICY "p TO x" ON public."a b" AS RESTRICTIVE TO "Weird ""Role""", bob '
        "WITH CHECK (true);",
        "CREATE POLICY everyone ON public.t USING (true);",
    ]
    assert policy_roles(head) == {"cosmic_auditor", 'Weird "Role"', "bob"}


def test_a_role_the_throwaway_server_lacks_is_advised_with_into() -> None:
    failure = OperationFailed(
        "The restore failed and was rolled back; the database is unchanged. psql: ERROR:  role "
        '"mapper" does not exist. Create that role on this server: the backup names it '
        "beyond its GRANTs."
    )
    advised = with_role_advice(failure, throwaway=True).message
    assert "on this server" not in advised
    assert 'role "mapper" does not exist' in advised and "--into URL" in advised
    assert with_role_advice(failure, throwaway=False) is failure
