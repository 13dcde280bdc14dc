"""Catalog entries made in memory, for the pure retention, status and metrics functions."""

from __future__ import annotations

from datetime import datetime, timedelta

from cosmic_backup.catalog import Entry
from cosmic_backup.clock import iso
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.states import Trust

NOW = datetime.fromisoformat("2026-11-24T12:00:00+00:00")


def entry(
    age_days: float,
    *,
    component: str = "database",
    ok: bool = True,
    tags: tuple[str, ...] = ("scheduled",),
    now: datetime = NOW,
    size: int = 1000,
    trust: str = Trust.VERIFIED,
) -> Entry:
    started = now - timedelta(days=age_days)
    backup_id = f"{component}-{started:%Y%m%dT%H%M%S}Z"
    manifest = Manifest(
        backup_id,
        component,
        "ok" if ok else "failed",
        "full",
        list(tags),
        iso(started),
        iso(started + timedelta(minutes=2)),
        "0",
        artifact=f"{backup_id}.dump.gz.enc" if ok else None,
        stored_size=size if ok else None,
        error=None if ok else "pg_dump failed",
    )
    return Entry(manifest, trust)
