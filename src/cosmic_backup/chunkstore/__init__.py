"""The chunk store (format version 2): packs of deduplicated chunks, their index, and each
backup's chunk list, on a local folder (docs/format.md, "The chunk store")."""

from cosmic_backup.chunkstore.store import ChunkStore
from cosmic_backup.chunkstore.writer import ChunkListRecord

__all__ = ["ChunkListRecord", "ChunkStore"]
