"""The storage contract every backend meets (a local folder, an S3 bucket).

Names are relative, slash-separated paths such as ``config/config-20261124T020000Z.tar.gz.enc``;
a name never starts with ``/`` and has no ``..`` part (`check_name`).

What the methods promise, whatever the backend:

- **Atomic writes.** `put` and `open_write` commit an object whole or not at all: a reader,
  a listing or `stat` sees either the previous state or the complete new object, never a
  part of it, even when the writer is killed or the network drops mid-way. Writing an
  existing name replaces it.
- **Not found.** `open_read` and `stat` raise `StoreNotFound` for a name that has no
  committed object; `delete` of such a name is not an error (deleting is idempotent, so a
  retried or repeated delete is harmless).
- **Error kinds.** Besides `StoreNotFound`, a backend raises `StorePermanent` for what no
  retry can fix (credentials refused, bucket missing, permission denied) and
  `StoreUnavailable` for a transient failure that persisted through its retries. Both
  carry the operator's sentence; neither ever holds a secret.
- **Reading.** `open_read` returns a seekable reader of the whole object, positioned at
  its start, private to this process (a remote object is downloaded to a 0600 file).
- **Listing.** `list(prefix)` returns the committed objects whose names start with
  `prefix`, sorted by name; objects being written are not listed.

The backup root's lock and the clean-up of leftovers of killed runs are local concerns:
they belong to the local catalog, not to this contract.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from cosmic_backup.errors import OperationFailed

# Fed the bytes moved since its last call (fewer, or negative, after a transfer restarts),
# so a terminal can show an upload's or a download's progress.
Transferred = Callable[[int], None]


class StoreNotFound(FileNotFoundError):
    """The named object does not exist (a kind of error a retry cannot fix)."""


class StorePermanent(OperationFailed):
    """A failure retrying cannot fix: credentials refused, bucket missing, no permission."""


class StoreUnavailable(OperationFailed):
    """A transient failure (unreachable, timed out, throttled) that outlasted the retries."""


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int


def check_name(name: str) -> str:
    """`name` if it is a safe relative object name; a ValueError (a bug of ours) if not."""
    if not name or name.startswith("/") or ".." in name.split("/") or "\\" in name:
        raise ValueError(f"unsafe object name {name!r}")
    return name


class Store(Protocol):
    def describe(self) -> str:
        """Where the objects live, for the operator (never with a secret)."""
        ...

    def open_write(self, name: str) -> AbstractContextManager[BinaryIO]:
        """A writable file; committed under `name` only when the block ends without error."""
        ...

    def put(
        self, name: str, source: BinaryIO, on_progress: Transferred | None = None
    ) -> ObjectInfo:
        """Store everything `source` yields from its position to its end, atomically;
        `on_progress` is told of the bytes as they are stored."""
        ...

    def open_read(self, name: str, on_progress: Transferred | None = None) -> BinaryIO:
        """A seekable reader of the whole object; raises `StoreNotFound`. A remote store
        tells `on_progress` of the bytes it downloads first."""
        ...

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Committed objects whose names start with `prefix`, sorted by name."""
        ...

    def delete(self, name: str) -> None:
        """Remove `name`; no error if it is already gone."""
        ...

    def stat(self, name: str) -> ObjectInfo:
        """Size of `name`; raises `StoreNotFound`."""
        ...
