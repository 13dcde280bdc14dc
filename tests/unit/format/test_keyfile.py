"""Key files and the keyring on a real filesystem: private modes, refusals, lookup."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cosmic_backup.errors import KeyProblem
from cosmic_backup.format.keyfile import Keyring, create_key_file, read_key_file
from tests.unit.format import KEY, OTHER_KEY, PASSPHRASE, write_key_file


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Create files as a careless shell would (umask 000): modes must not depend on it."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.parametrize("insecure", [0o640, 0o604, 0o644, 0o660, 0o666, 0o700 | 0o044])
def test_a_key_file_others_can_read_is_refused_with_the_fix(tmp_path: Path, insecure: int) -> None:
    path = write_key_file(tmp_path)
    path.chmod(insecure)
    with pytest.raises(KeyProblem) as refused:
        read_key_file(path)
    message = refused.value.message
    assert f"chmod 600 {path}" in message
    assert f"{insecure:o}" in message
    assert PASSPHRASE.decode() not in message


def test_an_insecure_key_file_may_be_allowed_with_a_warning(tmp_path: Path) -> None:
    path = write_key_file(tmp_path)
    path.chmod(0o644)
    key, warning = read_key_file(path, allow_insecure=True)
    assert key.fingerprint == KEY.fingerprint
    assert warning is not None and f"chmod 600 {path}" in warning


@pytest.mark.parametrize("private", [0o600, 0o400])
def test_a_private_key_file_is_read(tmp_path: Path, private: int) -> None:
    path = write_key_file(tmp_path)
    path.chmod(private)
    key, warning = read_key_file(path)
    assert (key.passphrase, warning) == (PASSPHRASE, None)


def test_a_missing_key_file_says_where_keys_can_come_from(tmp_path: Path) -> None:
    with pytest.raises(KeyProblem, match=r"does not exist.*BACKUP_KEY"):
        read_key_file(tmp_path / ".backup_key")


def test_a_created_key_is_private_and_carries_256_bits(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "new" / ".backup_key"
    key = create_key_file(path)
    assert mode(path) == 0o600
    text = path.read_bytes()
    assert text.endswith(b"\n") and len(bytes.fromhex(text.decode().strip())) * 8 >= 256
    read_back, _ = read_key_file(path)
    assert read_back.fingerprint == key.fingerprint


def test_an_existing_key_file_is_never_replaced(tmp_path: Path) -> None:
    path = write_key_file(tmp_path)
    with pytest.raises(KeyProblem, match="already exists; it was left untouched"):
        create_key_file(path)
    assert path.read_bytes() == PASSPHRASE + b"\n"


def test_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / ".backup_key"
    link.symlink_to(target)
    with pytest.raises(KeyProblem, match="already exists"):
        create_key_file(link)
    assert not target.exists()


def test_the_keyring_finds_retired_keys_by_fingerprint(tmp_path: Path, open_umask: None) -> None:
    keyring = Keyring(tmp_path / ".backup_keyring")
    assert keyring.fingerprints() == []
    assert keyring.find(KEY.fingerprint) is None
    path = keyring.add(KEY)
    assert path == tmp_path / ".backup_keyring" / f"{KEY.fingerprint}.key"
    assert (mode(keyring.folder), mode(path)) == (0o700, 0o600)
    assert keyring.add(KEY) == path  # adding again changes nothing
    keyring.add(OTHER_KEY)
    assert keyring.fingerprints() == sorted([KEY.fingerprint, OTHER_KEY.fingerprint])
    found = keyring.find(KEY.fingerprint)
    assert found is not None and found.passphrase == PASSPHRASE
    assert keyring.find("0000000000000000") is None


def test_a_keyring_file_under_another_keys_name_is_not_taken(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / ".backup_keyring")
    keyring.add(OTHER_KEY)
    keyring.path_for(OTHER_KEY.fingerprint).rename(keyring.path_for(KEY.fingerprint))
    assert keyring.find(KEY.fingerprint) is None


def test_an_insecure_keyring_file_is_refused_like_a_key_file(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / ".backup_keyring")
    path = keyring.add(KEY)
    path.chmod(0o640)
    with pytest.raises(KeyProblem, match=f"chmod 600 {path}"):
        keyring.find(KEY.fingerprint)
    assert keyring.find(KEY.fingerprint, allow_insecure=True) is not None


def test_a_creation_killed_half_way_leaves_no_key_file_and_the_next_one_succeeds(
    tmp_path: Path,
) -> None:
    """SIGKILL (strace) at the fsync of the new key's bytes: no empty or partial key file
    is left (it would fail every later backup with "the backup key is empty"), and the
    next creation makes a whole key and removes the dead run's temporary file."""
    import sys

    from tests.strace import killed_at

    path = tmp_path / ".backup_key"
    child = (
        "import sys; from pathlib import Path; "
        "from cosmic_backup.format.keyfile import create_key_file; "
        "create_key_file(Path(sys.argv[1]))"
    )
    result = killed_at(
        "fsync",
        1,
        [sys.executable, "-c", child, str(path)],
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode in (-9, 137), result.stderr
    assert not path.exists()
    leftovers = list(tmp_path.glob(".backup_key.new-*"))
    assert len(leftovers) == 1 and mode(leftovers[0]) == 0o600
    key = create_key_file(path)
    assert path.read_bytes() == key.passphrase + b"\n" and len(key.passphrase) == 64
    assert mode(path) == 0o600 and not list(tmp_path.glob(".backup_key.new-*"))
