"""Index objects on disk: `index/<mac>`, written for durable packs, read back into a
`ChunkIndex` (docs/format.md, "Index objects: where each chunk is")."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cosmic_backup.chunkstore.index import ChunkIndex
from cosmic_backup.chunkstore.layout import StoreLayout, write_object
from cosmic_backup.errors import CosmicError
from cosmic_backup.format.index_text import IndexText, parse_index, render_index
from cosmic_backup.format.objects import DataKey, open_object, seal_object
from cosmic_backup.format.store_config import StoreConfig

INDEX_MAC = "index-mac"
# An object's records are held as Python objects while it is written and while it is
# parsed (~450 bytes a chunk with its text): 32 k chunks keep that near 15 MB, whatever
# the store's size, and make ~1.8 MB objects. Writers close an object at that count.
INDEX_CHUNKS_PER_OBJECT = 32_768
OBJECT_NAME = re.compile(r"[0-9a-f]{64}")


def write_index_object(
    layout: StoreLayout,
    data_key: DataKey,
    config: StoreConfig,
    index_text: IndexText,
) -> tuple[str, int]:
    """Seal and write one index object; its name is its MAC. Returns name and stored size."""
    stored, name = seal_object(
        render_index(index_text), data_key, INDEX_MAC, config.object_iterations
    )
    write_object(layout, layout.index_object(name), stored)
    return name, len(stored)


def read_index_object(
    layout: StoreLayout, data_key: DataKey, config: StoreConfig, name: str
) -> IndexText:
    stored = layout.index_object(name).read_bytes()
    text = open_object(stored, data_key, INDEX_MAC, name, config.object_iterations)
    return parse_index(text, name)


@dataclass
class LoadedIndex:
    index: ChunkIndex
    objects: list[str]  # the index objects in force
    present: set[str]  # the packs on disk when it was loaded, and those written since
    # Index objects that could not be used, with why: their chunks count as absent, so a
    # backup writes them again (kopia #3492's trap is an index that keeps naming lost data).
    problems: dict[str, str] = field(default_factory=dict)


def present_packs(layout: StoreLayout) -> set[str]:
    """The packs on disk: one listing of 256 folders, no read."""
    if not layout.packs.is_dir():
        return set()
    return {
        pack.name
        for folder in layout.packs.iterdir()
        if folder.is_dir()
        for pack in folder.iterdir()
        if OBJECT_NAME.fullmatch(pack.name)
    }


def load_index(layout: StoreLayout, data_key: DataKey, config: StoreConfig) -> LoadedIndex:
    """The union of every index object not superseded by another one that is present."""
    names = (
        sorted(p.name for p in layout.index.iterdir() if OBJECT_NAME.fullmatch(p.name))
        if layout.index.is_dir()
        else []
    )
    index = ChunkIndex()
    # One object at a time becomes a compact sorted run; which runs count is known only
    # once every object's `supersedes` lines are read.
    runs: dict[str, bytes] = {}
    superseded: set[str] = set()
    problems: dict[str, str] = {}
    for name in names:
        try:
            text = read_index_object(layout, data_key, config, name)
        except (CosmicError, OSError) as exc:
            problems[name] = str(exc)
            continue
        superseded.update(text.supersedes)
        runs[name] = index.sorted_run(text)
    in_force = [name for name in runs if name not in superseded]
    present = present_packs(layout)
    index.load((runs.pop(name) for name in in_force), present.__contains__)
    return LoadedIndex(index, in_force, present, problems)
