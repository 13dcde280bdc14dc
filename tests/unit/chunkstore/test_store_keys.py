"""store/config and the data key's wraps: created once, opened by MAC, edits refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cosmic_backup.chunkstore import ChunkStore
from cosmic_backup.chunkstore.chunker import chunker_seed
from cosmic_backup.chunkstore.keys import write_wrap
from cosmic_backup.errors import IntegrityError, KeyProblem
from cosmic_backup.format.objects import DataKey, mac_of, wrap_mac_key
from tests.unit.chunkstore import make_store
from tests.unit.format import FAST, KEY, OTHER_KEY


def test_config_holds_the_documented_fields_and_its_wrap_is_named_by_its_mac(
    tmp_path: Path,
) -> None:
    store = make_store(tmp_path)
    config = json.loads((tmp_path / "store" / "config").read_text())
    assert config["format"] == "cosmic-backup chunk store" and config["version"] == 2
    assert config["data_key"] == store.data_key.fingerprint
    assert config["chunkers"]["stream"]["min"] == 128 * 1024
    assert config["chunkers"]["file"]["avg"] == 1024 * 1024
    assert config["chunkers"]["list"]["max"] == 256 * 1024
    assert config["pack_target"] == 1024 * 1024 and config["member_alignment"] == 64
    (wrap,) = (tmp_path / "store" / "keys").iterdir()
    fingerprint, mac, _ = wrap.name.split(".")
    assert fingerprint == KEY.fingerprint
    assert mac_of(wrap.read_bytes(), wrap_mac_key(KEY, FAST)) == mac
    assert oct(wrap.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "store").stat().st_mode & 0o777) == "0o700"


def test_reopening_gives_the_same_data_key_and_never_creates_a_second(tmp_path: Path) -> None:
    first = make_store(tmp_path)
    again = ChunkStore.open(tmp_path, KEY, wrap_iterations=FAST)  # exists: opened
    assert again.data_key.fingerprint == first.data_key.fingerprint
    assert len(list((tmp_path / "store" / "keys").iterdir())) == 1


def test_another_key_is_refused_naming_both(tmp_path: Path) -> None:
    make_store(tmp_path)
    with pytest.raises(KeyProblem) as refused:
        ChunkStore.open(tmp_path, OTHER_KEY)
    assert OTHER_KEY.fingerprint in str(refused.value) and KEY.fingerprint in str(refused.value)


def test_a_second_wrap_for_a_rotated_key_opens_the_same_store(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    write_wrap(store.layout, store.data_key, OTHER_KEY, FAST)
    assert ChunkStore.open(tmp_path, OTHER_KEY).data_key.fingerprint == store.data_key.fingerprint


def test_an_edited_config_is_refused(tmp_path: Path) -> None:
    make_store(tmp_path)
    path = tmp_path / "store" / "config"
    path.write_text(path.read_text().replace('"pack_target": 1048576', '"pack_target": 2097152'))
    with pytest.raises(IntegrityError, match="MAC does not match"):
        ChunkStore.open(tmp_path, KEY)


def test_no_store_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="There is no chunk store"):
        ChunkStore.open(tmp_path, KEY)


def test_chunker_seed_is_pinned_and_below_two_to_the_63() -> None:
    # Pinned: a change here moves every chunk boundary, and dedup with older backups ends.
    assert chunker_seed(DataKey(bytes(range(32)))) == 8055218678357888473


def test_derivations_started_early_leave_the_open_nothing_to_derive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a backup or restore starts as soon as it has the key (the wrap's MAC key and
    AES key, the master secret): the open that follows waits for them and derives
    nothing itself, and with a wrong key the open still refuses."""
    import hashlib

    from cosmic_backup.chunkstore.keys import start_derivations
    from cosmic_backup.format import kdf
    from cosmic_backup.format.cipher import MEMOIZED_FROM
    from cosmic_backup.format.keys import Key

    key = Key(b"a key whose store is opened after an early start")
    created = ChunkStore.open(tmp_path, key, wrap_iterations=MEMOIZED_FROM + 7)
    kdf._derived.clear()  # as a new process: nothing derived yet
    start_derivations(created.layout, key)
    started = list(kdf._derived.values())
    for future in started:
        future.result(30)
    calls: list[int] = []
    real = hashlib.pbkdf2_hmac
    monkeypatch.setattr(hashlib, "pbkdf2_hmac", lambda *args: calls.append(args[3]) or real(*args))
    reopened = ChunkStore.open(tmp_path, key)
    assert reopened.data_key.fingerprint == created.data_key.fingerprint
    assert [count for count in calls if count >= MEMOIZED_FROM] == []
    assert len(started) == 3  # the master secret, the wrap's MAC key, its AES key
    with pytest.raises(KeyProblem):
        ChunkStore.open(tmp_path, Key(b"another key entirely, for the same store"))
