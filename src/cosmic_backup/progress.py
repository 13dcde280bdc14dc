"""The shape of progress reporting, below every layer that reports it: the CLI draws a
rich bar on a terminal and nothing otherwise (cli/common.py); the operations and the
chunk store only call what they are given."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

Advance = Callable[[int], None]
# progress(description, total bytes or None) -> a context giving a callback fed byte counts
Progress = Callable[[str, int | None], contextlib.AbstractContextManager[Advance]]


@contextlib.contextmanager
def no_progress(_description: str, _total: int | None) -> Iterator[Advance]:
    yield lambda _n: None
