"""Manifests: the authenticated catalog entry of one backup.

A manifest is JSON. Its ``mac`` field is an HMAC-SHA256, under the key's manifest MAC key,
of the canonical JSON of every other field, so an edited manifest is detected. Failure
records made when no key could be had carry no MAC; they are never restorable.

The MAC also covers where the backup belongs: its id and component (which its object name
must repeat), its host (the off-site folder it is written to) and its root (the backup
folder that made it). The catalog compares them with where the manifest is found, so a
manifest copied to another name, folder or root is refused as moved, never taken for the
backup that lives there. Manifests made before these two fields (None) still load.

Fields added later are optional with a None default (``duration_seconds``): the MAC is
checked over the JSON as it was written, so an older manifest, which lacks them, still
verifies, and a newer one has them covered by its MAC like every other field.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from cosmic_backup.errors import IntegrityError
from cosmic_backup.format.keys import Key
from cosmic_backup.states import Outcome

FORMAT_VERSION = 1
FORMAT_CHUNKED = 2  # the payload is in the chunk store (docs/format.md, "The format 2 manifest")
# Fields only format 2 manifests carry: left out of format 1 ones, which stay as they were.
_FORMAT_2_FIELDS = ("chunk_list", "data_key")
MODE_FULL = "full"
MODE_SCHEMA_ONLY = "schema-only"
TAG_PRE_RESTORE = "pre-restore"
TAG_SCHEDULED = "scheduled"
TAG_MANUAL = "manual"
# With pre-restore: the copy is of a restore's other target (`restore --into`), not of the
# app's configured source, so it is not one of the app's backups in counts.
TAG_OTHER_TARGET = "other-target"
MAC_DOMAIN = b"cosmic-backup manifest v1\n"
CIPHER_DESCRIPTION = "aes-256-cbc, openssl enc -pbkdf2 -md sha256 format"


@dataclass
class Manifest:
    """Every field the catalog keeps of a backup; none of them a secret."""

    id: str
    component: str
    status: str
    mode: str
    tags: list[str]
    started_at: str
    finished_at: str
    tool_version: str
    source: dict[str, Any] = field(default_factory=dict)
    artifact: str | None = None
    plaintext_size: int | None = None
    stored_size: int | None = None
    plaintext_sha256: str | None = None
    artifact_mac: str | None = None
    kdf: dict[str, Any] | None = None
    key_fingerprint: str | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    log_file: str | None = None
    verified_at: str | None = None
    # The last passing restore test's time, and the last test's outcome and figures.
    restore_tested_at: str | None = None
    restore_test: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION
    # Where it belongs (see the module's docstring); None in manifests of older versions.
    host: str | None = None
    root_id: str | None = None
    # How long the backup took, start to manifest (seconds); None in older manifests.
    duration_seconds: float | None = None
    # Format 2: the chunk list record and the data key's fingerprint.
    chunk_list: dict[str, Any] | None = None
    data_key: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == Outcome.OK

    @property
    def is_pre_restore(self) -> bool:
        return TAG_PRE_RESTORE in self.tags

    @property
    def is_other_target(self) -> bool:
        return TAG_OTHER_TARGET in self.tags

    @property
    def iterations(self) -> int:
        if not self.kdf or "iterations" not in self.kdf:
            raise IntegrityError(f"The manifest of {self.id} records no key-derivation iterations.")
        return int(self.kdf["iterations"])

    @property
    def chunked(self) -> bool:
        return self.format_version == FORMAT_CHUNKED

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        for name in _FORMAT_2_FIELDS:
            if body[name] is None:
                del body[name]
        return body


def kdf_description(iterations: int, *, salt: str = "per file") -> dict[str, Any]:
    return {
        "algorithm": "pbkdf2-hmac-sha256",
        "iterations": iterations,
        "salt": f"{salt}, openssl 'Salted__' header",
        "cipher": CIPHER_DESCRIPTION,
        "mac": "hmac-sha256 over the stored bytes",
    }


def canonical_json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _mac(body: dict[str, Any], key: Key) -> str:
    return hmac.new(
        key.manifest_mac_key, MAC_DOMAIN + canonical_json(body), hashlib.sha256
    ).hexdigest()


def dump_manifest(manifest: Manifest, key: Key | None) -> bytes:
    """The manifest's JSON text, with its MAC when a key is given."""
    body = manifest.to_dict()
    body["mac"] = _mac(body, key) if key is not None else None
    return json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"


def parse_manifest(text: bytes, name: str) -> tuple[Manifest, dict[str, Any]]:
    """Parse a manifest (not yet authenticated); returns it and its raw JSON body."""
    try:
        body = json.loads(text)
        if not isinstance(body, dict):
            raise TypeError("not an object")
        fields = {k: v for k, v in body.items() if k != "mac"}
        return Manifest(**fields), body
    except (ValueError, TypeError) as exc:
        raise IntegrityError(
            f"The manifest {name} is not valid JSON of a cosmic-backup manifest: it is damaged."
        ) from exc


def check_manifest_mac(body: dict[str, Any], key: Key, name: str) -> None:
    expected = body.get("mac")
    fields = {k: v for k, v in body.items() if k != "mac"}
    if not isinstance(expected, str) or not hmac.compare_digest(_mac(fields, key), expected):
        raise IntegrityError(
            f"The manifest {name} fails its integrity check: it was edited or damaged. "
            "Do not trust this backup; use another one."
        )
