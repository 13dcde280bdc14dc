"""A --jobs restore fills in the data offsets of a dump pg_dump wrote through a pipe, so
pg_restore -j seeks to each table's data instead of scanning for it: the offsets must be
exactly the ones pg_dump writes itself when it can seek in its output."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
import pytest

from cosmic_backup.components.database import toc_offsets
from cosmic_backup.components.database.stream_counts import walk_c
from cosmic_backup.components.database.toc_offsets import set_data_offsets, toc_offset_fields
from tests.integration.database.conftest import PostgresServer


def offset_fields(path: Path) -> dict[int, bytes]:
    """dump id -> its TOC entry's offset field (flag byte + offset), as stored."""
    data = path.read_bytes()
    fields, _, _, size = toc_offset_fields(data)
    return {dump_id: data[at : at + 1 + size] for dump_id, at in fields.items()}


@pytest.mark.skipif(walk_c is None, reason="built without the C walker: offsets are left unset")
@pytest.mark.parametrize("window", [toc_offsets.WINDOW, 1000])  # 1000: prefixes and chunks
def test_offsets_filled_in_are_those_pg_dump_writes_to_a_file(  # split across windows
    postgres: PostgresServer, tmp_path: Path, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(toc_offsets, "WINDOW", window)
    name = postgres.create_database("offsets")
    with psycopg.connect(postgres.url(name), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE a AS SELECT g AS id, md5(g::text) AS t FROM generate_series(1, 20000) g"
        )
        conn.execute(
            "CREATE TABLE b AS SELECT g AS id, E'x\\ny' AS t FROM generate_series(1, 100) g"
        )
        conn.execute("CREATE TABLE empty (id int)")
        conn.execute("SELECT lo_from_bytea(0, 'a large object')")
        conn.execute("SELECT lo_from_bytea(0, repeat('z', 100000)::bytea)")
    env = {**os.environ, "PGPASSWORD": postgres.password}
    url = postgres.url(name, password="")
    pg_dump = str(postgres.bin_dir / "pg_dump")
    seek, pipe = tmp_path / "seek.dump", tmp_path / "pipe.dump"
    subprocess.run([pg_dump, "-Fc", "-Z0", f"--file={seek}", url], env=env, check=True)
    with open(pipe, "wb") as out:  # through a pipe, as our backups take it
        dump = subprocess.Popen([pg_dump, "-Fc", "-Z0", url], env=env, stdout=subprocess.PIPE)
        assert dump.stdout is not None
        while chunk := dump.stdout.read(1 << 16):
            out.write(chunk)
        assert dump.wait() == 0

    expected = offset_fields(seek)
    with_data = [dump_id for dump_id, field in expected.items() if field[0] == 2]
    assert len(with_data) == 4  # a, b, empty and the large objects
    assert all(offset_fields(pipe)[dump_id][0] == 1 for dump_id in with_data)  # not set

    assert set_data_offsets(pipe) == 4
    assert offset_fields(pipe) == expected
    assert set_data_offsets(pipe) == 0  # already set: nothing to do


def test_a_file_that_is_not_a_dump_is_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "not-a-dump"
    path.write_bytes(b"PGDMP but not really" * 10)
    assert set_data_offsets(path) == 0
    assert path.read_bytes() == b"PGDMP but not really" * 10
