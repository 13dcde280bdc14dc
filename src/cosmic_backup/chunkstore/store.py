"""The chunk store of a backup root, opened: its config, data key, chunkers and index.

Nothing in the backup path uses it yet (issue 19's next step wires it into the
components). Every method that writes must run under the root's lock, as every command
that writes does today.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pyfastcdc

from cosmic_backup.chunkstore import reader
from cosmic_backup.chunkstore.chunker import chunker_seed, make_chunker
from cosmic_backup.chunkstore.index_objects import LoadedIndex, load_index
from cosmic_backup.chunkstore.keys import create_store, open_store, store_exists
from cosmic_backup.chunkstore.layout import StoreLayout, remove_leftovers
from cosmic_backup.chunkstore.writer import (
    INDEX_EVERY_PACKS,
    ChunkListRecord,
    PayloadWriter,
    default_payload,
)
from cosmic_backup.clock import Clock, SystemClock
from cosmic_backup.format.chunk_list import ChunkRef
from cosmic_backup.format.keys import Key
from cosmic_backup.format.objects import DataKey
from cosmic_backup.format.store_config import FILE, PACK_TARGET, STREAM, StoreConfig


class ChunkStore:
    def __init__(
        self, layout: StoreLayout, config: StoreConfig, data_key: DataKey, clock: Clock
    ) -> None:
        self.layout = layout
        self.config = config
        self.data_key = data_key
        self.clock = clock

    @classmethod
    def open(
        cls,
        root: Path,
        user_key: Key,
        *,
        wrap_iterations: int | None = None,
        pack_target: int = PACK_TARGET,
        clock: Clock | None = None,
    ) -> ChunkStore:
        """Open the store under `root`; with `wrap_iterations`, create it if there is none
        (the parameters of a new store; an existing one keeps its own)."""
        layout = StoreLayout(root)
        if wrap_iterations is not None and not store_exists(layout):
            config, data_key = create_store(
                layout, user_key, wrap_iterations, clock=clock, pack_target=pack_target
            )
        else:
            config, data_key = open_store(layout, user_key)
        return cls(layout, config, data_key, clock or SystemClock())

    @functools.cached_property
    def loaded_index(self) -> LoadedIndex:
        return load_index(self.layout, self.data_key, self.config)

    @functools.cached_property
    def _seed(self) -> int:
        return chunker_seed(self.data_key)

    def chunker(self, kind: str) -> pyfastcdc.FastCDC:
        return make_chunker(self.config.chunker(kind), self._seed)

    def payload_writer(
        self,
        component: str,
        backup_id: str,
        *,
        payload: str | None = None,
        index_every: int = INDEX_EVERY_PACKS,
    ) -> PayloadWriter:
        return PayloadWriter(
            self,
            component,
            backup_id,
            payload or default_payload(component),
            index_every=index_every,
        )

    def write_payload(
        self,
        stream: BinaryIO,
        component: str,
        backup_id: str,
        *,
        kind: str | None = None,
        payload: str | None = None,
        index_every: int = INDEX_EVERY_PACKS,
    ) -> ChunkListRecord:
        """Store a whole stream as one backup's payload, cut by one chunker: `stream` for
        a database dump, `file` otherwise (the files component will cut at records)."""
        chunk_kind = kind or (STREAM if component == "database" else FILE)
        with self.payload_writer(
            component, backup_id, payload=payload, index_every=index_every
        ) as writer:
            writer.add_stream(stream, chunk_kind)
            return writer.finish()

    def read_payload(
        self, record: ChunkListRecord, backup_id: str, *, read_ahead: bool = False
    ) -> Iterator[bytes]:
        return reader.read_payload(self, record, backup_id, read_ahead=read_ahead)

    def chunks_of(self, record: ChunkListRecord, backup_id: str) -> Iterator[ChunkRef]:
        return reader.chunks_of(self, record, backup_id)

    def remove_leftovers(self) -> list[Path]:
        return remove_leftovers(self.layout)
