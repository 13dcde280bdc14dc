"""Full-count PBKDF2-HMAC-SHA256, derived once per process and inputs, and startable early.

A run needs up to three 600,000-iteration derivations (the user key's master secret, the
store wrap's MAC key and its AES key), about 0.3 s of CPU each. Computed one after
another where each is first needed, they took 0.6 s of every backup and restore. Started
together as soon as the key is known (`start`), in threads (hashlib releases the GIL),
they overlap each other and the imports and catalog reads before them; whoever needs
one first waits for it, and nothing is derived twice.

Results stay in memory only, as the key itself does, keyed by a SHA-256 of the
passphrase, never the passphrase.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import Future

_lock = threading.Lock()
_derived: dict[tuple[bytes, bytes, int, int], Future[bytes]] = {}


def _entry(
    passphrase: bytes, salt: bytes, iterations: int, length: int
) -> tuple[Future[bytes], bool]:
    """The future for these inputs, and whether the caller must compute it."""
    key = (hashlib.sha256(passphrase).digest(), salt, iterations, length)
    with _lock:
        future = _derived.get(key)
        if future is not None:
            return future, False
        future = _derived[key] = Future()
        return future, True


def _compute(
    future: Future[bytes], passphrase: bytes, salt: bytes, iterations: int, length: int
) -> None:
    try:
        future.set_result(hashlib.pbkdf2_hmac("sha256", passphrase, salt, iterations, length))
    except BaseException as exc:  # handed to whoever waits, in their thread
        with _lock:  # and forgotten: a later call derives again
            for key, known in list(_derived.items()):
                if known is future:
                    del _derived[key]
        future.set_exception(exc)


def pbkdf2(passphrase: bytes, salt: bytes, iterations: int, length: int) -> bytes:
    """PBKDF2-HMAC-SHA256: computed here, or the result of the same derivation already
    started or done in this process."""
    future, mine = _entry(passphrase, salt, iterations, length)
    if mine:
        _compute(future, passphrase, salt, iterations, length)
    return future.result()


def start(passphrase: bytes, salt: bytes, iterations: int, length: int) -> None:
    """Begin the derivation in a thread of its own unless it is begun or done; a daemon
    thread, so a command that never needs it does not wait for it to end."""
    future, mine = _entry(passphrase, salt, iterations, length)
    if mine:
        threading.Thread(
            target=_compute,
            args=(future, passphrase, salt, iterations, length),
            name="key-derivation",
            daemon=True,
        ).start()
