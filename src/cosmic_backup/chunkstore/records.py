"""Per-file chunking of a tar payload (docs/format.md, "What one chunk is", "The files
cache").

The tar writer marks its records: a chunk never spans two records, a large file's header
is a chunk of its own, so an unchanged file gives unchanged chunks wherever it sits in
the tar, and a moved or chmod-ed one changes only its header's chunk. A file unchanged
since the files cache recorded it is not opened: its record's chunks are named again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from cosmic_backup.chunkstore.files_cache import FilesCache, FileState, tar_record_size
from cosmic_backup.chunkstore.writer import ChunkingWriter, PayloadWriter
from cosmic_backup.format.chunk_list import ChunkRef

RACY_NS = 1_000_000_000  # a change this close to the backup's start may not show in mtime


class RecordWriter(ChunkingWriter):
    """The `out` of a TarWriter in the chunk store (the tar writer's `RecordSink`)."""

    caching = True

    def __init__(
        self,
        payload: PayloadWriter,
        kind: str,
        cache: FilesCache | None,
        *,
        use_cache: bool = True,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(payload, kind, on_progress)
        self._cache = cache
        self._use_cache = use_cache and cache is not None
        # Smaller files share one chunk with their header: a chunk per header would
        # double the chunks of 100 k small files for nothing.
        self._header_apart_from = payload._store.config.chunker(kind).min
        self._racy_after = time.time_ns() - RACY_NS
        self._record: list[ChunkRef] = []
        self.reused_files = 0

    def begin_record(self) -> None:
        self.end_piece()
        self._record = []

    def end_header(self, size: int) -> None:
        if size >= self._header_apart_from:
            self._record += self.end_piece()

    def end_record(self) -> None:
        self._record += self.end_piece()

    def reuse_file(self, path: str, info: os.stat_result, header: bytes) -> bool:
        """Name the file's cached chunks if its stat and header are the cached ones and
        every chunk is still stored; False: read it."""
        if not self._use_cache or self._cache is None:
            return False
        state = FileState.of(info)
        refs = self._cache.lookup(path, state, header)
        size = tar_record_size(len(header), state.size)
        if refs is None or sum(ref.plain_length for ref in refs) != size:
            return False
        if not self._payload.all_stored(refs):  # pruned, or its pack lost: read it again
            return False
        self.begin_record()
        self._payload.add_stored(refs)
        self._cache.remember(path, state, header, refs)
        self.reused_files += 1
        if self._on_progress is not None:
            self._on_progress(size)
        return True

    def file_read(self, path: str, info: os.stat_result, header: bytes, trusted: bool) -> None:
        """The record just written was this file's, read with stat `info`; `trusted`: it
        did not change while it was read. A file changed within a second of the backup's
        start is not cached: a write in the same clock tick would not change its mtime."""
        if self._cache is None or not trusted:
            return
        if max(info.st_mtime_ns, info.st_ctime_ns) >= self._racy_after:
            return
        self._cache.remember(path, FileState.of(info), header, self._record)
