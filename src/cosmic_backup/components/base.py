"""What every component (database, files, config) provides to the pipeline.

A component produces a plain byte stream for a backup and consumes one for a restore,
and describes its source. It knows nothing of keys, encryption or storage: the
operations wrap its stream in the sealing pipeline and hand it a verified plaintext
reader.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, BinaryIO, ClassVar, Self

from cosmic_backup.format.manifest import MODE_FULL, TAG_MANUAL, Manifest
from cosmic_backup.settings import Settings


@dataclass(frozen=True)
class BackupRequest:
    """What the operator asked of one backup."""

    mode: str | None = None  # "full", "schema-only", or None for the component's default
    tags: tuple[str, ...] = (TAG_MANUAL,)
    # For a pre-restore backup: back up the restore's target (a URL or folder) instead of
    # the configured source. None means the configured source.
    source_override: str | None = None


@dataclass(frozen=True)
class Source:
    """What a backup's manifest records of its source: each component has its own typed
    record, stored as a JSON object. Never a secret.

    `of` reads it back from a manifest written by an older or newer version: a field it
    lacks takes its default, one this version does not know is ignored.
    """

    app_version: str | None = None  # the app's version or commit, for every component

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, manifest: Manifest) -> Self:
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in manifest.source.items() if key in known})

    def summary(self) -> str:
        """A few words for `list`: what was backed up."""
        return f"app version {self.app_version}" if self.app_version else ""


@dataclass
class Produced:
    """What a component tells the manifest about the stream it produced."""

    source: Source
    mode: str = MODE_FULL
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RestoreRequest:
    """What the operator asked of one restore."""

    target: str | None = None  # --into URL (database) or --target-dir DIR (files, config)
    safety_backup: bool = True  # False with --no-safety-backup
    # Database: let the schema reset drop objects outside the backup's schemas that
    # depend on them (--drop-dependents), and leave the backup's GRANTs out
    # (--no-privileges, for roles missing on the target).
    drop_dependents: bool = False
    no_privileges: bool = False
    # Database: restore with pg_restore -j N into a new database, then swap the names
    # (--jobs; None: the setting decides); keep the old one (--keep-old); end other
    # sessions on the target at the swap (--terminate-sessions).
    jobs: int | None = None
    keep_old: bool = False
    terminate_sessions: bool = False
    # Database: restore a backup of another database over this one's content, unattended
    # (--from-other-database with --yes).
    from_other_database: bool = False


@dataclass
class RestorePlan:
    """What a restore is about to do, shown before the operator confirms."""

    target_description: str
    notes: list[str] = field(default_factory=list)
    # What to back up before restoring; None when nothing live is overwritten.
    safety_backup: BackupRequest | None = None
    private: dict[str, Any] = field(default_factory=dict)  # the component's own state
    # A sentence the operator must consent to beyond --yes (a backup of another database
    # replacing this one's content); None when --yes is enough.
    consent: str | None = None


@dataclass
class RestoreReport:
    """What a restore did, for the operator (lines) and for --json (details)."""

    lines: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def _no_notice(_message: str) -> None:
    return None


class Component(ABC):
    name: ClassVar[str]
    payload: ClassVar[str]  # the plaintext's kind, in the artifact's name: "dump", "tar"
    # Cores the producer keeps busy besides our process (the database's server and
    # pg_dump): the backup seals in threads only if cores are left (compression.py).
    producer_cores: ClassVar[int] = 0

    def __init__(self, settings: Settings, log: logging.Logger) -> None:
        self.settings = settings
        self.log = log
        # Notices for the operator while the component works (stderr in the CLI); the
        # operation that runs it sets this to its runtime's `say`.
        self.say: Callable[[str], None] = _no_notice

    @abstractmethod
    def check_configured(self) -> None:
        """Raise `NotConfigured` (with its sentence) when there is nothing to back up."""

    @abstractmethod
    def produce(self, out: BinaryIO, request: BackupRequest) -> Produced:
        """Write the plain backup stream into `out` (which seals it); describe the source."""

    @abstractmethod
    def plan_restore(self, manifest: Manifest, request: RestoreRequest) -> RestorePlan:
        """Check the target (connection, folders) and say what the restore will do."""

    def before_safety_backup(self, plan: RestorePlan) -> None:  # noqa: B027 - optional
        """Called just before the pre-restore backup of `plan`'s target begins."""

    @abstractmethod
    def consume(self, payload: BinaryIO, manifest: Manifest, plan: RestorePlan) -> RestoreReport:
        """Restore from `payload`, a reader of the verified plaintext."""

    @abstractmethod
    def check_payload(self, payload: BinaryIO, manifest: Manifest) -> dict[str, Any]:
        """Read the whole plaintext and check its structure (for verify); return figures."""
