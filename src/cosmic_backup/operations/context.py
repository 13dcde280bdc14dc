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

from cosmic_backup.catalog import Catalog
from cosmic_backup.clock import Clock, SystemClock
from cosmic_backup.logs import new_run_id, setup_logging
from cosmic_backup.operations.keys import KeySource
from cosmic_backup.settings import Settings

Advance = Callable[[int], None]
# progress(description, total bytes or None) -> a context giving a callback fed byte counts
Progress = Callable[[str, int | None], contextlib.AbstractContextManager[Advance]]


@contextlib.contextmanager
def no_progress(_description: str, _total: int | None) -> Iterator[Advance]:
    yield lambda _n: None


def _discard(_message: str) -> None:
    return None


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
    catalog = Catalog(settings.path("backup_dir"), keys.lookup)
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
