"""Rows in primary-key order inside the dump (row_order.py): the archive still restores with
stock pg_restore to the same contents, the stream's row counts stay, a second backup after
appended rows adds few chunks, and the sort's temporary folder never outlives the run."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cosmic_backup.components.base import BackupRequest
from cosmic_backup.components.database import row_order
from cosmic_backup.components.database.row_order import copy_columns
from cosmic_backup.errors import OperationFailed
from tests.conftest import Project
from tests.integration.database.appdb import execute
from tests.integration.database.conftest import ComponentFactory, PostgresServer

KEY = "row order tests passphrase 0123456"
TABLES = [
    # Inserted in shuffled order, then updated and deleted: heap order is not key order.
    "CREATE TABLE ints (id bigint PRIMARY KEY, v text)",
    "INSERT INTO ints SELECT g, md5(g::text) FROM generate_series(1, 20000) g ORDER BY random()",
    "UPDATE ints SET v = v || '!' WHERE id % 7 = 0",
    "DELETE FROM ints WHERE id % 11 = 0",
    # A composite key of text and integer, its columns not first and not in key order.
    'CREATE TABLE composite (pad text, "Odd ""n""" int, k text, PRIMARY KEY (k, "Odd ""n"""))',
    "INSERT INTO composite SELECT repeat('p', g % 50), g % 13, E'k\\t' || (g % 97) "
    "FROM generate_series(1, 1261) g ORDER BY random()",
    "CREATE TABLE nokey (v text, w int)",  # duplicates included
    "INSERT INTO nokey SELECT E'line\\n' || (g % 40), g % 3 FROM generate_series(1, 2000) g "
    "ORDER BY random()",
    # TOASTed values and one row far above the big-row threshold (hex doubles it).
    "CREATE TABLE blobs (id int PRIMARY KEY, b bytea)",
    "INSERT INTO blobs SELECT g, decode(repeat(md5(g::text), 2000 * g), 'hex') "
    "FROM generate_series(1, 20) g ORDER BY random()",
    "INSERT INTO blobs VALUES (0, decode(repeat(md5('big'), 320000), 'hex'))",
    "CREATE TABLE empty_one (id int PRIMARY KEY)",
    "CREATE TABLE texts (name text PRIMARY KEY, n int)",
    # Its tag is a number on every row but the last one pg_dump writes.
    "CREATE TABLE mixed (id int PRIMARY KEY, tag text)",
    "INSERT INTO mixed SELECT g, (70001 - g)::text FROM generate_series(1, 70000) g",
    "INSERT INTO mixed VALUES (0, 'x')",
    "INSERT INTO texts SELECT 'n' || g, g FROM generate_series(1, 500) g ORDER BY random()",
]
NAMES = ["ints", "composite", "nokey", "blobs", "empty_one", "texts", "mixed"]


@pytest.fixture(params=["c", "python"])
def sort_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both sorts: _row_sort's (C), and the Python one an install without a compiler uses."""
    if request.param == "python":
        monkeypatch.setattr(row_order, "_row_sort", None)
    else:
        assert row_order._row_sort is not None, "the C row sort (_row_sort) was not built"
    return str(request.param)


@pytest.fixture
def order_db(postgres: PostgresServer) -> str:
    url = postgres.url(postgres.create_database("order"))
    execute(url, *TABLES)
    return url


def select_all(table: str) -> sql.Composed:
    return sql.SQL("SELECT * FROM {}").format(sql.Identifier(table))


def contents(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return {name: sorted(conn.execute(select_all(name)).fetchall(), key=repr) for name in NAMES}


def restored(dump: Path, postgres: PostgresServer) -> str:
    url = postgres.url(postgres.create_database("restored"))
    subprocess.run(
        ["pg_restore", "--single-transaction", "--exit-on-error", f"--dbname={url}", str(dump)],
        check=True,
        capture_output=True,
    )
    return url


def copy_rows(dump: Path, table: str) -> list[bytes]:
    """The table's COPY rows in the order the archive holds them."""
    script = subprocess.run(
        ["pg_restore", "--data-only", f"--table={table}", "-f", "-", str(dump)],
        check=True,
        capture_output=True,
    ).stdout
    body = script.split(b"FROM stdin;\n", 1)[1]
    return body.split(b"\n\\.\n", 1)[0].split(b"\n") if not body.startswith(b"\\.") else []


def dump_with(component: ComponentFactory, url: str, path: Path, **environ: str) -> dict[str, int]:
    environ = {"BACKUP_DB_ROW_ORDER": "primary-key", **environ}
    with open(path, "wb") as out:
        produced = component(url, **environ).produce(out, BackupRequest())
    return produced.source.row_counts


def test_the_ordered_dump_restores_to_the_same_contents_with_stock_pg_restore(
    sort_path: str,
    component: ComponentFactory,
    order_db: str,
    postgres: PostgresServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    plain, ordered = tmp_path / "plain.dump", tmp_path / "ordered.dump"
    plain_counts = dump_with(component, order_db, plain, BACKUP_DB_ROW_ORDER="dump")
    with caplog.at_level(logging.INFO):  # 1 MiB of rows: every table above it spills
        counts = dump_with(component, order_db, ordered, BACKUP_DB_ROW_ORDER_MEMORY="1")
    assert "7 table(s) in primary-key order, 3 spilled" in caplog.text  # ints, blobs, mixed
    assert counts == plain_counts and counts["public.ints"] == 20000 - 1818
    assert ordered.stat().st_size == plain.stat().st_size  # a permutation of the pieces
    assert contents(restored(ordered, postgres)) == contents(order_db)
    ids = [int(row.split(b"\t")[0]) for row in copy_rows(ordered, "ints")]
    assert ids == sorted(ids) and len(ids) == counts["public.ints"]
    assert [int(r.split(b"\t")[0]) for r in copy_rows(plain, "ints")] != ids  # heap order
    blob_ids = [int(row.split(b"\t")[0]) for row in copy_rows(ordered, "blobs")]
    assert blob_ids == list(range(21))  # numeric, the big row included
    keys = [(r.split(b"\t")[2], int(r.split(b"\t")[1])) for r in copy_rows(ordered, "composite")]
    assert keys == sorted(keys)
    rows = copy_rows(ordered, "nokey")
    assert rows == sorted(rows)
    assert copy_rows(ordered, "empty_one") == []


def test_the_order_does_not_depend_on_the_memory_bound(
    component: ComponentFactory, order_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nor on the sort: C with 1 MiB and with 64 MiB, Python with 64 MiB."""
    spilled, in_memory = tmp_path / "spilled.dump", tmp_path / "memory.dump"
    dump_with(component, order_db, spilled, BACKUP_DB_ROW_ORDER_MEMORY="1")
    dump_with(component, order_db, in_memory)
    monkeypatch.setattr(row_order, "_row_sort", None)
    python = tmp_path / "python.dump"
    dump_with(component, order_db, python)
    for table in NAMES:
        assert copy_rows(spilled, table) == copy_rows(in_memory, table)
        assert copy_rows(python, table) == copy_rows(in_memory, table)


def test_a_key_that_does_not_parse_keeps_pg_dumps_order_for_that_table(
    sort_path: str,
    component: ComponentFactory,
    order_db: str,
    postgres: PostgresServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As if the key columns were read wrong: mixed's tag taken for an integer key, which
    fails on the last row, after sorted runs were spilled; the table comes out exactly
    as pg_dump wrote it, and the others sorted."""
    real_function, real_spec = row_order.key_function, row_order.key_spec

    def wrong_function(columns: list[str] | None, key: Any) -> row_order.Key:
        if columns == ["id", "tag"]:
            return lambda row: int(row.split(b"\t")[1])
        return real_function(columns, key)

    def wrong_spec(columns: list[str] | None, key: Any) -> row_order.KeySpec | None:
        return ((1, True),) if columns == ["id", "tag"] else real_spec(columns, key)

    monkeypatch.setattr(row_order, "key_function", wrong_function)
    monkeypatch.setattr(row_order, "key_spec", wrong_spec)
    plain, ordered = tmp_path / "plain.dump", tmp_path / "ordered.dump"
    dump_with(component, order_db, plain, BACKUP_DB_ROW_ORDER="dump")
    with caplog.at_level(logging.INFO):
        dump_with(component, order_db, ordered, BACKUP_DB_ROW_ORDER_MEMORY="1")
    assert "pg_dump's order kept for public.mixed" in caplog.text
    assert copy_rows(ordered, "mixed") == copy_rows(plain, "mixed")
    assert copy_rows(plain, "mixed")[-1] == b"0\tx"  # the surprise came last
    ids = [int(row.split(b"\t")[0]) for row in copy_rows(ordered, "ints")]
    assert ids == sorted(ids)
    assert contents(restored(ordered, postgres)) == contents(order_db)


def test_the_archive_does_not_depend_on_how_the_stream_is_cut(
    sort_path: str, order_db: str, tmp_path: Path
) -> None:
    """pg_dump's stream cut in pieces of 7 bytes, 4 KiB (the head then arrives before it
    is parsed: it is parsed at the end) and 1 MiB gives the same reordered archive."""
    dump = subprocess.run(
        ["pg_dump", "-Fc", "-Z0", f"--dbname={order_db}"], check=True, capture_output=True
    ).stdout
    keys = {("public", name): (("id", True),) for name in ("ints", "blobs", "empty_one")}
    written = set()
    for cut in (7, 4096, 1 << 20):
        out = io.BytesIO()
        sink = row_order.RowOrderWriter(out, keys, tmp_path, 1 << 20)
        for start in range(0, len(dump), cut):
            sink.write(dump[start : start + cut])
        sink.finish()
        assert sink.stats.sorted_tables == len(NAMES) and sink.stats.passed_through is None
        written.add(out.getvalue())
    assert len(written) == 1 and len(next(iter(written))) == len(dump)
    assert next(iter(written)) != dump
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("statement", "columns"),
    [
        ("COPY public.t (id, v) FROM stdin;\n", ["id", "v"]),
        ('COPY "s.x"."t ""q""" ("a, b", "C""", d) FROM stdin;\n', ["a, b", 'C"', "d"]),
        ("COPY public.nothing  FROM stdin;\n", None),
        ("COPY public.t FROM stdin;\n", []),
        ("INSERT INTO t VALUES (1);\n", None),
    ],
)
def test_copy_statement_columns(statement: str, columns: list[str] | None) -> None:
    assert copy_columns(statement) == columns


# -- through the CLI and the store ------------------------------------------------------
@pytest.fixture
def order_project(project: Project, order_db: str) -> Project:
    project.env.update(
        {"DATABASE_URL": order_db, "BACKUP_KEY": KEY, "BACKUP_DB_ROW_ORDER": "primary-key"}
    )
    return project


def newest(project: Project) -> dict[str, Any]:
    result = project.run("--json", "list", "database")
    assert result.returncode == 0, result.stderr
    return [e for e in json.loads(result.stdout) if "pre-restore" not in e["tags"]][-1]


def leftovers(project: Project) -> list[Path]:
    return list((project.backups / "database").glob(".dump-*"))


def test_moved_rows_and_rows_added_at_the_end_add_few_chunks(
    order_project: Project, order_db: str
) -> None:
    execute(
        order_db,
        "CREATE TABLE posts (id bigint PRIMARY KEY, body text)",
        "INSERT INTO posts SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 40000) g",
    )
    first = order_project.run("backup", "database")
    assert first.returncode == 0, first.stderr
    assert not leftovers(order_project)
    full = newest(order_project)
    # Rows that move without changing (an UPDATE writes a new version elsewhere in the
    # heap: in pg_dump's order nearly every chunk of posts is new), and new ids.
    execute(
        order_db,
        "UPDATE posts SET body = body WHERE id % 50 = 0",
        "INSERT INTO posts SELECT g, repeat(md5(g::text), 8) FROM generate_series(40001, 40400) g",
    )
    second = order_project.run("backup", "database")
    assert second.returncode == 0, second.stderr
    added = newest(order_project)["chunk_list"]
    assert full["chunk_list"]["chunks"] >= 8
    # the header chunk, the chunk where posts' new rows start, and the table after it
    # pg_dump's header, an entry part, posts' last chunks and the resync after them
    assert added["new_chunks"] <= 5, added
    assert not leftovers(order_project)
    restore = order_project.run("restore", "database", "latest", "--yes", "--no-safety-backup")
    assert restore.returncode == 0, restore.stderr
    assert "Row counts match the backup" in restore.stdout


def test_the_sort_folder_is_removed_when_the_dump_fails(
    sort_path: str,
    component: ComponentFactory,
    order_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Writing the merged rows fails (as if the disk filled) while sorted runs are on disk."""
    real_write, real_merge = row_order.RowOrderWriter._write_records, row_order.RunSort._merge
    failed: list[Path] = []

    def full_disk(folder: Path) -> None:
        if list(folder.glob("*.run")):
            failed.append(folder)
            raise OSError(28, "No space left on device")

    def write_records(self: row_order.RowOrderWriter, records: Any, spill: Any) -> None:
        full_disk(spill.folder)
        real_write(self, records, spill)

    def merge(self: row_order.RunSort, runs: Any, write: Any, big: Any) -> None:
        full_disk(self.spill.folder)
        real_merge(self, runs, write, big)

    monkeypatch.setattr(row_order.RowOrderWriter, "_write_records", write_records)
    monkeypatch.setattr(row_order.RunSort, "_merge", merge)
    made = component(order_db, BACKUP_DB_ROW_ORDER="primary-key", BACKUP_DB_ROW_ORDER_MEMORY="1")
    with open(tmp_path / "dump", "wb") as out, pytest.raises(OperationFailed) as raised:
        made.produce(out, BackupRequest())
    assert "No space left on device" in str(raised.value)
    assert "BACKUP_DB_ROW_ORDER=dump" in str(raised.value)
    assert failed and not failed[0].exists()
    assert not list(made._dump_folders().glob(".dump-*"))


def test_the_sort_folder_is_removed_after_sigterm(order_project: Project, order_db: str) -> None:
    execute(
        order_db,
        "CREATE TABLE filler (id bigint PRIMARY KEY, pad text)",
        "INSERT INTO filler SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 300000) g "
        "ORDER BY random()",
    )
    run = order_project.popen("backup", "database", env={"BACKUP_DB_ROW_ORDER_MEMORY": "1"})
    deadline = time.monotonic() + 60
    while not list((order_project.backups / "database").glob(".dump-*/*.run")):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)
    _out, err = run.communicate(timeout=60)
    assert run.returncode != 0 and "Traceback" not in err
    assert not leftovers(order_project)
