"""Row counts taken from pg_dump's stream (stream_counts.py) agree with count(*), on the
tables most likely to fool a newline counter; and a stream that cannot be read falls back
to count(*) instead of failing the backup."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cosmic_backup.components.base import BackupRequest
from cosmic_backup.components.database import stream_counts
from cosmic_backup.components.database.dump import list_tables
from cosmic_backup.components.database.stream_counts import StreamCounter
from tests.integration.database.conftest import ComponentFactory, PostgresServer

AWKWARD = [
    'CREATE SCHEMA "odd.schema ""q"" ü"',
    'CREATE TABLE "odd.schema ""q"" ü"."t.a ble ""x"" é" (v text, w text)',
    # Newlines, carriage returns, tabs and backslashes inside values, a value that is a
    # backslash and a dot (the COPY end marker when unescaped), empty strings and NULLs.
    """INSERT INTO "odd.schema ""q"" ü"."t.a ble ""x"" é" VALUES
       (E'line\\nbreak', E'tab\\there'), (E'\\n\\n\\n', E'back\\\\slash'), ('\\.', E'\\\\.'),
       ('', NULL), (NULL, ''), (E'cr\\r\\nlf', E'end\\\\'), (repeat(E'x\\n', 5000), 'big')""",
    "CREATE TABLE empty_one (i int)",
    "CREATE TABLE bytes (b bytea)",
    "INSERT INTO bytes SELECT decode(repeat('0a5c2e0d09', g), 'hex') "
    "FROM generate_series(1, 300) g",
    "CREATE TABLE parted (k int, v text) PARTITION BY RANGE (k)",
    "CREATE TABLE parted_low PARTITION OF parted FOR VALUES FROM (0) TO (100)",
    "CREATE TABLE parted_high PARTITION OF parted FOR VALUES FROM (100) TO (1000)",
    "INSERT INTO parted SELECT g, E'p\\n' || g FROM generate_series(0, 999) g",
    # Rows whose lengths put a newline byte (10) into a chunk's length prefix.
    "CREATE TABLE lengths (s text)",
    "INSERT INTO lengths SELECT repeat('a', n) FROM generate_series(1, 3000) n",
    "CREATE UNLOGGED TABLE scratch AS SELECT g FROM generate_series(1, 50) g",
    "SELECT lo_from_bytea(0, decode(repeat('0a', 70000), 'hex'))",
    "SELECT lo_from_bytea(0, '\\x0a0a00')",
]


@pytest.fixture
def awkward_db(postgres: PostgresServer) -> str:
    url = postgres.url(postgres.create_database("awk"))
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in AWKWARD:
            conn.execute(statement)  # type: ignore[arg-type]
    return url


def counted(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        counts = {}
        for schema, table in list_tables(conn):
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
            row = conn.execute(query).fetchone()
            counts[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


def test_stream_counts_match_count_star_on_awkward_tables(
    component: ComponentFactory, awkward_db: str, tmp_path: Path
) -> None:
    with open(tmp_path / "dump", "wb") as out:
        produced = component(awkward_db).produce(out, BackupRequest())
    expected = counted(awkward_db)
    assert expected['odd.schema "q" ü.t.a ble "x" é'] == 7
    assert expected["public.empty_one"] == 0 and expected["public.parted_high"] == 900
    assert produced.source.row_counts == expected


@pytest.mark.parametrize("walk", ["c", "python"])
@pytest.mark.parametrize("piece", [1, 3, 5, 4096])
def test_the_counts_do_not_depend_on_how_the_stream_is_cut(
    awkward_db: str, piece: int, walk: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both walks of a table's chunks (C, and Python for an install without a compiler)."""
    walker = stream_counts.walk_c if walk == "c" else stream_counts.walk_py
    assert walker is not None, "the C row counter (_chunk_walk) was not built"
    monkeypatch.setattr(stream_counts, "walk", walker)
    dump = subprocess.run(
        ["pg_dump", "-Fc", "-Z0", f"--dbname={awkward_db}"], check=True, capture_output=True
    ).stdout
    counter = StreamCounter()
    for start in range(0, len(dump), piece):
        counter.feed(dump[start : start + piece])
    assert counter.failure is None
    assert counter.counts() == counted(awkward_db)


def test_an_unreadable_stream_falls_back_to_count_star(
    component: ComponentFactory,
    awkward_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As if pg_dump wrote an archive version newer than this module knows."""
    monkeypatch.setattr(stream_counts, "KNOWN_VERSIONS", frozenset({(1, 99)}))
    with caplog.at_level(logging.INFO), open(tmp_path / "dump", "wb") as out:
        produced = component(awkward_db).produce(out, BackupRequest())
    assert produced.source.row_counts == counted(awkward_db)
    assert "unknown archive version" in caplog.text and "count(*)" in caplog.text
