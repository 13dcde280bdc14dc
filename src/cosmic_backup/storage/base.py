"""The storage contract every backend meets.

Names are relative, slash-separated paths such as ``config/config-20261124T020000Z.tar.gz.enc``.
`open_write` is atomic: readers see either nothing or the whole object, never a part.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Protocol


class StoreNotFound(FileNotFoundError):
    """The named object does not exist (a kind of error a retry cannot fix)."""


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int


class Store(Protocol):
    def open_write(self, name: str) -> AbstractContextManager[BinaryIO]:
        """A writable file; committed under `name` only when the block ends without error."""
        ...

    def open_read(self, name: str) -> BinaryIO:
        """A seekable reader of the whole object; raises `StoreNotFound`."""
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
