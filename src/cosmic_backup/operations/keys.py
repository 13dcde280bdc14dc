"""Where the backup key comes from, and finding the key an older backup was made with.

Precedence: ``BACKUP_KEY`` (the passphrase itself) > ``BACKUP_KEY_COMMAND`` (a command
that prints it) > the key file. Only a backup may create the key file; a restore never
does, since a fresh key could not open any existing backup.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cosmic_backup.catalog import Catalog
from cosmic_backup.errors import CosmicError, KeyProblem, UsageError
from cosmic_backup.format.keyfile import Keyring, create_key_file, read_key_file
from cosmic_backup.format.keys import Key, generate_passphrase, passphrase_from_text
from cosmic_backup.process import run_captured
from cosmic_backup.redact import register_secret
from cosmic_backup.settings import Settings
from cosmic_backup.storage.local import replace_file

KEY_COMMAND_TIMEOUT = 60
# A passphrase a person could guess or brute-force is no key: new backups need at least
# this many characters (a generated key has 64). Older backups made with a shorter one
# still open, with a warning, so nothing already backed up becomes unreadable.
MIN_PASSPHRASE_LENGTH = 16
SOURCE_ENV = "environment BACKUP_KEY"
SOURCE_COMMAND = "BACKUP_KEY_COMMAND"


@dataclass(frozen=True)
class LoadedKey:
    key: Key
    source: str  # "environment BACKUP_KEY", "BACKUP_KEY_COMMAND" or the key file's path
    created: bool = False


class KeySource:
    """The current key of this project, and the keyring of retired ones."""

    def __init__(self, settings: Settings, say: Callable[[str], None]) -> None:
        self.settings = settings
        self.say = say
        self.key_file = settings.path("key_file")
        self.keyring = Keyring(settings.path("keyring_dir"))
        self._loaded: LoadedKey | None = None

    # -- the current key --------------------------------------------------------------
    def current(self, *, create: bool = False) -> LoadedKey:
        """The key for new backups; with `create`, generate the key file when there is none."""
        if self._loaded is None:
            self._loaded = self._load(create=create)
            register_secret(self._loaded.key.passphrase)
            self._warn_if_short(self._loaded)
        if create:
            self._refuse_if_short(self._loaded)
        return self._loaded

    @staticmethod
    def _length(loaded: LoadedKey) -> int:
        return len(loaded.key.passphrase.decode(errors="replace").strip())

    def _refuse_if_short(self, loaded: LoadedKey) -> None:
        length = self._length(loaded)
        if length < MIN_PASSPHRASE_LENGTH:
            raise KeyProblem(
                f"The key from {loaded.source} is only {length} character(s) long; new backups "
                f"need a passphrase of at least {MIN_PASSPHRASE_LENGTH} (make one with: "
                "openssl rand -hex 32, and keep the old one in the keyring to restore older "
                "backups: cosmic-backup key rotate)."
            )

    def _warn_if_short(self, loaded: LoadedKey) -> None:
        length = self._length(loaded)
        if length < MIN_PASSPHRASE_LENGTH:
            self.say(
                f"warning: the key from {loaded.source} is only {length} character(s) long; "
                f"new backups will refuse it (at least {MIN_PASSPHRASE_LENGTH}); "
                "run 'cosmic-backup key rotate' to replace it."
            )

    def start_derivations(self, store_root: Path) -> None:
        """Begin the key derivations a command that opens the chunk store under
        `store_root` will need, in the background, when the current key can be had
        (chunkstore/keys.py). A key that cannot be loaded starts nothing: the command
        meets the same problem where it needs the key and says so there. A key from
        BACKUP_KEY_COMMAND is not fetched early: the command runs once, where the key is
        needed (inside the root's lock), as before."""
        if self._loaded is None and self.settings.key_command and not self.settings.key:
            return
        key = self.current_if_any()
        if key is not None:
            from cosmic_backup.chunkstore.keys import start_derivations
            from cosmic_backup.chunkstore.layout import StoreLayout

            start_derivations(StoreLayout(store_root), key)

    def current_if_any(self) -> Key | None:
        """The current key, or None when none is configured (never creates one)."""
        try:
            return self.current().key
        except KeyProblem:
            return None

    def _load(self, *, create: bool) -> LoadedKey:
        if self.settings.key:
            return LoadedKey(Key(self.settings.key.encode()), SOURCE_ENV)
        if self.settings.key_command:
            return LoadedKey(self._run_key_command(self.settings.key_command), SOURCE_COMMAND)
        if not self.key_file.exists() and create:
            return self._create_key_file()
        key, warning = read_key_file(self.key_file, allow_insecure=self.settings.allow_insecure_key)
        if warning:
            self.say(f"warning: {warning}")
        return LoadedKey(key, str(self.key_file))

    def _create_key_file(self) -> LoadedKey:
        key = create_key_file(self.key_file)
        self.say(
            "\n".join(
                [
                    "=" * 72,
                    f"A NEW BACKUP KEY was created: {self.key_file}",
                    f"(fingerprint {key.fingerprint}). Every backup is encrypted with it:",
                    "WITHOUT THIS FILE NO BACKUP CAN BE RESTORED.",
                    "Copy it now to a safe place away from the backups (a password manager,",
                    "a secrets vault), and never commit it.",
                    "=" * 72,
                ]
            )
        )
        return LoadedKey(key, str(self.key_file), created=True)

    @staticmethod
    def _run_key_command(command: str) -> Key:
        try:
            result = run_captured(shlex.split(command), timeout=KEY_COMMAND_TIMEOUT)
        except ValueError as exc:  # unbalanced quotes in the command
            raise KeyProblem(f"BACKUP_KEY_COMMAND cannot be parsed ({exc}); check it.") from None
        except CosmicError as exc:  # missing program, or no answer in time
            raise KeyProblem(
                f"BACKUP_KEY_COMMAND could not be run: {exc.message.rstrip('.')}; "
                "check the command."
            ) from None
        if result.returncode != 0:
            raise KeyProblem(
                f"BACKUP_KEY_COMMAND failed with exit code {result.returncode}; run it by hand "
                "to see why."
            )
        passphrase = passphrase_from_text(result.stdout.strip().encode())
        if not passphrase:
            raise KeyProblem("BACKUP_KEY_COMMAND printed nothing; it must print the passphrase.")
        return Key(passphrase)

    # -- keys of existing backups -----------------------------------------------------
    def lookup(self, fingerprint: str) -> Key | None:
        """The key with this fingerprint: the current one or one from the keyring."""
        current = self.current_if_any()
        if current is not None and current.fingerprint == fingerprint:
            return current
        if not fingerprint:
            return None
        key = self.keyring.find(fingerprint, allow_insecure=self.settings.allow_insecure_key)
        if key is not None:
            register_secret(key.passphrase)
        return key

    def for_backup(self, backup_id: str, fingerprint: str | None) -> Key:
        """The key `backup_id` was made with, or a sentence naming both fingerprints."""
        key = self.lookup(fingerprint or "")
        if key is not None:
            return key
        current = self.current().key  # raises the "no key" sentence when there is none
        raise KeyProblem(
            f"The backup {backup_id} was made with key {fingerprint}; your key is "
            f"{current.fingerprint} and the keyring ({self.keyring.folder}) does not hold "
            f"{fingerprint}. Put that key file at {self.keyring.path_for(fingerprint or '?')} "
            "or point BACKUP_KEY_FILE at it."
        )

    # -- administration ---------------------------------------------------------------
    def init(self) -> LoadedKey:
        """`key init`: create the key file; refuse when a key already exists anywhere."""
        if self.settings.key or self.settings.key_command:
            raise UsageError(
                "The key comes from BACKUP_KEY or BACKUP_KEY_COMMAND; no key file is needed."
            )
        if self.key_file.exists():
            existing = self.current().key
            raise UsageError(
                f"The key file {self.key_file} already exists (fingerprint "
                f"{existing.fingerprint}); it was left untouched."
            )
        return self.current(create=True)

    def rotate(self, catalog: Catalog, *, wait: bool = False) -> Rotation:
        """`key rotate`: retire the current key into the keyring and start a new key file.

        Under the backup root's lock, as backups take it: two rotations at once would each
        retire the same key and the first one's new key would be lost, and a backup must
        never seal with a key that is being replaced.

        With BACKUP_KEY or BACKUP_KEY_COMMAND the old key is kept in the keyring but the new
        secret must be set where it lives, since we cannot write there: `new` is None then.
        """
        with catalog.lock("key rotate", wait=wait):
            self._loaded = None  # read the key again: another rotation may have just ended
            return self._rotate_locked()

    def _rotate_locked(self) -> Rotation:
        old = self.current().key
        retired = self.keyring.add(old)
        if self._loaded is not None and self._loaded.source in (SOURCE_ENV, SOURCE_COMMAND):
            return Rotation(old, None, retired, self._loaded.source)
        passphrase = generate_passphrase()
        new = Key(passphrase.encode())
        # atomic: the key file is always one whole key, 0600 from its first byte
        replace_file(self.key_file, passphrase.encode() + b"\n")
        self._loaded = LoadedKey(new, str(self.key_file))
        register_secret(new.passphrase)
        return Rotation(old, new, retired, str(self.key_file))


@dataclass(frozen=True)
class Rotation:
    old: Key
    new: Key | None  # None when the key lives in BACKUP_KEY / BACKUP_KEY_COMMAND
    retired_to: Path
    source: str
