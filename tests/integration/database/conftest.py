"""A real PostgreSQL server for the database tests, started once per session in a temp
folder (see cosmic_backup.components.database.throwaway), and databases made from it: each
test gets its own."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from cosmic_backup.components.database import DatabaseComponent
from cosmic_backup.components.database.throwaway import (
    ThrowawayServer,
    free_port,
    throwaway_server,
)
from cosmic_backup.settings import load_settings
from tests.integration.database.appdb import create_app_database

PostgresServer = ThrowawayServer
ComponentFactory = Callable[..., DatabaseComponent]
__all__ = ["ComponentFactory", "PostgresServer", "free_port"]

BIG_ROWS = 400_000  # about 100 MB: pg_dump, pg_restore and psql live long enough to watch


@pytest.fixture(scope="session")
def postgres() -> Iterator[ThrowawayServer]:
    # Logical WAL, so that tests can make replication slots and publishers (no cost here).
    with throwaway_server(settings=("wal_level=logical",)) as server:
        yield server


@pytest.fixture
def app_db(postgres: ThrowawayServer) -> str:
    """The URL of a fresh database shaped like a real app's (see appdb.py)."""
    url = postgres.url(postgres.create_database())
    create_app_database(url)
    return url


@pytest.fixture(scope="session")
def big_template(postgres: ThrowawayServer) -> str:
    """A database big enough that dumping and restoring it take a noticeable moment."""
    name = postgres.create_database("bigtemplate")
    with psycopg.connect(postgres.url(name), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 6) AS pad "
            "FROM generate_series(1, %s) g",
            (BIG_ROWS,),
        )
        conn.execute("ALTER TABLE big ADD PRIMARY KEY (id)")
    return name


@pytest.fixture
def big_db(postgres: ThrowawayServer, big_template: str) -> str:
    """The URL of a fresh copy of the big database."""
    return postgres.url(postgres.create_database("big", template=big_template))


@pytest.fixture
def component(tmp_path: Path) -> ComponentFactory:
    """DatabaseComponent(url, **environment), its settings read as the CLI would."""

    def make(url: str | None, **environ: str) -> DatabaseComponent:
        env = {**({"DATABASE_URL": url} if url else {}), **environ}
        return DatabaseComponent(
            load_settings(tmp_path, environ=env), logging.getLogger("cosmic_backup")
        )

    return make
