"""What never goes into a files or config archive, and what a restore never touches.

The backup folder (a files backup would otherwise hold every earlier backup, and a
restore would swap it back to an old copy of itself), the key, the keyring and the logs.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from cosmic_backup.settings import Settings

KEYRING_NAME = ".backup_keyring"


def protected_paths(settings: Settings) -> list[Path]:
    """The backup folder, key file, keyring (configured and beside the key) and logs."""
    key_file = settings.path("key_file")
    found = [
        settings.path("backup_dir"),
        key_file,
        settings.path("keyring_dir"),
        key_file.parent / KEYRING_NAME,
        settings.path("log_dir"),
    ]
    unique: list[Path] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def inside(folder: Path, paths: list[Path]) -> list[Path]:
    """Those of `paths` at or under `folder`, both with links resolved."""
    real = folder.resolve()
    return sorted(
        {path.resolve() for path in paths if path.resolve().is_relative_to(real)},
        key=lambda path: len(path.parts),
    )


def archive_places(folder: Path, name: str, paths: list[Path]) -> list[PurePosixPath]:
    """Where the protected paths under `folder` sit in an archive that stores it as `name`."""
    real = folder.resolve()
    return [PurePosixPath(name, *path.relative_to(real).parts) for path in inside(folder, paths)]


def contains_root(folder: Path, project_root: Path) -> bool:
    """Is `folder` the project root, one of its parents, or `/`?"""
    real = folder.resolve()
    return real == Path("/") or project_root.resolve().is_relative_to(real)
