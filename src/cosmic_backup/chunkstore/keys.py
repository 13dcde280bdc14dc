"""Opening the chunk store: `store/config` and the data key's wraps `keys/<fp>.<mac>.key`
(docs/format.md, "The wrap" and "store/config").

The config is written once, after the first wrap, so a store exists exactly when its
config does. A wrap is found by its MAC, as the recovery script finds it: the fingerprint
in its name only says which key it is for.
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path

from cosmic_backup.chunkstore.layout import StoreLayout, write_object
from cosmic_backup.clock import Clock, SystemClock, iso
from cosmic_backup.errors import IntegrityError, KeyProblem
from cosmic_backup.format.cipher import HEADER_LEN, read_salt, start_key_iv
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
    except (OSError, IntegrityError):
        return
    _start_wrap_keys(_wraps(layout), user_key, config.wrap_iterations, blind=True)


def _start_wrap_keys(
    wraps: list[tuple[Path, str, str]], user_key: Key, iterations: int, *, blind: bool
) -> None:
    """Begin the wraps' MAC key and the AES keys of the wraps made for `user_key`; `blind`
    (its fingerprint not derived yet): of every wrap, when there are only a few."""
    if not blind or len(wraps) > WRAPS_STARTED_BLIND:
        wraps = [wrap for wrap in wraps if wrap[1] == user_key.fingerprint]
    start_key_iv(user_key.passphrase, WRAP_MAC_SALT, iterations)
    for path, _fingerprint, _mac in wraps:
        try:
            salt = read_salt(path.read_bytes()[:HEADER_LEN])
        except (OSError, IntegrityError):
            continue  # not openssl's header: its MAC check says so
        start_key_iv(user_key.passphrase, salt, iterations)


def wrap_fingerprints(layout: StoreLayout) -> list[str]:
    """The fingerprints of the user keys that have a wrap of the data key."""
    return sorted({fingerprint for _, fingerprint, _ in _wraps(layout)})


def unwrap_with(layout: StoreLayout, user_key: Key, iterations: int) -> DataKey:
    """The data key, from the wrap whose MAC this key's wrap MAC key matches.

    Two full-count PBKDF2 runs are needed: the wrap MAC key (a fixed salt) and the AES key
    of the wrap made for this key (its own salt). Both are started at once (or were, by
    `start_derivations`) and each is derived once per process (format/kdf.py), so a second
    open in the same run (prune's sweep after a backup) derives nothing. The salt is a
    stored byte: nothing is decrypted before the MAC matched."""
    wraps = _wraps(layout)
    _start_wrap_keys(wraps, user_key, iterations, blind=False)
    mac_key = wrap_mac_key(user_key, iterations)
    for path, _fingerprint, mac in wraps:
        stored = path.read_bytes()
        if hmac.compare_digest(mac_of(stored, mac_key), mac):
            return DataKey.from_line(unseal(stored, user_key.passphrase, iterations, mac_key, mac))
    made_for = ", ".join(sorted({fingerprint for _, fingerprint, _ in wraps})) or "none"
    raise KeyProblem(
        f"No data key wrap in {layout.keys} opens with the key {user_key.fingerprint} (wraps "
        f"there are for the keys: {made_for}): use the key the store was made with."
    )
