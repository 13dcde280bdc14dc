"""The plaintext of an index object (docs/format.md, "Index objects: where each chunk is").

```
cosmic-backup index 2
written <UTC>
supersedes <index name>                  (zero or more)
pack <pack name> <stored size> <written UTC>
<chunk id> <offset> <length> <plain length>
end <number of chunk lines>
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cosmic_backup.errors import IntegrityError

INDEX_HEADER = "cosmic-backup index 2"
NAME = r"[0-9a-f]{64}"
STAMP = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z"
WRITTEN_LINE = re.compile(rf"written ({STAMP})")
SUPERSEDES_LINE = re.compile(rf"supersedes ({NAME})")
PACK_LINE = re.compile(rf"pack ({NAME}) (\d+) ({STAMP})")
CHUNK_LINE = re.compile(rf"({NAME}) (\d+) (\d+) (\d+)")
END_LINE = re.compile(r"end (\d+)")


@dataclass(frozen=True)
class ChunkPlace:
    """Where one chunk is in its pack's plaintext, and its own size."""

    chunk_id: bytes
    offset: int
    length: int
    plain_length: int


@dataclass
class PackRecord:
    name: str
    stored_size: int
    written_at: str
    chunks: list[ChunkPlace] = field(default_factory=list)


@dataclass
class IndexText:
    written_at: str
    packs: list[PackRecord]
    supersedes: list[str] = field(default_factory=list)


def render_index(index: IndexText) -> bytes:
    lines = [INDEX_HEADER, f"written {index.written_at}"]
    lines += [f"supersedes {name}" for name in index.supersedes]
    count = 0
    for pack in index.packs:
        lines.append(f"pack {pack.name} {pack.stored_size} {pack.written_at}")
        for place in pack.chunks:
            lines.append(
                f"{place.chunk_id.hex()} {place.offset} {place.length} {place.plain_length}"
            )
        count += len(pack.chunks)
    lines.append(f"end {count}")
    return ("\n".join(lines) + "\n").encode()


def _broken(name: str, why: str) -> IntegrityError:
    return IntegrityError(
        f"The index object {name} passes its MAC but its text is not an index ({why}): it was "
        "written by a faulty version; run `cosmic-backup verify`."
    )


def parse_index(text: bytes, name: str) -> IndexText:
    """Parse an authenticated index object's text; anything unexpected is refused."""
    try:
        lines = text.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise _broken(name, "not ASCII") from None
    if lines[:1] != [INDEX_HEADER] or lines[-1:] != [""] or len(lines) < 4:
        raise _broken(name, "no header or no final newline")
    written = WRITTEN_LINE.fullmatch(lines[1])
    if written is None:
        raise _broken(name, "no written line")
    index = IndexText(written.group(1), [])
    count = 0
    for line in lines[2:-2]:
        if (chunk := CHUNK_LINE.fullmatch(line)) and index.packs:
            offset, length, plain = (int(group) for group in chunk.groups()[1:])
            index.packs[-1].chunks.append(
                ChunkPlace(bytes.fromhex(chunk.group(1)), offset, length, plain)
            )
            count += 1
        elif pack := PACK_LINE.fullmatch(line):
            index.packs.append(PackRecord(pack.group(1), int(pack.group(2)), pack.group(3)))
        elif (superseded := SUPERSEDES_LINE.fullmatch(line)) and not index.packs:
            index.supersedes.append(superseded.group(1))
        else:
            raise _broken(name, f"unexpected line {line[:80]!r}")
    end = END_LINE.fullmatch(lines[-2])
    if end is None or int(end.group(1)) != count:
        raise _broken(name, "its end line does not count its chunk lines")
    return index
