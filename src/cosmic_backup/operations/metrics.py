"""Prometheus textfile metrics per component, for node_exporter's textfile collector.

Computed from the catalog, so they describe every backup, not just this run's; written
to a temporary file in the same folder and renamed, so the collector never reads half a
file.
"""

from __future__ import annotations

from pathlib import Path

from cosmic_backup.catalog import Entry, in_order
from cosmic_backup.clock import parse_iso
from cosmic_backup.components import COMPONENT_NAMES
from cosmic_backup.operations.context import Runtime
from cosmic_backup.operations.offsite import read_pending
from cosmic_backup.operations.status import StoreStatus, store_status
from cosmic_backup.states import Trust
from cosmic_backup.storage.local import replace_file

METRICS = (
    ("cosmic_backup_last_success_timestamp_seconds", "Unix time the last good backup finished."),
    ("cosmic_backup_last_duration_seconds", "Duration of the last backup attempt."),
    ("cosmic_backup_last_size_bytes", "Stored size of the last good backup."),
    ("cosmic_backup_last_status", "1 when the last backup attempt succeeded, 0 when it failed."),
    ("cosmic_backup_backups", "Number of backups kept (including failure records)."),
    (
        "cosmic_backup_last_restore_test_timestamp_seconds",
        "Unix time of the last passing restore test (verify --restore-test).",
    ),
    (
        "cosmic_backup_last_restore_test_status",
        "1 when the last restore test passed, 0 when it failed.",
    ),
    (
        "cosmic_backup_offsite_missing",
        "Backups whose upload off-site failed and is not completed yet (with BACKUP_REMOTE).",
    ),
)


# The chunk store's gauges: one store per root, so no component label.
STORE_METRICS = (
    ("cosmic_backup_store_size_bytes", "Bytes the chunk store keeps (packs, index, lists)."),
    (
        "cosmic_backup_store_dedup_ratio",
        "The chunked backups' payload bytes, summed, over the chunk store's bytes.",
    ),
    ("cosmic_backup_last_prune_freed_bytes", "Bytes the last prune freed."),
    ("cosmic_backup_last_prune_timestamp_seconds", "Unix time of the last prune."),
)


def store_values(store: StoreStatus | None) -> dict[str, float]:
    if store is None:
        return {}
    values = {"cosmic_backup_store_size_bytes": float(store.store_bytes)}
    if store.dedup_ratio is not None:
        values["cosmic_backup_store_dedup_ratio"] = store.dedup_ratio
    if store.last_prune:
        values["cosmic_backup_last_prune_freed_bytes"] = float(store.last_prune["freed_bytes"])
        values["cosmic_backup_last_prune_timestamp_seconds"] = parse_iso(
            store.last_prune["at"]
        ).timestamp()
    return values


def component_values(entries: list[Entry]) -> dict[str, float]:
    """The gauges of one component; pre-restore copies are not attempts of the schedule."""
    ordered = in_order(entries)
    attempts = [e for e in ordered if not e.manifest.is_pre_restore]
    good = [e for e in attempts if e.manifest.ok and e.trust != Trust.TAMPERED]
    own = [e for e in entries if not e.manifest.is_other_target]  # not --into copies
    values: dict[str, float] = {"cosmic_backup_backups": float(len(own))}
    if good:
        last_good = good[-1].manifest
        values["cosmic_backup_last_success_timestamp_seconds"] = parse_iso(
            last_good.finished_at
        ).timestamp()
        values["cosmic_backup_last_size_bytes"] = float(last_good.stored_size or 0)
    if attempts:
        last = attempts[-1].manifest
        values["cosmic_backup_last_duration_seconds"] = (
            parse_iso(last.finished_at) - parse_iso(last.started_at)
        ).total_seconds()
        values["cosmic_backup_last_status"] = 1.0 if last.ok else 0.0
    return values | restore_test_values(entries)


def restore_test_values(entries: list[Entry]) -> dict[str, float]:
    """The gauges of the component's restore tests, from the manifests that record them."""
    tests = [e.manifest.restore_test for e in entries if e.manifest.restore_test]
    passed = [e.manifest.restore_tested_at for e in entries if e.manifest.restore_tested_at]
    values: dict[str, float] = {}
    if passed:
        values["cosmic_backup_last_restore_test_timestamp_seconds"] = max(
            parse_iso(at).timestamp() for at in passed
        )
    if tests:
        last = max(tests, key=lambda test: str(test.get("at")))
        values["cosmic_backup_last_restore_test_status"] = 1.0 if last.get("ok") else 0.0
    return values


def render(
    per_component: dict[str, dict[str, float]], store: dict[str, float] | None = None
) -> str:
    lines = []
    for name, help_text in METRICS:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        for component, values in per_component.items():
            if name in values:
                lines.append(f'{name}{{component="{component}"}} {values[name]:.3f}')
    for name, help_text in STORE_METRICS:
        if store and name in store:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {store[name]:.3f}")
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` in one step; the temporary name ends in .tmp, which the collector skips.

    Mode 0644: the collector runs as another user, and metrics hold no secret.
    """
    replace_file(path, text.encode(), mode=0o644)


def write_metrics_file(rt: Runtime) -> None:
    """Rewrite BACKUP_METRICS_FILE from the catalog, after a backup or a restore test; a
    file that cannot be written is logged, never fatal."""
    path = rt.settings.path("metrics_file")
    values = {name: component_values(rt.catalog.entries(name)) for name in COMPONENT_NAMES}
    if rt.settings.remote:
        pending = read_pending(rt.catalog.root).values()
        for name in COMPONENT_NAMES:
            missing = sum(1 for item in pending if item.get("component") == name)
            values[name]["cosmic_backup_offsite_missing"] = float(missing)
    try:
        write_atomically(path, render(values, store_values(store_status(rt))))
    except OSError as exc:
        rt.log.warning("the metrics file %s could not be written: %s", path, exc.strerror)
