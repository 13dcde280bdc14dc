"""A catalog with a history, for the HTML report: signed manifests written the way the
backup operation writes them, dated over the past weeks (no backup is really taken).

It holds what the report must show: daily database backups with rows and durations, one
failed night, a restore test, weekly files backups whose newest never reached off-site,
and a configuration whose latest backup failed. `benchmarks/report_screenshot.py` makes
the README's screenshot from the same catalog.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cosmic_backup.clock import iso
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.operations.context import Runtime
from cosmic_backup.operations.offsite import _mark_pending
from cosmic_backup.states import Outcome

UPLOAD_ERROR = "the upload failed: the store answered 503 Service Unavailable."
CONFIG_ERROR = "The .env file could not be read: Permission denied; check its owner."
DB_ERROR = "pg_dump failed: connection to server at db.internal refused; is it running?"


@dataclass
class Built:
    """What was written, for the test to compare the page with."""

    ids: list[str] = field(default_factory=list)  # every backup, oldest first
    failed: list[str] = field(default_factory=list)
    restore_tested: str = ""
    offsite_missing: str = ""
    biggest_tables: list[tuple[str, int]] = field(default_factory=list)


def build_history(rt: Runtime, now: datetime, database_days: int = 30) -> Built:
    key = rt.keys.current(create=True).key
    built = Built()

    def add(component: str, started: datetime, **fields: object) -> Manifest:
        ok = fields.pop("ok", True)
        backup_id = rt.catalog.new_id(component, started)
        duration = float(fields.pop("duration", 42.0))  # type: ignore[arg-type]
        manifest = Manifest(
            backup_id,
            component,
            Outcome.OK if ok else Outcome.FAILED,
            "full" if ok else "?",
            ["scheduled"],
            iso(started),
            iso(started + timedelta(seconds=duration)),
            "0.1.0",
            artifact=f"{backup_id}.x.gz.enc" if ok else None,
            key_fingerprint=key.fingerprint,
            duration_seconds=duration,
            **fields,  # type: ignore[arg-type]
        )
        rt.catalog.write_manifest(manifest, key)
        built.ids.append(backup_id)
        if not ok:
            built.failed.append(backup_id)
        return manifest

    rt.catalog.ensure_layout()
    for day in range(database_days, -1, -1):
        started = now - timedelta(days=day, hours=1)
        if day == 10:
            add("database", started, ok=False, duration=3.0, error=DB_ERROR)
            continue
        grown = database_days - day
        rows = {
            "public.orders": 10_000 + 300 * grown,
            "public.order_items": 30_000 + 900 * grown,
            "public.customers": 2_000 + 20 * grown,
            "public.products": 500,
            "public.audit_log": 50_000 + 2_000 * grown,
            "public.settings": 12,
        }
        size = 3_000_000 + 90_000 * grown
        manifest = add(
            "database",
            started,
            stored_size=size,
            plaintext_size=size * 4,
            duration=60.0 + 2 * grown,
            source={"database": "shop", "row_counts": rows, "tables": sorted(rows)},
        )
        if day == 3:
            manifest.restore_test = {"at": iso(started + timedelta(hours=4)), "ok": True}
            manifest.restore_tested_at = manifest.restore_test["at"]
            rt.catalog.write_manifest(manifest, key)
            built.restore_tested = manifest.id
    built.biggest_tables = sorted(rows.items(), key=lambda item: -item[1])[:5]
    for week in range(4, -1, -1):
        manifest = add(
            "files",
            now - timedelta(days=7 * week, hours=2),
            stored_size=40_000_000 + 1_000_000 * (4 - week),
            plaintext_size=41_000_000 + 1_000_000 * (4 - week),
            source={"files": 1_200 + 35 * (4 - week), "bytes": 41_000_000},
        )
    _mark_pending(rt, manifest, UPLOAD_ERROR)
    built.offsite_missing = manifest.id
    add("config", now - timedelta(days=20), stored_size=2_000, plaintext_size=9_000)
    add("config", now - timedelta(days=2), ok=False, duration=0.5, error=CONFIG_ERROR)
    return built
