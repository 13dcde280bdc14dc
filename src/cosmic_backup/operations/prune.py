"""`prune`, and the retention run after every successful backup: plan, then delete."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cosmic_backup.operations.context import Runtime
from cosmic_backup.operations.retention import Policy, RetentionPlan, old_log_files, plan_retention


@dataclass
class PruneResult:
    component: str
    plan: RetentionPlan
    removed: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "removed": self.removed,
            "decisions": [d.to_dict() for d in self.plan.decisions],
        }


def prune(
    rt: Runtime, components: list[str], policy: Policy, *, dry_run: bool
) -> list[PruneResult]:
    """Apply `policy` to each component (nothing is deleted with `dry_run`), and to the logs."""
    results = []
    with rt.catalog.lock("prune", wait=rt.wait):
        for component in components:
            plan = plan_retention(rt.catalog.entries(component), policy, rt.clock.now())
            removed = []
            for entry in plan.remove:
                if not dry_run:
                    rt.catalog.delete_backup(entry)
                    rt.log.info("retention removed %s (older than %d days)", entry.id, policy.days)
                removed.append(entry.id)
            results.append(PruneResult(component, plan, removed))
        if not dry_run:
            prune_logs(rt, policy.days)
    return results


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
