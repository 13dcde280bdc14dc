"""Every file the chunk store writes opens with the real openssl and gunzip alone, starting
from the user's key file: the wrap gives the data key line, which opens everything else;
openssl's HMAC gives every name; the doc's two-dd cut takes one chunk out of a real pack."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cosmic_backup.chunkstore.index_objects import read_index_object
from tests.unit.chunkstore import (
    DB_ID,
    MiB,
    files_under,
    gunzip,
    make_store,
    openssl_decrypt,
    payload,
    write,
)
from tests.unit.format import FAST, openssl, write_key_file
from tests.unit.format.test_objects import documented_block


def hmac_hex(key_hex: str, message: bytes | None = None, path: Path | None = None) -> str:
    args = ["dgst", "-sha256", "-mac", "HMAC", "-macopt", f"hexkey:{key_hex}"]
    out = openssl(*args, *([str(path)] if path else []), stdin=message)
    return out.decode().split("= ")[-1].strip()


def test_every_object_opens_with_openssl_and_gunzip_from_the_key_file(tmp_path: Path) -> None:
    root = tmp_path / "backups"
    store = make_store(root)
    data = payload(5 * MiB, seed=11)
    write(store, data)
    key_file = write_key_file(tmp_path)
    (wrap,) = files_under(root / "store" / "keys")
    data_key_file = tmp_path / "datakey"
    data_key_file.write_bytes(openssl_decrypt(wrap, key_file, FAST))
    data_key_hex = data_key_file.read_text().strip()
    assert data_key_hex == store.data_key.passphrase.decode()

    pack_mac_key = hmac_hex(data_key_hex, b"pack-mac")
    packs = files_under(root / "store" / "packs")
    assert len(packs) >= 2
    plaintexts = {}
    for pack in packs:
        assert hmac_hex(pack_mac_key, path=pack) == pack.name  # the name is the MAC
        assert pack.parent.name == pack.name[:2]
        plaintexts[pack.name] = openssl_decrypt(pack, data_key_file)
    # gunzip of the packs in the order they were written gives the payload, then the
    # entry text (stored last).
    order = [name for name in store.loaded_index.index.packs if name in plaintexts]
    whole = gunzip(b"".join(plaintexts[name] for name in order))
    assert whole.startswith(data)
    assert whole[len(data) :].endswith(b"\n") and b" " in whole[len(data) :]

    index_mac_key = hmac_hex(data_key_hex, b"index-mac")
    for index_object in files_under(root / "store" / "index"):
        assert hmac_hex(index_mac_key, path=index_object) == index_object.name
        text = gunzip(openssl_decrypt(index_object, data_key_file))
        assert text.startswith(b"cosmic-backup index 2\nwritten ")

    chunk_list = root / "database" / f"{DB_ID}.chunks"
    text = gunzip(openssl_decrypt(chunk_list, data_key_file))
    assert text.startswith(f"cosmic-backup chunk list 2\nbackup {DB_ID}\npayload dump\n".encode())
    config = (root / "store" / "config").read_text()
    assert '"object_iterations": 1000' in config and '"wrap_iterations": 1000' in config


def test_the_documented_two_dd_cut_takes_a_chunk_out_of_a_real_pack(tmp_path: Path) -> None:
    root = tmp_path / "backups"
    store = make_store(root)
    data = payload(4 * MiB, seed=12)
    write(store, data)
    data_key_file = tmp_path / "datakey"
    data_key_file.write_bytes(store.data_key.line)
    loaded = store.loaded_index
    (index_name,) = loaded.objects
    places = [
        (pack.name, place)
        for pack in read_index_object(store.layout, store.data_key, store.config, index_name).packs
        for place in pack.chunks
    ]
    # A member past the first of its pack whose length is not a multiple of 4 KiB, so
    # both dd commands do some of the work.
    pack_name, place = next(
        (name, place) for name, place in places if place.offset > 0 and place.length % 4096
    )
    pack_path = store.layout.pack(pack_name)
    (tmp_path / "pack").write_bytes(openssl_decrypt(pack_path, data_key_file))
    env = {
        "PATH": os.environ["PATH"],
        "T": str(tmp_path),
        "OFF": str(place.offset),
        "LEN": str(place.length),
    }
    cut = subprocess.run(
        ["sh", "-c", documented_block("dd bs=64")], env=env, capture_output=True, check=True
    )
    assert len(cut.stdout) == place.plain_length
    assert store.data_key.chunk_id(cut.stdout) == place.chunk_id
    assert cut.stdout in data
