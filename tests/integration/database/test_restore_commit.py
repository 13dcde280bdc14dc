"""psql reads pg_restore's SQL straight from its pipe, so nothing of ours stands between
pg_restore's COMMIT and the server: what keeps a restore from committing before the
stream passed its final check is that pg_restore never gets the dump's last bytes."""

from __future__ import annotations

import io
import time

import pytest

from cosmic_backup.errors import IntegrityError
from tests.integration.database.appdb import execute, full_state
from tests.integration.database.conftest import ComponentFactory
from tests.integration.database.test_database_component import NO_SAFETY, dump_into_memory

CHECK_SECONDS = 3.0  # long enough for pg_restore and psql to finish and commit meanwhile


class SlowToFailAtTheEnd(io.BytesIO):
    """A payload whose final read (our reader's size and SHA-256 check) takes a while and
    then fails: had pg_restore got every byte, it would have committed by then."""

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if not data:
            time.sleep(CHECK_SECONDS)
            raise IntegrityError("The restored stream's SHA-256 differs from the manifest's.")
        return data


def test_no_commit_while_the_final_check_is_still_running(
    component: ComponentFactory, app_db: str
) -> None:
    dump, manifest = dump_into_memory(component, app_db)
    execute(app_db, "DELETE FROM users WHERE id > 10")
    before = full_state(app_db)
    plan = component(app_db).plan_restore(manifest, NO_SAFETY)
    with pytest.raises(IntegrityError, match="SHA-256 differs"):
        component(app_db).consume(SlowToFailAtTheEnd(dump), manifest, plan)
    assert full_state(app_db) == before
