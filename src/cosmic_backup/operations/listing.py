"""The rows of `list`, as words: the terminal table and the HTML report show the same."""

from __future__ import annotations

from typing import Any

from cosmic_backup.catalog import Entry
from cosmic_backup.clock import parse_iso
from cosmic_backup.components import source_of
from cosmic_backup.sizes import human_size
from cosmic_backup.states import Outcome, Trust

# size: the payload's; added: the bytes the backup added to the backup folder (a
# single-file backup its whole artifact, a chunked one only its new chunks).
COLUMNS = (
    "id",
    "taken (local)",
    "status",
    "mode",
    "tags",
    "size",
    "added",
    "verified",
    "tested",
)
WHERE_COLUMN = "where"
SOURCE_COLUMN = "source"


def status_word(entry: Entry) -> str:
    if entry.trust == Trust.TAMPERED:
        return Trust.TAMPERED.upper()
    words = [Outcome.OK if entry.manifest.ok else Outcome.FAILED.upper()]
    if entry.manifest.ok and entry.manifest.warnings:
        words.append("warnings")
    if entry.trust == Trust.UNVERIFIED:  # its key is not at hand: the manifest is unchecked
        words.append(Trust.UNVERIFIED)
    return ", ".join(words)


def source_summary(entry: Entry) -> str:
    if not entry.manifest.ok:
        return entry.manifest.error or entry.problem or ""
    return source_of(entry.manifest).summary()


def tested_cell(test: dict[str, Any] | None) -> str:
    """The last restore test: its day, and FAILED when it did not pass."""
    if not test:
        return "-"
    return str(test.get("at", ""))[:10] + ("" if test.get("ok") else " FAILED")


def row(entry: Entry, where: str | None = None) -> list[str]:
    """One backup's cells, in the order of COLUMNS (then where, when given, then source)."""
    manifest = entry.manifest
    taken = parse_iso(manifest.started_at).astimezone()
    return [
        manifest.id,
        f"{taken:%Y-%m-%d %H:%M}",
        status_word(entry),
        manifest.mode,
        ",".join(manifest.tags),
        human_size(manifest.plaintext_size),
        human_size(manifest.stored_size),
        manifest.verified_at[:10] if manifest.verified_at else "-",
        tested_cell(manifest.restore_test),
        *([where] if where is not None else []),
        source_summary(entry),
    ]
