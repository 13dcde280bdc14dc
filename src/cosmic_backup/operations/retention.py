"""Retention: which backups to keep and which to remove, as a pure plan, then applying it.

`plan_retention` is a pure function of the backups, the policy and the time, so it is
tested directly (like borg's prune rules) and `prune --dry-run` prints exactly what a
real run would do. A backup kept by any rule stays; every kept backup says why.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from cosmic_backup.catalog import Entry, in_order
from cosmic_backup.settings import Settings
from cosmic_backup.states import Trust

RULE_NEWEST_GOOD = "newest good backup"
RULE_LATEST_FAILED = "latest backup failed: nothing is removed"
RULE_UNTRUSTED = "manifest not verified: never removed automatically"
RULE_LAST = "keep_last"
RULE_DAILY = "keep_daily"
RULE_WEEKLY = "keep_weekly"
RULE_MONTHLY = "keep_monthly"
LOG_NAME = re.compile(r"^cosmic-backup-(\d{4}-\d{2}-\d{2})\.log$")


@dataclass(frozen=True)
class Policy:
    days: int
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            settings.retention_days,
            settings.keep_last,
            settings.keep_daily,
            settings.keep_weekly,
            settings.keep_monthly,
        )


@dataclass
class Decision:
    entry: Entry
    reasons: list[str] = field(default_factory=list)  # empty: removed

    @property
    def keep(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        manifest = self.entry.manifest
        return {
            "id": manifest.id,
            "started_at": manifest.started_at,
            "status": manifest.status,
            "tags": manifest.tags,
            "keep": self.keep,
            "reasons": self.reasons,
        }


@dataclass
class RetentionPlan:
    decisions: list[Decision]

    @property
    def keep(self) -> list[Entry]:
        return [d.entry for d in self.decisions if d.keep]

    @property
    def remove(self) -> list[Entry]:
        return [d.entry for d in self.decisions if not d.keep]


def _newest_per(good: list[Entry], period: Callable[[Entry], Hashable], count: int) -> set[str]:
    """Ids of the newest backup in each of the `count` most recent periods that have one."""
    chosen: dict[Hashable, Entry] = {}
    for entry in reversed(in_order(good)):
        key = period(entry)
        if key not in chosen:
            if len(chosen) == count:
                break
            chosen[key] = entry
    return {entry.id for entry in chosen.values()}


def _day(entry: Entry) -> date:
    return entry.local_day


def _week(entry: Entry) -> tuple[int, int]:
    year, week, _ = entry.local_day.isocalendar()
    return year, week


def _month(entry: Entry) -> tuple[int, int]:
    return entry.local_day.year, entry.local_day.month


def plan_retention(entries: list[Entry], policy: Policy, now: datetime) -> RetentionPlan:
    """Decide, for the backups of ONE component, which stay and why."""
    ordered = in_order(entries)
    decisions = [Decision(entry) for entry in ordered]
    if not ordered:
        return RetentionPlan(decisions)
    if _latest_failed(ordered):
        for decision in decisions:
            decision.reasons.append(RULE_LATEST_FAILED)
        return RetentionPlan(decisions)
    # Only a backup whose manifest checks out can be restored, so only such a backup may
    # stand for "the newest good one" or fill a daily/weekly/monthly slot; the others are
    # kept anyway as untrusted.
    good = [e for e in ordered if e.manifest.ok and e.trust == Trust.VERIFIED]
    regular = [e for e in good if not e.manifest.is_pre_restore]
    newest_good = (regular or good)[-1].id if good else None
    rules: list[tuple[str, set[str]]] = [
        (RULE_LAST, {e.id for e in good[-policy.keep_last :]} if policy.keep_last else set()),
        (RULE_DAILY, _newest_per(good, _day, policy.keep_daily) if policy.keep_daily else set()),
        (
            RULE_WEEKLY,
            _newest_per(good, _week, policy.keep_weekly) if policy.keep_weekly else set(),
        ),
        (
            RULE_MONTHLY,
            _newest_per(good, _month, policy.keep_monthly) if policy.keep_monthly else set(),
        ),
    ]
    horizon = now - timedelta(days=policy.days)
    for decision in decisions:
        entry = decision.entry
        if entry.trust in (Trust.TAMPERED, Trust.UNVERIFIED):
            decision.reasons.append(RULE_UNTRUSTED)
        if entry.id == newest_good:
            decision.reasons.append(RULE_NEWEST_GOOD)
        if entry.started >= horizon:
            decision.reasons.append(f"within {policy.days} days")
        decision.reasons += [name for name, ids in rules if entry.id in ids]
    return RetentionPlan(decisions)


def _latest_failed(ordered: list[Entry]) -> bool:
    """The latest attempt failed: the newest backup, or the newest regular one.

    A pre-restore copy taken after a failed scheduled backup must not hide that failure
    (`status` still says FAILING), so both are looked at.
    """
    regular = [e for e in ordered if not e.manifest.is_pre_restore]
    return not ordered[-1].manifest.ok or bool(regular and not regular[-1].manifest.ok)


def old_log_files(log_dir: Path, days: int, today: date) -> list[Path]:
    """Daily log files older than `days` days (never today's)."""
    if not log_dir.is_dir():
        return []
    old = []
    for path in sorted(log_dir.iterdir()):
        match = LOG_NAME.match(path.name)
        if match and (today - date.fromisoformat(match.group(1))).days > days:
            old.append(path)
    return old
