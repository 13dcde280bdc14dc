"""The plaintext of a backup's chunk list, and its entry text (docs/format.md, "The chunk
list of a backup").

```
cosmic-backup chunk list 2
backup <backup id>
payload <dump | dump.tar | tar>
size <payload's plaintext size>
entries <number of chunk entries> <size of the entry text>
part <chunk id> <plain length>           (the entry text, cut into "list" chunks, in order)
end
```

The entry text is one `<chunk id> <plain length>` line per chunk of the payload, in order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cosmic_backup.errors import IntegrityError

LIST_HEADER = "cosmic-backup chunk list 2"
ID = r"[0-9a-f]{64}"
BACKUP_LINE = re.compile(r"backup ([A-Za-z0-9._-]+)")
PAYLOAD_LINE = re.compile(r"payload ([a-z.]+)")
SIZE_LINE = re.compile(r"size (\d+)")
ENTRIES_LINE = re.compile(r"entries (\d+) (\d+)")
PART_LINE = re.compile(rf"part ({ID}) (\d+)")
ENTRY_LINE = re.compile(rf"({ID}) (\d+)")


@dataclass(frozen=True)
class ChunkRef:
    """A chunk by its id and plaintext length: one entry, or one part of the entry text."""

    chunk_id: bytes
    plain_length: int


@dataclass
class ChunkList:
    backup: str
    payload: str
    size: int
    entries: int
    entry_text_size: int
    parts: list[ChunkRef] = field(default_factory=list)


def entry_line(ref: ChunkRef) -> bytes:
    return b"%s %d\n" % (ref.chunk_id.hex().encode(), ref.plain_length)


def render_chunk_list(chunk_list: ChunkList) -> bytes:
    lines = [
        LIST_HEADER,
        f"backup {chunk_list.backup}",
        f"payload {chunk_list.payload}",
        f"size {chunk_list.size}",
        f"entries {chunk_list.entries} {chunk_list.entry_text_size}",
    ]
    lines += [f"part {part.chunk_id.hex()} {part.plain_length}" for part in chunk_list.parts]
    lines.append("end")
    return ("\n".join(lines) + "\n").encode()


def _broken(name: str, why: str) -> IntegrityError:
    return IntegrityError(
        f"The chunk list {name} passes its MAC but is not a chunk list ({why}): it was written "
        "by a faulty version; restore another backup."
    )


def _field(pattern: re.Pattern[str], line: str, name: str, what: str) -> re.Match[str]:
    match = pattern.fullmatch(line)
    if match is None:
        raise _broken(name, f"no {what} line")
    return match


def parse_chunk_list(text: bytes, name: str) -> ChunkList:
    try:
        lines = text.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise _broken(name, "not ASCII") from None
    if len(lines) < 7 or lines[0] != LIST_HEADER or lines[-2:] != ["end", ""]:
        raise _broken(name, "no header or no end line")
    entries = _field(ENTRIES_LINE, lines[4], name, "entries")
    chunk_list = ChunkList(
        backup=_field(BACKUP_LINE, lines[1], name, "backup").group(1),
        payload=_field(PAYLOAD_LINE, lines[2], name, "payload").group(1),
        size=int(_field(SIZE_LINE, lines[3], name, "size").group(1)),
        entries=int(entries.group(1)),
        entry_text_size=int(entries.group(2)),
    )
    for line in lines[5:-2]:
        part = _field(PART_LINE, line, name, "part")
        chunk_list.parts.append(ChunkRef(bytes.fromhex(part.group(1)), int(part.group(2))))
    if sum(part.plain_length for part in chunk_list.parts) != chunk_list.entry_text_size:
        raise _broken(name, "its parts do not add up to the entry text's size")
    return chunk_list


def parse_entries(pieces: Iterable[bytes], name: str) -> Iterator[ChunkRef]:
    """The entries of an entry text given in pieces cut anywhere (CDC ignores lines)."""
    carry = b""
    for piece in pieces:
        lines = (carry + piece).split(b"\n")
        carry = lines.pop()
        for line in lines:
            match = ENTRY_LINE.fullmatch(line.decode("ascii", errors="replace"))
            if match is None:
                raise _broken(name, f"an entry line reads {line[:80]!r}")
            yield ChunkRef(bytes.fromhex(match.group(1)), int(match.group(2)))
    if carry:
        raise _broken(name, "its entry text does not end with a newline")
