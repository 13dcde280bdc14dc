"""Verify backups: MAC, decryption, decompression, SHA-256 and the payload's structure.

A backup that passes gets ``verified_at`` in its (re-signed) manifest, so `list` shows
when each backup was last proven restorable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from dataclasses import dataclass, field
from typing import Any

from cosmic_backup.clock import iso
from cosmic_backup.components import create_component
from cosmic_backup.errors import CosmicError
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.format.pipeline import CHUNK_SIZE
from cosmic_backup.operations.artifacts import open_plaintext, trusted_key
from cosmic_backup.operations.context import Runtime
from cosmic_backup.operations.offsite import Located, locate_all, pull_for_reading, select_anywhere
from cosmic_backup.operations.store import open_chunked
from cosmic_backup.storage.local import replace_file

VERIFIED_FILE = ".offsite-verified.json"  # verifications the store would not let us record


@dataclass
class VerifyResult:
    id: str
    component: str
    ok: bool
    message: str
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def verify_backups(rt: Runtime, component: str | None, selector: str | None) -> list[VerifyResult]:
    """Verify the selected backup, or every good backup of `component` (or of all)."""
    with rt.catalog.lock("verify", wait=rt.wait):
        # A backup whose local copy is gone is verified off-site (BACKUP_REMOTE).
        if selector is not None and component is not None:
            found = [select_anywhere(rt, component, selector)]
        else:
            found = [x for x in locate_all(rt, component) if x.entry.manifest.ok]
        return [_verify_one(rt, x) for x in found]


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
                artifact = stack.enter_context(catalog.open_artifact(entry))
                reader = open_plaintext(rt, artifact, manifest, key)
            advance = stack.enter_context(
                rt.progress(f"verifying {manifest.id}", manifest.plaintext_size)
            )
            reader.on_progress = advance  # type: ignore[attr-defined]  # both readers have it
            payload = io.BufferedReader(reader, CHUNK_SIZE)
            figures = component.check_payload(payload, manifest)  # type: ignore[arg-type]
            while payload.read(CHUNK_SIZE):  # the SHA-256 is checked at the very end
                pass
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
