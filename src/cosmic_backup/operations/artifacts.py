"""Opening a backup for reading, shared by restore and verify: the right key for a
trusted manifest, then the artifact's MAC checked over every byte before any plaintext."""

from __future__ import annotations

from typing import BinaryIO

from cosmic_backup.catalog import Entry, StoreCatalog
from cosmic_backup.errors import IntegrityError
from cosmic_backup.format.keys import Key
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.format.pipeline import UnsealingReader, open_verified
from cosmic_backup.operations.context import Runtime
from cosmic_backup.states import Trust


def trusted_key(rt: Runtime, entry: Entry) -> Key:
    """The key of a backup whose manifest checked out, or the sentence saying why not."""
    manifest = entry.manifest
    if entry.trust not in (Trust.VERIFIED, Trust.UNVERIFIED):
        raise IntegrityError(
            f"The backup {manifest.id} cannot be trusted: {entry.problem} Pick another one "
            f"with 'cosmic-backup list {manifest.component}'."
        )
    # Trust.UNVERIFIED: for_backup raises the sentence naming both fingerprints.
    key = rt.keys.for_backup(manifest.id, manifest.key_fingerprint)
    if entry.trust != Trust.VERIFIED:  # the key appeared after listing: check again
        raise IntegrityError(f"The manifest of {manifest.id} could not be verified.")
    return key


def open_stored(rt: Runtime, catalog: StoreCatalog, entry: Entry) -> BinaryIO:
    """The stored bytes of a backup (`StoreCatalog.open_artifact`); a download from
    off-site shows its progress, a local file opens at once."""
    if catalog.where != "remote":
        return catalog.open_artifact(entry)
    with rt.progress(f"downloading {entry.id}", entry.manifest.stored_size) as advance:
        return catalog.open_artifact(entry, advance)


def open_plaintext(
    rt: Runtime, artifact: BinaryIO, manifest: Manifest, key: Key
) -> UnsealingReader:
    """Check the whole artifact's MAC before returning a reader of its plaintext."""
    if manifest.artifact_mac is None:
        raise IntegrityError(f"The manifest of {manifest.id} records no MAC; it cannot be trusted.")
    with rt.progress(f"checking {manifest.id}", manifest.stored_size) as advance:
        return open_verified(
            artifact,
            key,
            expected_mac=manifest.artifact_mac,
            iterations=manifest.iterations,
            expected_stored_size=manifest.stored_size,
            expected_sha256=manifest.plaintext_sha256,
            expected_plaintext_size=manifest.plaintext_size,
            mac_progress=advance,
        )
