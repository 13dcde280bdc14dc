"""`prune`, and the retention run after every successful backup: plan, then delete."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from cosmic_backup.catalog import Entry, StoreCatalog
from cosmic_backup.chunkstore.figures import LastPrune, read_last_prune, record_last_prune
from cosmic_backup.chunkstore.keys import store_exists
from cosmic_backup.chunkstore.layout import StoreLayout
from cosmic_backup.chunkstore.prune import GRACE, SweepResult, sweep_if_store
from cosmic_backup.clock import iso, parse_iso
from cosmic_backup.errors import CosmicError
from cosmic_backup.operations.context import Runtime
from cosmic_backup.operations.offsite import (
    claim_folder,
    clean_offsite_leftovers,
    pending_components,
    remote_catalog,
)
from cosmic_backup.operations.retention import Policy, RetentionPlan, old_log_files, plan_retention


@dataclass
class PruneResult:
    component: str
    plan: RetentionPlan
    removed: list[str]
    where: str = "local"  # or "remote": the off-site copies, under the same rules
    note: str = ""  # why nothing was removed there, when that is the case

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "where": self.where,
            "removed": self.removed,
            "note": self.note,
            "decisions": [d.to_dict() for d in self.plan.decisions],
        }


@dataclass
class PruneReport:
    """Every component's retention, the chunk store's sweep, and the bytes either frees
    (would free, with `dry_run`)."""

    dry_run: bool
    results: list[PruneResult] = field(default_factory=list)
    retention_freed_bytes: int = 0  # local artifacts and chunk lists of removed backups
    sweep: SweepResult | None = None  # None: a root without a chunk store

    @property
    def freed_bytes(self) -> int:
        return self.retention_freed_bytes + (self.sweep.freed_bytes if self.sweep else 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "freed_bytes": self.freed_bytes,
            "retention_freed_bytes": self.retention_freed_bytes,
            "chunk_store": self.sweep.to_dict() if self.sweep else None,
        }


def removed_bytes(entry: Entry) -> int:
    """The local bytes retention frees with a backup: its artifact, or its chunk list
    (a chunked backup's chunks are the sweep's to free)."""
    manifest = entry.manifest
    if manifest.chunk_list:
        return int(manifest.chunk_list.get("stored_size") or 0)
    return int(manifest.stored_size or 0) if manifest.artifact else 0


def prune(
    rt: Runtime,
    components: list[str],
    policy: Policy,
    *,
    dry_run: bool,
    sweep_always: bool = True,
) -> PruneReport:
    """Apply `policy` to each component (nothing is deleted with `dry_run`), and to the logs.

    Without `sweep_always` (the retention after a backup), the chunk store is swept only
    when a backup was retired or the last sweep is older than the grace period: with
    nothing retired, only killed runs' leftovers can be freed, and those wait out the
    grace period anyway, while the mark reads every kept backup's chunk list (14 s at
    100,000 files)."""
    report = PruneReport(dry_run)
    with rt.catalog.lock("prune", wait=rt.wait):
        for component in components:
            plan = plan_retention(rt.catalog.entries(component), policy, rt.clock.now())
            removed = []
            for entry in plan.remove:
                if not dry_run:
                    rt.catalog.delete_backup(entry)
                    rt.log.info("retention removed %s (older than %d days)", entry.id, policy.days)
                removed.append(entry.id)
                report.retention_freed_bytes += removed_bytes(entry)
            report.results.append(PruneResult(component, plan, removed))
        report.results.extend(_prune_offsite(rt, components, policy, dry_run=dry_run))
        if not dry_run:
            prune_logs(rt, policy.days)
        if sweep_always or dry_run or _sweep_due(rt, report.results):
            report.sweep = _sweep_chunk_store(rt, report.results, dry_run=dry_run)
        if not dry_run and report.sweep is not None:
            _record(rt, report)
    return report


def _retired(results: list[PruneResult]) -> list[str]:
    return [r_id for r in results if r.where == "local" for r_id in r.removed]


def _sweep_due(rt: Runtime, results: list[PruneResult]) -> bool:
    """Whether the retention after a backup sweeps: a backup was retired, or no sweep
    is on record within the grace period (a record from the future counts as none)."""
    if _retired(results):
        return True
    last = read_last_prune(StoreLayout(rt.catalog.root))
    if last is None:
        return True
    try:
        age = rt.clock.now() - parse_iso(last.at)
    except ValueError:
        return True
    if timedelta(0) <= age < GRACE:
        rt.log.info("retention: no backup retired, the store was swept at %s: no sweep", last.at)
        return False
    return True


def _sweep_chunk_store(
    rt: Runtime, results: list[PruneResult], *, dry_run: bool
) -> SweepResult | None:
    """Free the chunks no kept backup uses (nothing happens for a root without a store).
    A dry run counts the backups the plan would remove as gone."""
    if not store_exists(StoreLayout(rt.catalog.root)):
        return None  # checked before the key, so a root without a store runs no key command
    key = rt.keys.current_if_any()
    if key is None:
        return None
    retired = _retired(results)
    sweep = sweep_if_store(
        rt.catalog.root,
        key,
        dry_run=dry_run,
        now=rt.clock.now(),
        retired=retired,
        progress=rt.progress,
    )
    if sweep is not None:
        rt.log.info("retention %s", sweep.describe())
    return sweep


def _record(rt: Runtime, report: PruneReport) -> None:
    """What this prune freed, for `status` and the metrics; a record that cannot be
    written only loses that figure."""
    sweep = report.sweep
    assert sweep is not None
    last = LastPrune(
        at=iso(rt.clock.now()),
        freed_bytes=report.freed_bytes,
        swept_bytes=sweep.freed_bytes,
        deleted_packs=len(sweep.deleted_packs),
        repacked_packs=len(sweep.repacked_packs),
    )
    try:
        record_last_prune(StoreLayout(rt.catalog.root), last)
    except OSError as exc:
        rt.log.warning("the record of this prune could not be written: %s", exc.strerror)


def _prune_offsite(
    rt: Runtime, components: list[str], policy: Policy, *, dry_run: bool
) -> list[PruneResult]:
    """The same rules off-site, on this host's prefix only; nothing is removed there
    while an upload of that component is failing (the remote may hold the only copy
    of what the local retention already let go)."""
    try:
        remote = remote_catalog(rt)
    except CosmicError as exc:  # a malformed BACKUP_REMOTE, boto3 missing: local pruning stands
        rt.log.warning("retention off-site skipped: %s", exc.message)
        return [
            PruneResult(c, RetentionPlan([]), [], "remote", f"not pruned: {exc.message}")
            for c in components
        ]
    if remote is None:
        return []
    try:
        if not dry_run:
            claim_folder(rt, remote)  # never prune another root's backups
    except CosmicError as exc:
        rt.log.warning("retention off-site skipped: %s", exc.message)
        return [
            PruneResult(c, RetentionPlan([]), [], "remote", f"not pruned: {exc.message}")
            for c in components
        ]
    started = rt.clock.now()
    failing = pending_components(rt.catalog.root)
    results = []
    for component in components:
        try:
            entries = [e for e in remote.entries(component) if _of_this_folder(remote, e)]
        except CosmicError as exc:  # the local retention stands; the remote waits
            note = f"off-site copies not pruned: {exc.message}"
            rt.log.warning("retention off-site for %s: %s", component, note)
            results.append(PruneResult(component, RetentionPlan([]), [], "remote", note))
            continue
        plan = _unless_locked(rt, remote, plan_retention(entries, policy, rt.clock.now()))
        if component in failing and plan.remove:
            note = (
                "nothing removed off-site while its uploads are failing; run 'cosmic-backup sync'"
            )
            rt.log.warning("retention off-site for %s: %s", component, note)
            results.append(PruneResult(component, _kept(plan, note), [], "remote", note))
            continue
        removed = []
        for entry in plan.remove:
            if not dry_run:
                remote.delete_backup(entry)
                rt.log.info("retention removed %s off-site", entry.id)
            removed.append(entry.id)
        results.append(PruneResult(component, plan, removed, "remote"))
    if not dry_run:
        try:  # what a prune or an upload killed half-way left there
            clean_offsite_leftovers(rt, remote, components, started)
        except CosmicError as exc:
            rt.log.warning("off-site leftovers not cleaned: %s", exc.message)
    return results


def _of_this_folder(remote: StoreCatalog, entry: Entry) -> bool:
    """Written by a root that owns (or owned) this folder, or by a version before roots:
    another root's backups are never this retention's to remove."""
    root = entry.manifest.root_id
    return root is None or not remote.roots or root in remote.roots


def _unless_locked(rt: Runtime, remote: StoreCatalog, plan: RetentionPlan) -> RetentionPlan:
    """Keep what Object Lock still protects (BACKUP_REMOTE_LOCK_DAYS): deleting it would
    only hide it behind a delete marker, and the plan should say why it stays."""
    locked_until = getattr(remote.store, "locked_until", None)
    if not rt.settings.remote_lock_days or locked_until is None:
        return plan
    now = rt.clock.now()
    for decision in plan.decisions:
        if decision.keep:
            continue
        manifest = decision.entry.manifest
        until = locked_until(remote.manifest_name(manifest.component, manifest.id))
        if until is not None and until > now:
            decision.reasons.append(f"locked off-site until {until.astimezone():%Y-%m-%d %H:%M}")
            rt.log.info("retention off-site keeps %s: locked until %s", manifest.id, until)
    return plan


def _kept(plan: RetentionPlan, reason: str) -> RetentionPlan:
    for decision in plan.decisions:
        if not decision.keep:
            decision.reasons.append(reason)
    return plan


def prune_logs(rt: Runtime, days: int) -> list[str]:
    today = rt.clock.now().astimezone().date()
    removed = []
    for path in old_log_files(rt.settings.path("log_dir"), days, today):
        if path != rt.log_file:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    if removed:
        rt.log.info("retention removed old log files: %s", ", ".join(removed))
    return removed
