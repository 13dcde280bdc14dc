"""`store/config`: the chunk store's fixed parameters (docs/format.md, "store/config").

Plain JSON, because the iteration counts must be read before the data key can be
unwrapped; its MAC, under the data key's config MAC key, is checked right after.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass
from typing import Any

from cosmic_backup.errors import IntegrityError
from cosmic_backup.format.manifest import CIPHER_DESCRIPTION, canonical_json
from cosmic_backup.format.objects import MEMBER_ALIGNMENT, OBJECT_ITERATIONS, DataKey

STORE_FORMAT = "cosmic-backup chunk store"
STORE_VERSION = 2
CONFIG_MAC_DOMAIN = b"cosmic-backup store config v2\n"
CONFIG_MAC_LABEL = "config-mac"
KiB = 1024
MiB = 1024 * KiB
PACK_TARGET = 16 * MiB
# Offsets in a pack are 4-byte fields of the in-memory index: a pack stays far below 4 GiB.
PACK_TARGET_MAX = 1024 * MiB
CHUNKER_ALGORITHM = "fastcdc-2020"
CHUNKER_LIBRARY = "pyfastcdc 0.3.1"
STREAM, FILE, LIST = "stream", "file", "list"


@dataclass(frozen=True)
class ChunkerParams:
    """One kind's content-defined chunker; fixed for the life of the store."""

    min: int
    avg: int
    max: int
    algorithm: str = CHUNKER_ALGORITHM
    library: str = CHUNKER_LIBRARY
    normalized: int = 1


# The doc's table "Parameters": dumps as one stream, file contents per file, chunk lists.
DEFAULT_CHUNKERS = {
    STREAM: ChunkerParams(128 * KiB, 512 * KiB, 2 * MiB),
    FILE: ChunkerParams(256 * KiB, 1 * MiB, 4 * MiB),
    LIST: ChunkerParams(16 * KiB, 64 * KiB, 256 * KiB),
}


@dataclass(frozen=True)
class StoreConfig:
    data_key: str  # the data key's fingerprint
    wrap_iterations: int
    created_at: str
    object_iterations: int = OBJECT_ITERATIONS
    pack_target: int = PACK_TARGET
    member_alignment: int = MEMBER_ALIGNMENT
    chunkers: tuple[tuple[str, ChunkerParams], ...] = tuple(DEFAULT_CHUNKERS.items())

    def chunker(self, kind: str) -> ChunkerParams:
        return dict(self.chunkers)[kind]

    def fields(self) -> dict[str, Any]:
        return {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "data_key": self.data_key,
            "object_iterations": self.object_iterations,
            "wrap_iterations": self.wrap_iterations,
            "cipher": CIPHER_DESCRIPTION,
            "chunkers": {kind: asdict(params) for kind, params in self.chunkers},
            "pack_target": self.pack_target,
            "member_alignment": self.member_alignment,
            "created_at": self.created_at,
        }


def config_mac(fields: dict[str, Any], data_key: DataKey) -> str:
    message = CONFIG_MAC_DOMAIN + canonical_json(fields)
    return hmac.new(data_key.derive(CONFIG_MAC_LABEL), message, hashlib.sha256).hexdigest()


def dump_config(config: StoreConfig, data_key: DataKey) -> bytes:
    body = config.fields()
    body["mac"] = config_mac(body, data_key)
    return json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"


def _damaged(where: str, why: str) -> IntegrityError:
    return IntegrityError(
        f"The chunk store's config {where} is damaged ({why}): restore store/config from a "
        "copy (the off-site store holds one); nothing was written."
    )


def parse_config(text: bytes, where: str) -> tuple[StoreConfig, dict[str, Any]]:
    """The config and its raw body, not yet authenticated (the data key is not open yet)."""
    try:
        body = json.loads(text)
        if body.get("format") != STORE_FORMAT or body.get("version") != STORE_VERSION:
            raise _damaged(where, "not a format 2 chunk store config")
        chunkers = tuple(
            (kind, ChunkerParams(**params)) for kind, params in sorted(body["chunkers"].items())
        )
        config = StoreConfig(
            data_key=str(body["data_key"]),
            wrap_iterations=int(body["wrap_iterations"]),
            created_at=str(body["created_at"]),
            object_iterations=int(body["object_iterations"]),
            pack_target=int(body["pack_target"]),
            member_alignment=int(body["member_alignment"]),
            chunkers=chunkers,
        )
    except IntegrityError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise _damaged(where, f"not valid JSON of a store config: {exc}") from None
    if not 0 < config.pack_target <= PACK_TARGET_MAX or config.member_alignment != 64:
        raise _damaged(where, "its pack parameters are out of range")
    if {STREAM, FILE, LIST} - {kind for kind, _ in chunkers}:
        raise _damaged(where, "a chunker is missing")
    return config, body


def check_config_mac(body: dict[str, Any], data_key: DataKey, where: str) -> None:
    fields = {name: value for name, value in body.items() if name != "mac"}
    expected = body.get("mac")
    if not isinstance(expected, str) or not hmac.compare_digest(
        config_mac(fields, data_key), expected
    ):
        raise _damaged(where, "its MAC does not match: it was edited")
    if body.get("data_key") != data_key.fingerprint:
        raise _damaged(where, "it names another data key")
