"""Restore a backup: select it, prove it intact, confirm, take a safety copy, then restore.

The order is the safety argument: nothing is touched until the key is the right one and
the artifact's MAC checks out; nothing live is overwritten before a pre-restore backup
of it exists (unless the operator insists).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cosmic_backup.components import create_component
from cosmic_backup.components.base import Component, RestorePlan, RestoreReport, RestoreRequest
from cosmic_backup.errors import CosmicError, OperationFailed
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.format.pipeline import CHUNK_SIZE, UnsealingReader
from cosmic_backup.operations.artifacts import trusted_key
from cosmic_backup.operations.backup import backup_component
from cosmic_backup.operations.context import Runtime
from cosmic_backup.operations.offsite import open_intact, select_anywhere
from cosmic_backup.operations.store import PayloadReader


@dataclass
class RestorePreview:
    """What the operator confirms: which backup, where it goes, what to know."""

    manifest: Manifest
    plan: RestorePlan
    safety_backup: bool


@dataclass
class RestoreOutcome:
    manifest: Manifest
    plan: RestorePlan
    report: RestoreReport
    safety: Manifest | None
    duration: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "restored": self.manifest.id,
            "component": self.manifest.component,
            "mode": self.manifest.mode,
            "target": self.plan.target_description,
            "pre_restore_backup": self.safety.id if self.safety else None,
            "duration_seconds": round(self.duration, 3),
            "report": self.report.lines,
            "details": self.report.details,
        }


Confirm = Callable[[RestorePreview], bool]


def restore_component(
    rt: Runtime, name: str, selector: str, request: RestoreRequest, confirm: Confirm
) -> RestoreOutcome:
    component = create_component(name, rt.settings, rt.log)
    component.say = rt.say  # what it waits for, while it waits
    began = time.monotonic()
    with rt.catalog.lock(f"restore {name} {selector}", wait=rt.wait):
        rt.catalog.remove_leftovers()
        located = select_anywhere(rt, name, selector)  # off-site when the local copy is gone
        entry = located.entry
        manifest = entry.manifest
        key = trusted_key(rt, entry)
        rt.log.info("restore of %s requested (%s, %s)", manifest.id, selector, located.where)
        with open_intact(rt, located, key) as reader:  # the off-site copy if this one is bad
            plan = component.plan_restore(manifest, request)
            wants_safety = plan.safety_backup is not None and request.safety_backup
            if not confirm(RestorePreview(manifest, plan, wants_safety)):
                raise OperationFailed("Nothing was restored: the restore was not confirmed.")
            if wants_safety:
                component.before_safety_backup(plan)  # what is written after it is counted
            safety = _safety_backup(rt, name, plan) if wants_safety else None
            if plan.safety_backup is not None and not request.safety_backup:
                rt.log.warning(
                    "restore of %s without a pre-restore backup (--no-safety-backup)", manifest.id
                )
            report = _consume(rt, component, reader, manifest, plan)
    rt.log.info("restore of %s done: %s", manifest.id, "; ".join(report.lines))
    return RestoreOutcome(manifest, plan, report, safety, time.monotonic() - began)


def _safety_backup(rt: Runtime, name: str, plan: RestorePlan) -> Manifest:
    assert plan.safety_backup is not None
    rt.say(f"Taking a pre-restore backup of {plan.target_description} first...")
    try:
        safety = backup_component(rt, name, plan.safety_backup)
    except CosmicError as exc:
        raise OperationFailed(
            f"The pre-restore backup failed ({exc.message.rstrip('.')}); nothing was restored. "
            "Fix the cause, or pass --no-safety-backup to restore without one."
        ) from exc
    rt.say(f"Pre-restore backup {safety.id} taken.")
    return safety


def _consume(
    rt: Runtime,
    component: Component,
    reader: UnsealingReader | PayloadReader,
    manifest: Manifest,
    plan: RestorePlan,
) -> RestoreReport:
    with rt.progress(f"restoring {manifest.id}", manifest.plaintext_size) as advance:
        reader.on_progress = advance
        payload = io.BufferedReader(reader, CHUNK_SIZE)
        return component.consume(payload, manifest, plan)  # type: ignore[arg-type]
