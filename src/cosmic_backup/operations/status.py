"""`status`: per component, the last good backup, the last failure, and its health.

Health is OK, OVERDUE (no good backup within the expected interval plus grace), FAILING
(the latest attempt failed), NEVER (no good backup at all), NOT CONFIGURED (nothing to
back up, and never backed up: not counted as unhealthy) or, for files, RESTORE INTERRUPTED
(a files restore was killed and its folders are not settled yet), or UNTESTED (with
BACKUP_RESTORE_TEST_INTERVAL_DAYS set: no passing `verify --restore-test` within it).
Each component also shows its last restore test. The chunk store, shared by the
components, has its own figures: its size, its deduplication ratio and the last prune.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from cosmic_backup.catalog import Entry, in_order
from cosmic_backup.chunkstore.figures import dedup_ratio, read_last_prune, store_bytes
from cosmic_backup.chunkstore.keys import store_exists
from cosmic_backup.chunkstore.layout import StoreLayout
from cosmic_backup.clock import parse_iso
from cosmic_backup.components import COMPONENT_NAMES, create_component
from cosmic_backup.components.files import interrupted_restore
from cosmic_backup.errors import ExitCode, NotConfigured
from cosmic_backup.operations.context import Runtime
from cosmic_backup.states import Health, Trust


@dataclass
class ComponentStatus:
    component: str
    configured: bool
    health: Health
    expected_interval_seconds: int
    backups: int
    total_size: int
    last_good: dict[str, Any] | None
    last_failure: dict[str, Any] | None
    message: str
    last_restore_test: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def component_status(
    entries: list[Entry],
    component: str,
    now: datetime,
    *,
    interval: timedelta,
    grace: timedelta,
    configured: bool,
) -> ComponentStatus:
    # Copies of other databases (a pre-restore backup before `restore --into`) are not
    # this app's backups: listed, never counted.
    own = [e for e in entries if not e.manifest.is_other_target]
    ordered = in_order(own)
    attempts = [e for e in ordered if not e.manifest.is_pre_restore]
    good = [e for e in attempts if e.manifest.ok and e.trust != Trust.TAMPERED]
    failures = [e for e in attempts if not e.manifest.ok]
    last_good = good[-1] if good else None
    last_failure = failures[-1] if failures else None
    health, message = _health(attempts, last_good, now, interval + grace, configured)
    return ComponentStatus(
        component=component,
        configured=configured,
        health=health,
        expected_interval_seconds=int(interval.total_seconds()),
        backups=len(ordered),
        total_size=sum(e.manifest.stored_size or 0 for e in ordered),
        last_good=_good_summary(last_good, now),
        last_failure=_failure_summary(last_failure),
        message=message,
    )


def _health(
    attempts: list[Entry],
    last_good: Entry | None,
    now: datetime,
    allowed: timedelta,
    configured: bool,
) -> tuple[str, str]:
    if not attempts and not configured:
        return Health.NOT_CONFIGURED, "nothing to back up is configured"
    if attempts and not attempts[-1].manifest.ok:
        return Health.FAILING, f"the latest backup failed: {attempts[-1].manifest.error}"
    if last_good is None:
        return Health.NEVER, "there is no good backup yet"
    age = now - parse_iso(last_good.manifest.finished_at)
    if age > allowed:
        return (
            Health.OVERDUE,
            f"the last good backup is {human_age(age)} old (expected within {human_age(allowed)})",
        )
    return Health.OK, f"last good backup {human_age(age)} ago"


def human_age(delta: timedelta) -> str:
    """A duration as an operator reads it: minutes, hours, then days."""
    seconds = max(delta.total_seconds(), 0)
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def _good_summary(entry: Entry | None, now: datetime) -> dict[str, Any] | None:
    if entry is None:
        return None
    manifest = entry.manifest
    age = now - parse_iso(manifest.finished_at)
    return {
        "id": manifest.id,
        "finished_at": manifest.finished_at,
        "age_seconds": int(age.total_seconds()),
        "stored_size": manifest.stored_size,
        "mode": manifest.mode,
    }


def _failure_summary(entry: Entry | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {
        "id": entry.manifest.id,
        "at": entry.manifest.finished_at,
        "error": entry.manifest.error,
    }


@dataclass
class StoreStatus:
    """The chunk store's figures (docs/format.md, "The store's figures")."""

    store_bytes: int
    backups: int  # listed good chunked backups
    plaintext_bytes: int  # their payloads, summed
    dedup_ratio: float | None  # plaintext_bytes / store_bytes; None for an empty store
    last_prune: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def store_status(rt: Runtime) -> StoreStatus | None:
    """None for a root without a chunk store (single-file backups only)."""
    layout = StoreLayout(rt.catalog.root)
    if not store_exists(layout):
        return None
    chunked = [e.manifest for e in rt.catalog.entries() if e.manifest.chunked and e.manifest.ok]
    plaintext = [m.plaintext_size or 0 for m in chunked]
    stored = store_bytes(layout)
    last = read_last_prune(layout)
    return StoreStatus(
        store_bytes=stored,
        backups=len(chunked),
        plaintext_bytes=sum(plaintext),
        dedup_ratio=dedup_ratio(plaintext, stored),
        last_prune=last.to_dict() if last else None,
    )


def exit_code(statuses: list[ComponentStatus]) -> int:
    healthy = all(s.health.healthy for s in statuses)
    return int(ExitCode.OK) if healthy else int(ExitCode.UNHEALTHY)


def collect(rt: Runtime) -> list[ComponentStatus]:
    """The status of every component, from the catalog and the settings."""
    now = rt.clock.now()
    grace = timedelta(hours=rt.settings.status_grace_hours)
    statuses = []
    for name in COMPONENT_NAMES:
        interval = timedelta(days=getattr(rt.settings, f"{name}_interval_days"))
        statuses.append(
            component_status(
                rt.catalog.entries(name),
                name,
                now,
                interval=interval,
                grace=grace,
                configured=is_configured(rt, name),
            )
        )
    statuses = [_with_restore_test(rt, status, now) for status in statuses]
    statuses = [_unless_offsite_missing(rt, status) for status in statuses]
    return [_unless_restore_interrupted(rt, status) for status in statuses]


def _unless_offsite_missing(rt: Runtime, status: ComponentStatus) -> ComponentStatus:
    """A backup whose upload failed, and that `sync` has not completed: its off-site copy
    is missing, so the component is unhealthy (the local backup itself is good)."""
    if not rt.settings.remote or not status.health.healthy:
        return status
    from cosmic_backup.operations.offsite import read_pending

    missing = [
        (backup_id, item)
        for backup_id, item in sorted(read_pending(rt.catalog.root).items())
        if item.get("component") == status.component
    ]
    if missing:
        backup_id, item = missing[-1]
        status.health = Health.OFFSITE_MISSING
        status.message = (
            f"{len(missing)} backup(s) not copied off-site, the latest {backup_id}: "
            f"{item.get('error', '?')} Run 'cosmic-backup sync' once the cause is fixed"
        )
    return status


def _with_restore_test(rt: Runtime, status: ComponentStatus, now: datetime) -> ComponentStatus:
    """The last restore test of the component's backups; UNTESTED when an interval is set
    and no backup passed one within it."""
    tested = [e.manifest for e in rt.catalog.entries(status.component) if e.manifest.restore_test]
    last = max(tested, key=lambda m: str((m.restore_test or {}).get("at")), default=None)
    if last is not None and last.restore_test is not None:
        status.last_restore_test = {"id": last.id, **last.restore_test}
    interval = rt.settings.restore_test_interval_days
    if not interval or status.health != Health.OK:
        return status
    passed = [parse_iso(m.restore_tested_at) for m in tested if m.restore_tested_at]
    allowed = timedelta(days=interval)
    if not passed or now - max(passed) > allowed:
        status.health = Health.UNTESTED
        when = f"was {human_age(now - max(passed))} ago" if passed else "never happened"
        status.message = (
            f"the last passing restore test {when} (expected within {human_age(allowed)}); "
            f"run 'cosmic-backup verify --restore-test {status.component}'"
        )
    return status


def _unless_restore_interrupted(rt: Runtime, status: ComponentStatus) -> ComponentStatus:
    """A killed files restore leaves folders half-swapped: unhealthy until settled."""
    if status.component != "files" or interrupted_restore(rt.settings) is None:
        return status
    status.health = Health.RESTORE_INTERRUPTED
    status.message = (
        "a files restore was interrupted and its folders are not settled; run "
        "'cosmic-backup backup files' (or any backup, restore, prune or verify), which "
        "finishes or undoes it first"
    )
    return status


def is_configured(rt: Runtime, name: str) -> bool:
    try:
        create_component(name, rt.settings, rt.log).check_configured()
    except NotConfigured:
        return False
    return True


def alert_if_unhealthy(rt: Runtime, statuses: list[ComponentStatus]) -> None:
    """`status --alert` (the schedule's daily check): an unhealthy component, OVERDUE
    above all, is told to BACKUP_NOTIFY_URL even when no backup ran to say so."""
    unhealthy = [s for s in statuses if not s.health.healthy]
    if not unhealthy or not rt.settings.notify_url:
        return
    from cosmic_backup.operations.notify import alert_for, notify, summary

    components = [
        {"component": s.component, "status": str(s.health), "message": s.message} for s in unhealthy
    ]
    payload = summary(
        "failed", rt.run_id, str(rt.root), components, rt.relative(rt.log_file), "status check"
    )
    words = " ".join(sorted({str(s.health) for s in unhealthy}))
    lines = [f"{s.component} {s.health}: {s.message}" for s in unhealthy]
    alert = alert_for("status check", words, lines, rt.settings.report_url)
    notify(rt.settings.notify_url, payload, alert, rt.log)
