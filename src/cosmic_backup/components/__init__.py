"""What is backed up: the database, the files, the configuration."""

from __future__ import annotations

import logging

from cosmic_backup.components.base import Component, Source
from cosmic_backup.errors import UsageError
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.settings import Settings

COMPONENT_NAMES = ("database", "files", "config")


def create_component(name: str, settings: Settings, log: logging.Logger) -> Component:
    """The component called `name`; imported on demand so each pulls in only its own needs."""
    if name == "config":
        from cosmic_backup.components.config import ConfigComponent

        return ConfigComponent(settings, log)
    if name == "files":
        from cosmic_backup.components.files import FilesComponent

        return FilesComponent(settings, log)
    if name == "database":
        from cosmic_backup.components.database import DatabaseComponent

        return DatabaseComponent(settings, log)
    raise UsageError(f"'{name}' is not a component; use one of: all, {', '.join(COMPONENT_NAMES)}.")


def source_of(manifest: Manifest) -> Source:
    """The typed record of what `manifest`'s backup holds, read as its component wrote it."""
    if manifest.component == "config":
        from cosmic_backup.components.config import ConfigSource

        return ConfigSource.of(manifest)
    if manifest.component == "files":
        from cosmic_backup.components.files import FilesSource

        return FilesSource.of(manifest)
    if manifest.component == "database":
        from cosmic_backup.components.database.source import DatabaseSource

        return DatabaseSource.of(manifest)
    return Source.of(manifest)
