"""The runtime of one command: settings, clock, log, catalog and keys, opened in one place.

Like borg's ``with_repository``, commands receive an opened runtime and never set up
logging, the catalog or the key source themselves.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cosmic_backup.catalog import Catalog, KeyLookup, StoreCatalog
from cosmic_backup.clock import Clock, SystemClock
from cosmic_backup.components.files import recover_interrupted_restore
from cosmic_backup.logs import new_run_id, setup_logging
from cosmic_backup.operations.keys import KeySource
from cosmic_backup.progress import Progress, no_progress
from cosmic_backup.settings import Settings


def _discard(_message: str) -> None:
    return None


class RecoveringCatalog(Catalog):
    """A catalog whose lock first finishes or undoes an interrupted files restore.

    Every command that takes the lock (backup, restore, prune, verify) recovers first, as
    the docs say, so a half-swapped folder never waits for the next files run.
    """

    def __init__(self, root: Path, key_lookup: KeyLookup, recover: Callable[[], None]) -> None:
        super().__init__(root, key_lookup)
        self._recover = recover
        self._depth = 0

    @contextlib.contextmanager
    def lock(
        self, command: str, *, wait: bool = False, wait_seconds: float = 3600
    ) -> Iterator[None]:
        with super().lock(command, wait=wait, wait_seconds=wait_seconds):
            self._depth += 1
            try:
                if self._depth == 1:  # not again for a pre-restore backup inside a restore
                    self._recover()
                yield
            finally:
                self._depth -= 1


def remove_dump_folders(settings: Settings, log: logging.Logger) -> None:
    """Remove the temporary folders of database dumps whose run was killed (--jobs)."""
    folder = settings.path("backup_dir") / "database"
    if not any(folder.glob(".dump-*")):  # the usual case: no import of the database package
        return
    from cosmic_backup.components.database.directory_dump import remove_leftover_folders

    removed = remove_leftover_folders(folder)
    if removed:
        log.info("removed temporary dump folders of killed runs: %s", ", ".join(removed))


@dataclass
class Runtime:
    settings: Settings
    log: logging.Logger
    log_file: Path
    run_id: str
    catalog: Catalog
    keys: KeySource
    clock: Clock = field(default_factory=SystemClock)
    say: Callable[[str], None] = _discard  # notices for the operator (stderr in the CLI)
    progress: Progress = no_progress
    wait: bool = False  # wait for the lock instead of refusing
    # The off-site catalog, opened on first use (operations/offsite.py: remote_catalog).
    remote: StoreCatalog | None = field(default=None, repr=False)

    @property
    def root(self) -> Path:
        return self.settings.project_root

    def relative(self, path: Path) -> str:
        """`path` as the operator sees it from the project root."""
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


def open_runtime(
    settings: Settings,
    *,
    clock: Clock | None = None,
    say: Callable[[str], None] = _discard,
    progress: Progress = no_progress,
    wait: bool = False,
) -> Runtime:
    run_id = new_run_id()
    log, log_file = setup_logging(settings.path("log_dir"), run_id, settings.log_format)
    keys = KeySource(settings, say)

    def recover() -> None:
        for message in recover_interrupted_restore(settings, log):
            say(f"warning: {message}.")
        remove_dump_folders(settings, log)

    catalog = RecoveringCatalog(settings.path("backup_dir"), keys.lookup, recover)
    return Runtime(
        settings=settings,
        log=log,
        log_file=log_file,
        run_id=run_id,
        catalog=catalog,
        keys=keys,
        clock=clock or SystemClock(),
        say=say,
        progress=progress,
        wait=wait,
    )
