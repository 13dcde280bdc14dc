"""The data offsets of a custom-format dump that pg_dump wrote through a pipe.

pg_dump records in each TOC entry where that entry's data block starts, but only when it
can seek in its output: then it writes the TOC again at the end with the offsets filled
in. Our backups stream pg_dump's output through a pipe, so every entry says "offset not
set", and ``pg_restore -j N`` must scan the file for each table's block (on the 1 GiB
benchmark: 12.4 s instead of 9.9 s). A --jobs restore writes the dump to a file anyway,
so it fills the offsets in first, exactly as pg_dump would have (the same flag byte and
little-endian offset, in place: the field has the same size set or not).

The layout is pg_backup_archiver.c's (WriteOffset, ReadToc) and pg_backup_custom.c's
(_StartData: the offset is that of the block's type byte). The blocks are walked with
stream_counts' C walker over windows of the file, in bounded memory. Anything unexpected, or no C
walker, leaves the file as it was: pg_restore then scans, which is slower, not wrong.
pg_restore checks the dump id at every offset it seeks to.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cosmic_backup.components.database.stream_counts import (
    BLK_BLOBS,
    BLK_DATA,
    CHUNK_GOES_ON,
    END_OF_TABLE,
    MAX_HEAD,
    PREFIX_SPLIT,
    ArchiveFormatError,
    _NeedMore,
    parse_head,
    walk_c,
)

OFFSET_NOT_SET = 1  # K_OFFSET_POS_NOT_SET
OFFSET_SET = 2  # K_OFFSET_POS_SET
WINDOW = 4 * 1024 * 1024  # bytes read at a time while walking the data blocks
HEAD_START = 64 * 1024


def set_data_offsets(path: Path) -> int:
    """Fill in the TOC's data offsets of the custom-format dump at `path`; how many were
    set (0 when the file was left as it was)."""
    if walk_c is None:
        return 0
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    try:
        try:
            fields, start, int_size, offset_size = toc_offset_fields(_read_head(fd))
            blocks = block_starts(fd, start, int_size)
        except (ArchiveFormatError, ValueError, IndexError, KeyError):
            return 0
        patches = {
            fields[dump_id]: start
            for dump_id, start in blocks.items()
            if dump_id in fields and os.pread(fd, 1, fields[dump_id]) == bytes([OFFSET_NOT_SET])
        }
        for at, offset in patches.items():
            os.pwrite(fd, bytes([OFFSET_SET]) + offset.to_bytes(offset_size, "little"), at)
    finally:
        os.close(fd)
    return len(patches)


def _read_head(fd: int) -> bytes:
    """The file's first bytes, as many as its header and TOC take (doubling the read,
    as stream_counts does), never more than MAX_HEAD."""
    size = HEAD_START
    while True:
        head = os.pread(fd, size, 0)
        try:
            toc_offset_fields(head)
        except _NeedMore:
            if len(head) < size or size >= MAX_HEAD:
                raise ArchiveFormatError("the file ends inside its table of contents") from None
            size *= 2
            continue
        return head


def toc_offset_fields(data: Any) -> tuple[dict[int, int], int, int, int]:
    """(dump id -> position of its TOC entry's offset field, where the data part starts,
    the archive's int size, its offset size), read by the stream counter's parser."""
    head = parse_head(data)
    return head.offset_fields, head.size, head.int_size, head.offset_size


def block_starts(fd: int, pos: int, int_size: int) -> dict[int, int]:
    """dump id -> position of its data block's type byte, walking every block to the
    file's end through bounded windows (a memory map of a large dump would count in
    our resident memory)."""
    end = os.fstat(fd).st_size
    starts: dict[int, int] = {}
    while pos < end:
        start = pos
        kind, dump_id, pos = _block_head(fd, pos, int_size)
        if kind == BLK_DATA:
            pos = _chunks(fd, pos, int_size)
        elif kind == BLK_BLOBS:
            while True:  # each large object's oid, then its chunks; oid 0 ends the block
                oid, pos = _int_at(fd, pos, int_size)
                if oid == 0:
                    break
                pos = _chunks(fd, pos, int_size)
        else:
            raise ArchiveFormatError(f"unknown data block type {kind}")
        starts[dump_id] = start
    return starts


def _block_head(fd: int, pos: int, int_size: int) -> tuple[int, int, int]:
    kind = os.pread(fd, 1, pos)
    if not kind:
        raise ArchiveFormatError("the file ends inside a data block")
    dump_id, pos = _int_at(fd, pos + 1, int_size)
    return kind[0], dump_id, pos


def _int_at(fd: int, pos: int, int_size: int) -> tuple[int, int]:
    raw = os.pread(fd, 1 + int_size, pos)
    if len(raw) < 1 + int_size:
        raise ArchiveFormatError("the file ends inside a data block")
    value = int.from_bytes(raw[1:], "little")
    return (-value if raw[0] else value), pos + 1 + int_size


def _chunks(fd: int, pos: int, int_size: int) -> int:
    """Past the length-prefixed chunks at `pos` and the zero length that ends them."""
    assert walk_c is not None
    while True:
        window = os.pread(fd, WINDOW, pos)
        _, at, _, _, status, length = walk_c(window, 0, int_size)
        if status == END_OF_TABLE:
            return pos + int(at)
        if status == CHUNK_GOES_ON:  # a chunk longer than the rest of the window
            pos += int(at) + int(length)
        elif status == PREFIX_SPLIT and len(window) == WINDOW:
            pos += int(at)  # the next length prefix starts the next window
        else:  # a negative length, or the file ends inside the block
            raise ArchiveFormatError("a data block does not end where it should")
