"""gzip streams: ISA-L (isal) for speed when it is installed, zlib otherwise.

Both write the same RFC 1952 format, so ``gunzip`` reads either.
"""

from __future__ import annotations

from typing import Protocol

from cosmic_backup.errors import IntegrityError

GZIP_WBITS = 31  # 16 + 15: a gzip container with the largest window

try:  # pragma: no cover - which branch runs depends on the machine
    from isal import isal_zlib as _zlib

    BACKEND = "isal"
    DEFAULT_LEVEL = 1  # isal levels are 0-3; 1 keeps up with pg_dump at a good ratio
except ImportError:  # pragma: no cover
    import zlib as _zlib  # type: ignore[no-redef]

    BACKEND = "zlib"
    DEFAULT_LEVEL = 1


class Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


def compressor(level: int = DEFAULT_LEVEL) -> Compressor:
    return _zlib.compressobj(level, _zlib.DEFLATED, GZIP_WBITS)


class Decompressor:
    """A gzip decompressor with bounded output per step; refuses trailing data and a missing end.

    Input is fed with `feed`; `read(max_length)` returns at most that much plaintext, so a
    highly compressible stream (a sparse file, a table of zeros) never balloons in memory.
    """

    def __init__(self) -> None:
        self._inner = _zlib.decompressobj(GZIP_WBITS)
        self._pending = b""

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self._inner.eof:
            raise IntegrityError("The backup payload has data after its gzip end.")
        self._pending = self._pending + data if self._pending else data

    def read(self, max_length: int) -> bytes:
        if not self._pending:
            return b""
        try:
            out = self._inner.decompress(self._pending, max_length)
        except _zlib.error as exc:
            raise IntegrityError(f"The backup payload is not valid gzip data ({exc}).") from exc
        self._pending = self._inner.unconsumed_tail
        if self._inner.eof and (self._inner.unused_data or self._pending):
            raise IntegrityError("The backup payload has data after its gzip end.")
        return out

    def finish(self) -> None:
        if not self._inner.eof:
            raise IntegrityError("The backup payload ends before its gzip stream does.")
