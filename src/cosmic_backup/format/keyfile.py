"""Key files and the keyring on disk: private files, one passphrase line each.

The key file is what ``openssl enc -pass file:PATH`` reads. The keyring is a private
folder of retired keys, each in ``<fingerprint>.key``, so a backup made before a rotation
finds its key by the fingerprint its manifest records.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from cosmic_backup.errors import KeyProblem
from cosmic_backup.format.keys import Key, generate_passphrase, passphrase_from_text
from cosmic_backup.process import process_alive
from cosmic_backup.storage.local import fsync_dir

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def _insecure_bits(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode) & 0o077


def read_key_file(path: Path, *, allow_insecure: bool = False) -> tuple[Key, str | None]:
    """Read a key file; refuse one that group or others can read unless allowed.

    Returns the key and, when an insecure file was allowed, the warning to show.
    """
    try:
        insecure = _insecure_bits(path)
        text = path.read_bytes()
    except FileNotFoundError as exc:
        raise KeyProblem(
            f"The key file {path} does not exist. Restore it from your safe copy, or set "
            "BACKUP_KEY_FILE, BACKUP_KEY or BACKUP_KEY_COMMAND."
        ) from exc
    except PermissionError as exc:
        raise KeyProblem(f"The key file {path} cannot be read: check its owner.") from exc
    except IsADirectoryError as exc:
        raise KeyProblem(
            f"The key file {path} is a folder, not a file; point BACKUP_KEY_FILE at the key "
            "file itself."
        ) from exc
    except OSError as exc:
        raise KeyProblem(
            f"The key file {path} cannot be read ({exc.strerror}); check the path in "
            "BACKUP_KEY_FILE."
        ) from exc
    warning = None
    if insecure:
        message = (
            f"The key file {path} can be read by other users (mode "
            f"{stat.S_IMODE(path.stat().st_mode):o}); run: chmod 600 {path}"
        )
        if not allow_insecure:
            raise KeyProblem(
                message + " (or pass --allow-insecure-key, or set BACKUP_ALLOW_INSECURE_KEY=1, "
                "to go on with a warning)."
            )
        warning = message
    return Key(passphrase_from_text(text)), warning


def write_private_file(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 from the start, whole or not at all; refuse to
    replace an existing file (FileExistsError).

    The bytes go to a temporary name first, are fsynced, then linked to `path` (a link
    fails where a file exists, as O_EXCL does): a run killed half-way used to leave an
    empty key file, and every backup after it failed with "the backup key is empty".
    A temporary file of a run that died is removed by the next one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(path)
    temporary = path.parent / f"{_temporary_prefix(path)}{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        _link_or_create(temporary, path, data)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _link_or_create(temporary: Path, path: Path, data: bytes) -> None:
    try:
        os.link(temporary, path)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
            raise
        # A filesystem without hard links: created in place, as before.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


def _temporary_prefix(path: Path) -> str:
    return f".{path.name.lstrip('.')}.new-"


def _remove_dead_temporaries(path: Path) -> None:
    prefix = _temporary_prefix(path)
    for leftover in path.parent.glob(f"{prefix}*"):
        pid = leftover.name[len(prefix) :]
        if pid.isdigit() and (int(pid) == os.getpid() or not process_alive(int(pid))):
            leftover.unlink(missing_ok=True)


def create_key_file(path: Path) -> Key:
    """Generate a new key into `path`, which must not exist yet."""
    passphrase = generate_passphrase()
    try:
        write_private_file(path, passphrase.encode() + b"\n")
    except FileExistsError as exc:
        if not path.parent.is_dir():
            raise KeyProblem(
                f"The key file {path} cannot be created: {path.parent} is not a folder; "
                "check BACKUP_KEY_FILE."
            ) from exc
        raise KeyProblem(f"The key file {path} already exists; it was left untouched.") from exc
    except OSError as exc:
        raise KeyProblem(
            f"The key file {path} cannot be created ({exc.strerror}); check BACKUP_KEY_FILE."
        ) from exc
    return Key(passphrase.encode())


class Keyring:
    """Retired keys, found by fingerprint."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path_for(self, fingerprint: str) -> Path:
        return self.folder / f"{fingerprint}.key"

    def find(self, fingerprint: str, *, allow_insecure: bool = False) -> Key | None:
        path = self.path_for(fingerprint)
        if not path.exists():
            return None
        key, _ = read_key_file(path, allow_insecure=allow_insecure)
        return key if key.fingerprint == fingerprint else None

    def add(self, key: Key) -> Path:
        path = self.path_for(key.fingerprint)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            os.chmod(self.folder, PRIVATE_DIR)
            if not path.exists():
                write_private_file(path, key.passphrase + b"\n")
        except OSError as exc:
            raise KeyProblem(
                f"The retired key cannot be kept in the keyring {self.folder} ({exc.strerror}); "
                "check that BACKUP_KEYRING_DIR names a folder you can write to. Nothing was "
                "rotated."
            ) from None
        return path

    def fingerprints(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.key"))
