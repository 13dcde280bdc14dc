"""Verify backups: MAC, decryption, decompression, SHA-256 and the payload's structure.

A backup that passes gets ``verified_at`` in its (re-signed) manifest, so `list` shows
when each backup was last proven restorable. A chunked backup broken by a pack names the
pack and every backup of the root that uses it. `--read-data-subset` reads only the packs
of a window of their names (chunkstore/check.py), and records no ``verified_at``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from dataclasses import dataclass, field
from typing import Any

from cosmic_backup.catalog import Entry
from cosmic_backup.chunkstore.check import (
    LiveList,
    StoreCheck,
    Window,
    check_store,
    finish_window,
    map_packs,
    parse_subset,
)
from cosmic_backup.chunkstore.layout import StoreLayout
from cosmic_backup.chunkstore.reader import BrokenChunk
from cosmic_backup.chunkstore.store import ChunkStore
from cosmic_backup.clock import iso
from cosmic_backup.components import create_component
from cosmic_backup.errors import CosmicError
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.format.pipeline import CHUNK_SIZE
from cosmic_backup.operations.artifacts import open_plaintext, open_stored, trusted_key
from cosmic_backup.operations.context import Runtime
from cosmic_backup.operations.offsite import Located, locate_all, pull_for_reading, select_anywhere
from cosmic_backup.operations.store import (
    check_same_store,
    chunk_list_record,
    open_chunk_store,
    open_chunked,
)
from cosmic_backup.storage.local import replace_file

VERIFIED_FILE = ".offsite-verified.json"  # verifications the store would not let us record


@dataclass
class VerifyResult:
    id: str
    component: str
    ok: bool
    message: str
    figures: dict[str, Any] = field(default_factory=dict)
    pack: str | None = None  # the damaged or missing pack that broke it
    pack_breaks: list[str] = field(default_factory=list)  # every backup that pack breaks

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SubsetReport:
    """What `--read-data-subset` read: its window, and the packs of the store it read."""

    window: str
    packs_read: int
    packs_used: int
    moved_on: bool  # the next N% run starts where this one ended

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def verify_backups(
    rt: Runtime, component: str | None, selector: str | None, *, subset: str | None = None
) -> tuple[list[VerifyResult], SubsetReport | None]:
    """Verify the selected backup, or every good backup of `component` (or of all); with
    `subset`, chunked backups are checked through a window of the packs instead."""
    with rt.catalog.lock("verify", wait=rt.wait):
        window = parse_subset(subset, StoreLayout(rt.catalog.root)) if subset else None
        # A backup whose local copy is gone is verified off-site (BACKUP_REMOTE).
        if selector is not None and component is not None:
            found = [select_anywhere(rt, component, selector)]
        else:
            found = [x for x in locate_all(rt, component) if x.entry.manifest.ok]
        if window is None:
            return _name_every_backup_a_pack_breaks(rt, [_verify_one(rt, x) for x in found]), None
        # Format 1 backups, and chunked ones held off-site only, are verified whole.
        sampled, whole = [], []
        for x in found:
            (sampled if x.entry.manifest.chunked and x.catalog is rt.catalog else whole).append(x)
        results = [_verify_one(rt, x) for x in whole]
        if not sampled:
            return results, None
        subset_results, report = _verify_sampled(rt, [x.entry for x in sampled], window)
        return results + subset_results, report


def _chunked_lives(rt: Runtime) -> list[LiveList]:
    """Every good chunked backup of the root (of every component), with its list record."""
    entries = [e for e in rt.catalog.entries() if e.manifest.chunked and e.manifest.ok]
    lives = []
    for entry in entries:
        try:
            lives.append((entry.id, chunk_list_record(entry.manifest)))
        except CosmicError:
            continue  # its own verification says why
    return lives


def _name_every_backup_a_pack_breaks(
    rt: Runtime, results: list[VerifyResult]
) -> list[VerifyResult]:
    """A pack broke some backups: name every backup of the root that uses it, from each
    backup's list (its payload is not read again)."""
    if not any(r.pack for r in results):
        return results
    key = rt.keys.current_if_any()
    if key is None:
        return results
    try:
        check = map_packs(open_chunk_store(rt, key), _chunked_lives(rt), None)
    except CosmicError as exc:  # the failures stand; only the cross-reference is missing
        rt.log.warning("verify could not list the backups each pack breaks: %s", exc.message)
        return results
    for result in results:
        if result.pack:
            result.pack_breaks = check.breaks(result.pack) or [result.id]
    return results


def _verify_sampled(
    rt: Runtime, entries: list[Entry], window: Window
) -> tuple[list[VerifyResult], SubsetReport]:
    """Chunked backups through a window of the packs: every list, entry text and pack
    presence, and the packs of the window read in full (MAC, every chunk's id)."""
    results: dict[str, VerifyResult] = {}
    store: ChunkStore | None = None
    for entry in entries:
        try:
            key = trusted_key(rt, entry)
            store = store or open_chunk_store(rt, key)  # one unwrap of the data key for all
            check_same_store(entry.manifest, store)
        except CosmicError as exc:
            results[entry.id] = VerifyResult(entry.id, entry.manifest.component, False, exc.message)
    if store is None:
        return list(results.values()), SubsetReport(window.describe(), 0, 0, False)
    check = check_store(store, _chunked_lives(rt), window)
    moved = finish_window(StoreLayout(rt.catalog.root), window, check, iso(rt.clock.now()))
    for entry in entries:
        if entry.id not in results:
            results[entry.id] = result = _sampled_result(entry, check)
            if not result.ok:
                rt.log.error("verify %s failed: %s", entry.id, result.message)
    report = SubsetReport(window.describe(), len(check.packs_read), len(check.uses), moved)
    rt.log.info("verify read %d of %d packs (%s)", report.packs_read, len(check.uses), window)
    return [results[e.id] for e in entries], report


def _sampled_result(entry: Entry, check: StoreCheck) -> VerifyResult:
    used = check.packs_of(entry.id)
    read = set(check.packs_read).intersection(used)
    figures = {"packs": len(used), "packs_read": len(read)}
    component = entry.manifest.component
    problems = check.broken.get(entry.id)
    if problems:
        pack = check.first_bad_pack.get(entry.id)
        message = problems[0] + (f" ({len(problems) - 1} more)" if len(problems) > 1 else "")
        breaks = check.breaks(pack) if pack else []
        return VerifyResult(entry.id, component, False, message, figures, pack, breaks)
    message = f"ok: {len(read)} of the {len(used)} packs it uses read, the others are present"
    return VerifyResult(entry.id, component, True, message, figures)


def _verify_one(rt: Runtime, located: Located) -> VerifyResult:
    entry, catalog = located.entry, located.catalog
    manifest = entry.manifest
    try:
        key = trusted_key(rt, entry)
        component = create_component(manifest.component, rt.settings, rt.log)
        with contextlib.ExitStack() as stack:
            if manifest.chunked:  # every chunk is read: each pack's MAC, each chunk's id
                pull_for_reading(rt, located, key)  # held off-site only: its packs come here
                reader: io.RawIOBase = open_chunked(rt, manifest, key)
            else:
                artifact = stack.enter_context(open_stored(rt, catalog, entry))
                reader = open_plaintext(rt, artifact, manifest, key)
            advance = stack.enter_context(
                rt.progress(f"verifying {manifest.id}", manifest.plaintext_size)
            )
            reader.on_progress = advance  # type: ignore[attr-defined]  # both readers have it
            payload = io.BufferedReader(reader, CHUNK_SIZE)
            figures = component.check_payload(payload, manifest)  # type: ignore[arg-type]
            while payload.read(CHUNK_SIZE):  # the SHA-256 is checked at the very end
                pass
    except BrokenChunk as exc:
        rt.log.error("verify %s failed: %s", manifest.id, exc.message)
        return VerifyResult(manifest.id, manifest.component, False, exc.message, pack=exc.pack)
    except CosmicError as exc:
        rt.log.error("verify %s failed: %s", manifest.id, exc.message)
        return VerifyResult(manifest.id, manifest.component, False, exc.message)
    except OSError as exc:
        message = f"The artifact of {manifest.id} cannot be read ({exc.strerror})."
        rt.log.error("verify %s failed: %s", manifest.id, message)
        return VerifyResult(manifest.id, manifest.component, False, message)
    verified = dataclasses.replace(manifest, verified_at=iso(rt.clock.now()))
    message = "ok"
    try:
        catalog.write_manifest(verified, key)  # where it was read from: never a stray manifest
    except CosmicError as exc:  # read-only credentials: the verification itself stands
        record_verified_offsite(rt, verified)
        message = (
            f"ok; the off-site record of this verification could not be written "
            f"({exc.message.rstrip('.')}), so it is kept locally in {VERIFIED_FILE}"
        )
        rt.log.warning("verify %s: %s", manifest.id, message)
    rt.log.info("verify %s ok: %s", manifest.id, figures)
    return VerifyResult(manifest.id, manifest.component, True, message, figures)


def record_verified_offsite(rt: Runtime, manifest: Manifest) -> None:
    """Keep, in the backup folder, when a backup that exists only off-site was verified."""
    path = rt.catalog.root / VERIFIED_FILE
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    known[manifest.id] = manifest.verified_at
    replace_file(path, json.dumps(known, indent=1, sort_keys=True).encode())
