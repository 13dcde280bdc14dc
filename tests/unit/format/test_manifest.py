"""Manifests: the signed JSON round trip, and no change to a signed manifest goes unnoticed."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from cosmic_backup.errors import IntegrityError
from cosmic_backup.format.manifest import (
    FORMAT_VERSION,
    MAC_DOMAIN,
    Manifest,
    check_manifest_mac,
    dump_manifest,
    kdf_description,
    parse_manifest,
)
from tests.unit.format import KEY, OTHER_KEY

NAME = "database/database-20261124T020000Z.manifest.json"


def sample(**changes: Any) -> Manifest:
    fields: dict[str, Any] = {
        "id": "database-20261124T020000Z",
        "component": "database",
        "status": "ok",
        "mode": "full",
        "tags": ["scheduled"],
        "started_at": "2026-11-24T02:00:00.000000Z",
        "finished_at": "2026-11-24T02:03:10.250000Z",
        "tool_version": "0.1.0",
        "source": {"database": "app_production", "server_version": "15.8", "rows": 1234},
        "artifact": "database-20261124T020000Z.dump.gz.enc",
        "plaintext_size": 10_485_760,
        "stored_size": 2_097_168,
        "plaintext_sha256": "ab" * 32,
        "artifact_mac": "cd" * 32,
        "kdf": kdf_description(600_000),
        "key_fingerprint": KEY.fingerprint,
        "warnings": ["caf\u00e9.txt changed while it was read"],
    }
    fields.update(changes)
    return Manifest(**fields)


def load(text: bytes) -> Manifest:
    """What the catalog does: parse, then check the MAC."""
    manifest, body = parse_manifest(text, NAME)
    check_manifest_mac(body, KEY, NAME)
    return manifest


def test_a_signed_manifest_round_trips() -> None:
    original = sample()
    text = dump_manifest(original, KEY)
    assert load(text) == original
    body = json.loads(text)
    assert body["format_version"] == FORMAT_VERSION
    assert len(body["mac"]) == 64 and body["mac"] == body["mac"].lower()
    assert original.iterations == 600_000


def test_the_mac_covers_values_not_layout() -> None:
    """Re-indenting or reordering keeps a manifest valid: the MAC is over canonical JSON."""
    text = dump_manifest(sample(), KEY)
    body = json.loads(text)
    reordered = json.dumps(dict(reversed(list(body.items()))), ensure_ascii=False).encode()
    assert load(reordered) == sample()


@pytest.mark.parametrize(
    "edit",
    [
        lambda body: body.update(status="failed"),
        lambda body: body["tags"].append("pre-restore"),
        lambda body: body.update(plaintext_size=body["plaintext_size"] + 1),
        lambda body: body["kdf"].update(iterations=1000),
        lambda body: body["source"].update(rows=1235),
        lambda body: body.update(verified_at="2026-11-25T00:00:00.000000Z"),
        lambda body: body.pop("warnings"),
        lambda body: body.update(mac=body["mac"].upper()),
        lambda body: body.pop("mac"),
    ],
)
def test_an_edited_value_fails_the_mac(edit: Any) -> None:
    body = json.loads(dump_manifest(sample(), KEY))
    edit(body)
    with pytest.raises(IntegrityError, match="edited or damaged"):
        load(json.dumps(body).encode())


def test_a_field_we_do_not_know_is_refused_as_damage() -> None:
    body = json.loads(dump_manifest(sample(), KEY))
    body["restore_to"] = "/etc"
    with pytest.raises(IntegrityError, match="not valid JSON of a cosmic-backup manifest"):
        load(json.dumps(body).encode())


def test_another_keys_mac_does_not_pass() -> None:
    text = dump_manifest(sample(), OTHER_KEY)
    with pytest.raises(IntegrityError, match="fails its integrity check"):
        load(text)


def test_the_mac_is_the_documented_hmac() -> None:
    body = json.loads(dump_manifest(sample(), KEY))
    fields = {k: v for k, v in body.items() if k != "mac"}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    expected = hmac.new(KEY.manifest_mac_key, MAC_DOMAIN + canonical.encode(), hashlib.sha256)
    assert MAC_DOMAIN == b"cosmic-backup manifest v1\n"
    assert body["mac"] == expected.hexdigest()


@pytest.mark.parametrize("text", [b"", b"[]", b'"x"', b"{", b"\xff\xfe{}", b'{"id": "x"}', b"null"])
def test_what_is_not_a_manifest_is_one_clear_error(text: bytes) -> None:
    with pytest.raises(IntegrityError, match=f"The manifest {NAME} is not valid JSON"):
        parse_manifest(text, NAME)


def test_an_unsigned_failure_record_carries_no_mac() -> None:
    record = sample(status="failed", artifact=None, error="pg_dump: connection refused")
    text = dump_manifest(record, None)
    manifest, body = parse_manifest(text, NAME)
    assert body["mac"] is None and manifest == record and not manifest.ok
    with pytest.raises(IntegrityError):
        check_manifest_mac(body, KEY, NAME)


def test_no_iterations_recorded_is_an_integrity_error() -> None:
    with pytest.raises(IntegrityError, match="no key-derivation iterations"):
        _ = sample(kdf=None).iterations


# Single-byte changes: bit flips, plus the substitutions most likely to keep JSON valid
# (whitespace for whitespace, hex case, digit for digit, quote and escape characters).
SUBSTITUTES = b' \t\r\n"\\0123456789abcdefABCDEF{}[],:-.e'


def test_every_single_byte_change_is_an_error_or_changes_nothing() -> None:
    original = sample()
    text = dump_manifest(original, KEY)
    load(text)
    errors = same = 0
    for index in range(len(text)):
        candidates = {text[index] ^ (1 << bit) for bit in range(8)} | set(SUBSTITUTES)
        for value in candidates - {text[index]}:
            changed = bytearray(text)
            changed[index] = value
            try:
                manifest = load(bytes(changed))
            except IntegrityError:
                errors += 1
                continue
            # Only a change JSON ignores may pass: whitespace for whitespace, \\u00e9 for
            # \\u00E9. The manifest read must then be exactly the one signed.
            assert manifest == original, (index, bytes([value]))
            same += 1
    assert errors > 20 * len(text)
    assert same > 0  # the harmless changes exist, so the check above did look at some
