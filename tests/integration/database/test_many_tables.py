"""A database with thousands of tables, at the server's default max_locks_per_transaction
(64): where plain pg_dump works, a backup must too."""

from __future__ import annotations

import io
import os
import subprocess

import psycopg
import pytest

from cosmic_backup.components.base import RestoreRequest
from cosmic_backup.errors import OperationFailed
from tests.integration.database.appdb import execute, scalar
from tests.integration.database.conftest import ComponentFactory, PostgresServer
from tests.integration.database.test_database_component import dbname, dump_into_memory

TABLES = 4000
CREATE_BATCH = """
DO $$ BEGIN FOR i IN {first}..{last} LOOP
  EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY)', i);
END LOOP; END $$
"""


def test_a_backup_needs_no_more_locks_than_pg_dump(
    component: ComponentFactory, postgres: PostgresServer
) -> None:
    url = postgres.url(postgres.create_database("many"))
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SHOW max_locks_per_transaction").fetchone() == ("64",)
        for first in range(0, TABLES, 500):  # one transaction would run out of locks itself
            conn.execute(CREATE_BATCH.format(first=first, last=first + 499))
        conn.execute("INSERT INTO t7 VALUES (1), (2)")
    pg_dump = [str(postgres.bin_dir / "pg_dump"), "--format=custom", "--compress=0"]
    where = ["--host=127.0.0.1", f"--port={postgres.port}", "--username=postgres"]
    plain = subprocess.run(
        [*pg_dump, *where, dbname(url)],
        env={**os.environ, "PGPASSWORD": postgres.password},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    assert plain.returncode == 0, plain.stderr

    dump, manifest = dump_into_memory(component, url)
    assert len(manifest.source["row_counts"]) == TABLES
    assert manifest.source["row_counts"]["public.t7"] == 2

    # Replacing them all in one transaction needs a lock on every old and new table: the
    # restore fails, unchanged, and the server's hint (the fix) reaches the sentence.
    execute(url, "INSERT INTO t7 VALUES (3)")
    plan = component(url).plan_restore(manifest, RestoreRequest(safety_backup=False))
    with pytest.raises(OperationFailed) as failed:
        component(url).consume(io.BytesIO(dump), manifest, plan)
    assert "max_locks_per_transaction" in failed.value.message
    assert "the database is unchanged" in failed.value.message
    assert scalar(url, "SELECT count(*) FROM t7") == 3
