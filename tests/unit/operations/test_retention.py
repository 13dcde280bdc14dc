"""Retention as a pure function: the issue's cases, safety rules, and GFS against a model."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from cosmic_backup.catalog import Entry
from cosmic_backup.operations.retention import Policy, old_log_files, plan_retention
from cosmic_backup.states import Trust
from tests.unit.operations.helpers import NOW, entry


def ages(entries: list[Entry]) -> list[float]:
    return sorted(round((NOW - e.started).total_seconds() / 86400) for e in entries)


def test_older_than_the_retention_period_goes() -> None:
    backups = [entry(a) for a in (40, 35, 29, 1)]
    plan = plan_retention(backups, Policy(days=30), NOW)
    assert ages(plan.remove) == [35, 40]
    assert ages(plan.keep) == [1, 29]


def test_the_newest_good_backup_is_kept_whatever_its_age() -> None:
    plan = plan_retention([entry(60)], Policy(days=30), NOW)
    assert plan.remove == [] and plan.decisions[0].reasons == ["newest good backup"]
    # ...also when newer failure records exist (they are not good backups)
    plan = plan_retention(
        [entry(60), entry(50, ok=False), entry(45, ok=False), entry(1)], Policy(days=30), NOW
    )
    assert ages(plan.remove) == [45, 50, 60]


def test_nothing_goes_while_the_latest_backup_failed() -> None:
    backups = [entry(90), entry(60), entry(40, ok=False), entry(1, ok=False)]
    plan = plan_retention(backups, Policy(days=30), NOW)
    assert plan.remove == []
    assert all("latest backup failed" in d.reasons[0] for d in plan.decisions)


def test_pre_restore_copies_follow_the_same_rules() -> None:
    backups = [entry(40, tags=("pre-restore",)), entry(10, tags=("pre-restore",)), entry(5)]
    plan = plan_retention(backups, Policy(days=30), NOW)
    assert ages(plan.remove) == [40]


def test_a_pre_restore_copy_does_not_hide_a_failed_backup() -> None:
    backups = [entry(90), entry(40, ok=False), entry(39, tags=("pre-restore",))]
    plan = plan_retention(backups, Policy(days=30), NOW)
    assert plan.remove == []
    assert all(d.reasons == ["latest backup failed: nothing is removed"] for d in plan.decisions)


def test_untrusted_manifests_are_never_removed_automatically() -> None:
    backups = [entry(90, trust=Trust.TAMPERED), entry(80, trust=Trust.UNVERIFIED), entry(1)]
    plan = plan_retention(backups, Policy(days=30), NOW)
    assert plan.remove == []
    assert plan.decisions[1].reasons == ["manifest not verified: never removed automatically"]


def test_the_newest_restorable_backup_is_kept_when_newer_ones_cannot_be_verified() -> None:
    # A backup made with a key that is no longer at hand cannot be restored: it must not
    # count as "the newest good backup" and let the last restorable one go.
    backups = [entry(70), entry(60), entry(50, trust=Trust.UNVERIFIED)]
    plan = plan_retention(backups, Policy(days=30), NOW)
    assert ages(plan.remove) == [70]
    assert plan.decisions[1].reasons == ["newest good backup"]


def test_each_kept_backup_names_its_rules() -> None:
    backups = [entry(a) for a in (100, 70, 40, 2, 1)]
    plan = plan_retention(backups, Policy(days=30, keep_last=2, keep_monthly=3), NOW)
    reasons = {round((NOW - d.entry.started).days): d.reasons for d in plan.decisions}
    assert reasons[1] == ["newest good backup", "within 30 days", "keep_last", "keep_monthly"]
    assert reasons[40] == ["keep_monthly"] and reasons[70] == ["keep_monthly"]
    assert reasons[100] == []


def reference(days_old: list[int], policy: Policy) -> set[int]:
    """The simplest model of the rules, on whole days (one backup a day at noon UTC)."""

    def day(age: int) -> date:
        return (NOW - timedelta(days=age)).astimezone().date()

    newest_first = sorted(days_old)
    kept = {newest_first[0]} | {a for a in days_old if a <= policy.days}
    kept |= set(newest_first[: policy.keep_last])
    for count, key in (
        (policy.keep_daily, lambda a: day(a)),
        (policy.keep_weekly, lambda a: day(a).isocalendar()[:2]),
        (policy.keep_monthly, lambda a: (day(a).year, day(a).month)),
    ):
        periods: list[object] = []
        for age in newest_first:
            if key(age) not in periods:
                if len(periods) == count:
                    break
                periods.append(key(age))
                kept.add(age)
    return kept


@settings(max_examples=40, deadline=None)
@given(
    missing=st.sets(st.integers(1, 364), max_size=120),
    policy=st.builds(
        Policy,
        days=st.integers(1, 60),
        keep_last=st.integers(0, 10),
        keep_daily=st.integers(0, 14),
        keep_weekly=st.integers(0, 8),
        keep_monthly=st.integers(0, 12),
    ),
)
def test_gfs_on_a_year_of_daily_backups_matches_the_reference(
    missing: set[int], policy: Policy
) -> None:
    days_old = [a for a in range(365) if a not in missing]
    backups = [entry(a) for a in days_old]
    plan = plan_retention(backups, policy, NOW)
    kept = {round((NOW - e.started).total_seconds() / 86400) for e in plan.keep}
    assert kept == reference(days_old, policy)
    assert len(plan.keep) + len(plan.remove) == len(backups)


def test_old_log_files(tmp_path: Path) -> None:
    for name in ("cosmic-backup-2026-09-01.log", "cosmic-backup-2026-11-20.log", "other.log"):
        (tmp_path / name).write_text("x")
    old = old_log_files(tmp_path, 30, date(2026, 11, 24))
    assert [p.name for p in old] == ["cosmic-backup-2026-09-01.log"]


def test_gfs_on_a_year_of_daily_backups_keeps_the_expected_days() -> None:
    # Written out by hand, independently of the reference model: NOW is Tuesday 2026-11-24.
    backups = [entry(age) for age in range(365)]
    policy = Policy(days=1, keep_daily=7, keep_weekly=4, keep_monthly=12)
    kept = sorted(e.local_day.isoformat() for e in plan_retention(backups, policy, NOW).keep)
    daily = [f"2026-11-{day}" for day in range(18, 25)]  # the last 7 days (and the 1-day rule)
    weekly = ["2026-11-08", "2026-11-15", "2026-11-22"]  # Sundays; this week's is the 24th
    monthly = ["2025-12-31", "2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30"]
    monthly += ["2026-05-31", "2026-06-30", "2026-07-31", "2026-08-31", "2026-09-30"]
    monthly += ["2026-10-31"]  # and November's is the 24th
    assert kept == sorted(set(daily + weekly + monthly))
    assert len(kept) == 7 + 2 + 11
