"""Opening the chunk store: `store/config` and the data key's wraps `keys/<fp>.<mac>.key`
(docs/format.md, "The wrap" and "store/config").

The config is written once, after the first wrap, so a store exists exactly when its
config does. A wrap is found by its MAC, as the recovery script finds it: the fingerprint
in its name only says which key it is for.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from cosmic_backup.chunkstore.layout import StoreLayout, write_object
from cosmic_backup.clock import Clock, SystemClock, iso
from cosmic_backup.errors import IntegrityError, KeyProblem
from cosmic_backup.format.cipher import (
    HEADER_LEN,
    KeySource,
    derive_key_iv,
    read_salt,
    start_key_iv,
)
from cosmic_backup.format.keys import Key, start_master_secret
from cosmic_backup.format.objects import (
    WRAP_MAC_SALT,
    DataKey,
    mac_of,
    unseal,
    wrap_data_key,
    wrap_mac_key,
)
from cosmic_backup.format.store_config import (
    PACK_TARGET,
    StoreConfig,
    check_config_mac,
    dump_config,
    parse_config,
)

WRAP_NAME = re.compile(r"(?P<fp>[0-9a-f]{16})\.(?P<mac>[0-9a-f]{64})\.key")
MIN_WRAP_ITERATIONS = 1_000


def store_exists(layout: StoreLayout) -> bool:
    return layout.config.is_file()


def create_store(
    layout: StoreLayout,
    user_key: Key,
    wrap_iterations: int,
    *,
    clock: Clock | None = None,
    pack_target: int = PACK_TARGET,
) -> tuple[StoreConfig, DataKey]:
    """A new store: a fresh data key, its wrap under `user_key`, then the config (last).

    Call it under the root's lock; an existing store is never replaced.
    """
    if store_exists(layout):
        raise KeyProblem(
            f"A chunk store already exists in {layout.store}; it is opened, never created again."
        )
    if wrap_iterations < MIN_WRAP_ITERATIONS:
        raise KeyProblem(f"The wrap needs at least {MIN_WRAP_ITERATIONS} iterations.")
    data_key = DataKey.generate()
    config = StoreConfig(
        data_key=data_key.fingerprint,
        wrap_iterations=wrap_iterations,
        created_at=iso((clock or SystemClock()).now()),
        pack_target=pack_target,
    )
    write_wrap(layout, data_key, user_key, wrap_iterations)
    write_object(layout, layout.config, dump_config(config, data_key))
    return config, data_key


def write_wrap(layout: StoreLayout, data_key: DataKey, user_key: Key, iterations: int) -> Path:
    stored, mac = wrap_data_key(data_key, user_key, iterations)
    path = layout.keys / f"{user_key.fingerprint}.{mac}.key"
    write_object(layout, path, stored)
    return path


def read_config(layout: StoreLayout) -> tuple[StoreConfig, dict[str, object]]:
    try:
        text = layout.config.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(
            f"There is no chunk store in {layout.store} (no store/config): back up first, or "
            "point BACKUP_DIR at the folder that holds the store."
        ) from None
    return parse_config(text, str(layout.config))


def open_store(layout: StoreLayout, user_key: Key) -> tuple[StoreConfig, DataKey]:
    """The config, its MAC checked under the data key that a wrap for `user_key` opens."""
    config, body = read_config(layout)
    data_key = unwrap_with(layout, user_key, config.wrap_iterations)
    check_config_mac(body, data_key, str(layout.config))
    return config, data_key


def _wraps(layout: StoreLayout) -> list[tuple[Path, str, str]]:
    if not layout.keys.is_dir():
        return []
    found = []
    for path in sorted(layout.keys.iterdir()):
        if match := WRAP_NAME.fullmatch(path.name):
            found.append((path, match.group("fp"), match.group("mac")))
    return found


def _early_derivation(
    pool: ThreadPoolExecutor, wraps: list[tuple[Path, str, str]], user_key: Key, iterations: int
) -> KeySource:
    """The AES key and IV of the wraps named for `user_key`, started in `pool`; any
    other salt is derived when asked for."""
    started: dict[bytes, Future[tuple[bytes, bytes]]] = {}
    for path, fingerprint, _mac in wraps:
        if fingerprint == user_key.fingerprint:
            try:
                salt = read_salt(path.read_bytes()[:HEADER_LEN])
            except (OSError, IntegrityError):
                continue  # not openssl's header: its MAC check says so
            started[salt] = pool.submit(derive_key_iv, user_key.passphrase, salt, iterations)

    def derive(passphrase: bytes, salt: bytes, count: int) -> tuple[bytes, bytes]:
        future = started.get(salt)
        if future is None or count != iterations or passphrase != user_key.passphrase:
            return derive_key_iv(passphrase, salt, count)
        return future.result()

    return derive


# More wraps than this (keys rotated often): the fingerprint must pick the wrap first.
WRAPS_STARTED_BLIND = 2


def start_derivations(layout: StoreLayout, user_key: Key) -> None:
    """Begin, in the background, the full-count derivations that opening this store with
    `user_key` will need: the master secret (the fingerprint, the manifests' MACs), the
    wraps' MAC key and each wrap's AES key (format/kdf.py). The config and the salts are
    read unchecked: they only say what to derive, and the open checks every MAC as before.
    Anything missing or unreadable starts nothing; the open then says why."""
    start_master_secret(user_key.passphrase)
    try:
        config, _ = read_config(layout)
        wraps = _wraps(layout)
        if len(wraps) > WRAPS_STARTED_BLIND:
            wraps = [wrap for wrap in wraps if wrap[1] == user_key.fingerprint]
        salts = [read_salt(path.read_bytes()[:HEADER_LEN]) for path, _fp, _mac in wraps]
    except (OSError, IntegrityError):
        return
    start_key_iv(user_key.passphrase, WRAP_MAC_SALT, config.wrap_iterations)
    for salt in salts:
        start_key_iv(user_key.passphrase, salt, config.wrap_iterations)


def wrap_fingerprints(layout: StoreLayout) -> list[str]:
    """The fingerprints of the user keys that have a wrap of the data key."""
    return sorted({fingerprint for _, fingerprint, _ in _wraps(layout)})


# Wraps this process has opened: (SHA-256 of the passphrase, of the wrap's bytes, the
# count) -> the data key. A backup opens the store twice (the backup, then prune's sweep),
# and each open costs two full-count derivations (the wrap MAC key, then the wrap's own
# salt): the same bytes under the same passphrase give the same key, so the second open
# is free. In memory only, as the key itself is.
_unwrapped: dict[tuple[bytes, bytes, int], DataKey] = {}


def unwrap_with(layout: StoreLayout, user_key: Key, iterations: int) -> DataKey:
    """The data key, from the wrap whose MAC this key's wrap MAC key matches.

    Two full-count PBKDF2 runs are needed: the wrap MAC key (a fixed salt) and the AES key
    of the wrap made for this key (its own salt). They run at once, in two threads
    (hashlib releases the GIL), ~0.3 s instead of ~0.6 s before every restore and backup.
    The salt is a stored byte: nothing is decrypted before the MAC matched."""
    wraps = [
        (path, path.read_bytes(), fingerprint, mac) for path, fingerprint, mac in _wraps(layout)
    ]
    secret = hashlib.sha256(user_key.passphrase).digest()
    for _path, stored, _fingerprint, _mac in wraps:
        known = _unwrapped.get((secret, hashlib.sha256(stored).digest(), iterations))
        if known is not None:
            return known
    listed = [(path, fingerprint, mac) for path, _stored, fingerprint, mac in wraps]
    with ThreadPoolExecutor(max_workers=2) as pool:
        mac_future = pool.submit(wrap_mac_key, user_key, iterations)
        early = _early_derivation(pool, listed, user_key, iterations)
        mac_key = mac_future.result()
        for _path, stored, _fingerprint, mac in wraps:
            if hmac.compare_digest(mac_of(stored, mac_key), mac):
                line = unseal(stored, user_key.passphrase, iterations, mac_key, mac, early)
                data_key = DataKey.from_line(line)
                _unwrapped[(secret, hashlib.sha256(stored).digest(), iterations)] = data_key
                return data_key
    made_for = ", ".join(sorted({fingerprint for _, _, fingerprint, _ in wraps})) or "none"
    raise KeyProblem(
        f"No data key wrap in {layout.keys} opens with the key {user_key.fingerprint} (wraps "
        f"there are for the keys: {made_for}): use the key the store was made with."
    )
