"""Full-count derivations once per process: started early, waited for, never twice, and
the same bytes as hashlib's PBKDF2 (which the openssl-format tests pin)."""

from __future__ import annotations

import hashlib
import threading

import pytest

from cosmic_backup.format import kdf
from cosmic_backup.format.cipher import MEMOIZED_FROM, derive_key_iv, start_key_iv

COUNT = MEMOIZED_FROM  # the lowest count that is memoized: quick, and on the kdf path


def test_a_derivation_started_early_is_the_one_that_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[bytes] = []
    real = hashlib.pbkdf2_hmac
    gate = threading.Event()

    def counted(name: str, passphrase: bytes, salt: bytes, count: int, length: int) -> bytes:
        calls.append(salt)
        gate.wait(5)  # the caller asks while the early one is still running
        return real(name, passphrase, salt, count, length)

    monkeypatch.setattr(kdf.hashlib, "pbkdf2_hmac", counted)
    start_key_iv(b"early passphrase", b"salt0001", COUNT)
    start_key_iv(b"early passphrase", b"salt0001", COUNT)  # already begun: nothing more
    waiter = threading.Thread(target=gate.set)
    waiter.start()
    key, iv = derive_key_iv(b"early passphrase", b"salt0001", COUNT)
    waiter.join()
    assert calls == [b"salt0001"]
    material = real("sha256", b"early passphrase", b"salt0001", COUNT, 48)
    assert (key, iv) == (material[:32], material[32:])
    assert derive_key_iv(b"early passphrase", b"salt0001", COUNT) == (key, iv)
    assert calls == [b"salt0001"]  # and never again in this process


def test_other_inputs_are_other_derivations() -> None:
    first = derive_key_iv(b"passphrase one", b"saltAAAA", COUNT)
    assert derive_key_iv(b"passphrase two", b"saltAAAA", COUNT) != first
    assert derive_key_iv(b"passphrase one", b"saltBBBB", COUNT) != first
    assert derive_key_iv(b"passphrase one", b"saltAAAA", COUNT + 1) != first


def test_low_counts_are_derived_each_time_and_kept_nowhere() -> None:
    before = len(kdf._derived)
    derive_key_iv(b"a pack's data key", b"packsalt", 1000)
    start_key_iv(b"a pack's data key", b"packsalt", 1000)
    assert len(kdf._derived) == before


def test_a_failed_derivation_reaches_whoever_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> bytes:
        raise MemoryError("no memory for the derivation")

    monkeypatch.setattr(kdf.hashlib, "pbkdf2_hmac", broken)
    kdf.start(b"doomed passphrase", b"saltCCCC", COUNT, 48)
    with pytest.raises(MemoryError, match="no memory"):
        kdf.pbkdf2(b"doomed passphrase", b"saltCCCC", COUNT, 48)
    monkeypatch.undo()  # a later call derives again rather than failing for good
    expected = hashlib.pbkdf2_hmac("sha256", b"doomed passphrase", b"saltCCCC", COUNT, 48)
    assert kdf.pbkdf2(b"doomed passphrase", b"saltCCCC", COUNT, 48) == expected


def test_the_memo_never_holds_the_passphrase() -> None:
    kdf.pbkdf2(b"a passphrase kept out of memos", b"saltDDDD", COUNT, 48)
    assert not any(b"a passphrase kept out" in repr(key).encode() for key in kdf._derived)
    digest = hashlib.sha256(b"a passphrase kept out of memos").digest()
    assert (digest, b"saltDDDD", COUNT, 48) in kdf._derived
