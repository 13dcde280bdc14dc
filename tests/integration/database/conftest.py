"""A real PostgreSQL server for the database tests, started once per session in a temp
folder (see cosmic_backup.components.database.scratch)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cosmic_backup.components.database.scratch import ScratchServer, free_port, scratch_server

PostgresServer = ScratchServer
__all__ = ["PostgresServer", "free_port"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[ScratchServer]:
    with scratch_server() as server:
        yield server
