"""`cosmic-backup prune`, `status` and `schedule`."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cosmic_backup.cli.common import (
    check_component,
    emit_json,
    exit_with,
    human_size,
    open_cli_runtime,
    say,
    settings_for,
    state,
    stdout,
)
from cosmic_backup.clock import parse_iso
from cosmic_backup.components import COMPONENT_NAMES
from cosmic_backup.errors import UsageError
from cosmic_backup.operations.metrics import write_metrics_file
from cosmic_backup.operations.prune import PruneReport, prune
from cosmic_backup.operations.retention import Policy
from cosmic_backup.operations.schedule import (
    crontab,
    install_systemd,
    kubernetes,
    systemd_units,
    wrappers_problem,
)
from cosmic_backup.operations.status import (
    ComponentStatus,
    StoreStatus,
    alert_if_unhealthy,
    collect,
    exit_code,
    human_age,
    store_status,
)
from cosmic_backup.states import Health


def prune_command(
    ctx: typer.Context,
    what: Annotated[
        str | None, typer.Argument(help="database, files or config (default: all).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; remove nothing.")
    ] = False,
    retention_days: Annotated[int | None, typer.Option(help="Override RETENTION_DAYS.")] = None,
    keep_last: Annotated[int | None, typer.Option(help="Always keep the N newest.")] = None,
    keep_daily: Annotated[int | None, typer.Option(help="Newest of each of N days.")] = None,
    keep_weekly: Annotated[int | None, typer.Option(help="Newest of each of N weeks.")] = None,
    keep_monthly: Annotated[int | None, typer.Option(help="Newest of each of N months.")] = None,
) -> None:
    """Remove backups older than the retention period (never the newest good one)."""
    check_component(what)
    flags = {
        "retention_days": retention_days,
        "keep_last": keep_last,
        "keep_daily": keep_daily,
        "keep_weekly": keep_weekly,
        "keep_monthly": keep_monthly,
    }
    runtime = open_cli_runtime(ctx, settings_for(ctx, **flags), opens_store=True)
    policy = Policy.from_settings(runtime.settings)
    report = prune(runtime, [what] if what else list(COMPONENT_NAMES), policy, dry_run=dry_run)
    results = report.results
    if runtime.settings.metrics_file and not dry_run:
        write_metrics_file(runtime)  # the last prune's figures
    if state(ctx).json:
        emit_json(
            {
                "dry_run": dry_run,
                "policy": dataclasses.asdict(policy),
                "components": [r.to_dict() for r in results],
                **report.to_dict(),
            }
        )
        return
    verb = "would remove" if dry_run else "removed"
    done = "would be removed" if dry_run else "removed"
    for result in results:
        where = " (off-site)" if result.where == "remote" else ""
        if result.note and not result.plan.decisions:
            stdout.print(f"{result.component}{where}: {result.note}", markup=False)
        for decision in result.plan.decisions:
            why = "; ".join(decision.reasons) if decision.keep else f"older than {policy.days} days"
            stdout.print(
                f"{'keep' if decision.keep else verb:<12} {decision.entry.id:<32} {why}{where}",
                markup=False,
            )
    total = sum(len(r.removed) for r in results)
    stdout.print(f"{total} backup(s) {done}; {_freed(report)}.", markup=False)


def _freed(report: PruneReport) -> str:
    verb = "would free" if report.dry_run else "freed"
    line = f"{verb} {human_size(report.freed_bytes)} locally"
    if report.sweep is not None:
        line += f" ({human_size(report.sweep.freed_bytes)} of it in the chunk store)"
    return line


def status(
    ctx: typer.Context,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="Print nothing when healthy (for cron mail)."),
    ] = False,
    alert: Annotated[
        bool,
        typer.Option(
            "--alert", help="When unhealthy, also notify BACKUP_NOTIFY_URL (the schedule's check)."
        ),
    ] = False,
) -> None:
    """Health of every component; exit code 8 when any configured one is not OK."""
    runtime = open_cli_runtime(ctx, settings_for(ctx))
    statuses = collect(runtime)
    code = exit_code(statuses)
    if alert:
        alert_if_unhealthy(runtime, statuses)
    store = store_status(runtime)
    if state(ctx).json:
        emit_json(
            {
                "healthy": code == 0,
                "components": [s.to_dict() for s in statuses],
                "store": store.to_dict() if store else None,
            }
        )
    elif code or not quiet:
        _print_status(statuses)
        if store is not None:
            stdout.print(_store_line(store), markup=False)
    exit_with(code)


def _store_line(store: StoreStatus) -> str:
    ratio = f"{store.dedup_ratio:.1f}x" if store.dedup_ratio else "-"
    line = (
        f"chunk store: {human_size(store.store_bytes)} for {store.backups} backup(s) of "
        f"{human_size(store.plaintext_bytes)}, deduplication ratio {ratio}"
    )
    last = store.last_prune
    if last:
        line += f"; last prune {_local_time(last['at'])} freed {human_size(last['freed_bytes'])}"
    return line


def _restore_test_cell(test: dict[str, Any] | None) -> str:
    if not test:
        return "never"
    return f"{_local_time(test.get('at'))} {'ok' if test.get('ok') else 'FAILED'}"


def _print_status(statuses: list[ComponentStatus]) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False)
    columns = ("component", "health", "last good", "age", "mode", "size", "backups", "total")
    for column in (*columns, "restore test"):
        table.add_column(column, no_wrap=True)
    for s in statuses:
        good = s.last_good or {}
        table.add_row(
            s.component,
            s.health,
            _local_time(good.get("finished_at")),
            human_age(timedelta(seconds=good["age_seconds"])) if good else "-",
            good.get("mode", "-"),
            human_size(good.get("stored_size")),
            str(s.backups),
            human_size(s.total_size),
            _restore_test_cell(s.last_restore_test),
        )
    stdout.print(table)
    for s in statuses:
        if s.health != Health.OK:
            stdout.print(f"{s.component}: {s.message}", markup=False)
        failure = s.last_failure
        if failure and s.health != Health.FAILING:  # FAILING's message already gives the reason
            stdout.print(
                f"{s.component}: last failure {_local_time(failure['at'])}: {failure['error']}",
                markup=False,
            )


def _local_time(stamp: str | None) -> str:
    return parse_iso(stamp).astimezone().strftime("%Y-%m-%d %H:%M") if stamp else "-"


def schedule(
    ctx: typer.Context,
    cron: Annotated[bool, typer.Option("--cron", help="crontab lines (the default).")] = False,
    systemd: Annotated[
        bool, typer.Option("--systemd", help="systemd services and timers.")
    ] = False,
    k8s: Annotated[bool, typer.Option("--kubernetes", help="Kubernetes CronJobs.")] = False,
    install: Annotated[
        Path | None, typer.Option(help="With --systemd: write the units here.")
    ] = None,
    image: Annotated[str, typer.Option(help="With --kubernetes: the app's image.")] = (
        "registry.example.com/your-app:latest"
    ),
    workdir: Annotated[
        str, typer.Option(help="With --kubernetes: the project root inside the image.")
    ] = "/app",
    report: Annotated[
        str | None,
        typer.Option(help="Also write the HTML report to this file daily (report --html)."),
    ] = None,
) -> None:
    """Print entries for the recommended schedule: database daily, files weekly, config monthly."""
    if sum((cron, systemd, k8s)) > 1:
        raise UsageError("Choose one of --cron, --systemd and --kubernetes.")
    if install is not None and not systemd:
        raise UsageError("--install goes with --systemd.")
    root = state(ctx).root
    problem = None if k8s else wrappers_problem(root)  # a pod runs the image's own install
    if problem:
        say(f"warning: {problem}")
    if systemd and install is not None:
        for path in install_systemd(root, install, report):
            stdout.print(f"wrote {path}", markup=False)
        stdout.print(
            "Then: systemctl daemon-reload && systemctl enable --now "
            "cosmic-backup-{database,files,config,restore-test,status"
            + (",report" if report else "")
            + "}.timer",
            markup=False,
        )
    elif systemd:
        for name, text in systemd_units(root, report).items():
            print(f"# --- {name}\n{text}")
    elif k8s:
        print(kubernetes(workdir, image, report), end="")
    else:
        print(crontab(root, report), end="")


def register(app: typer.Typer) -> None:
    app.command("prune")(prune_command)
    app.command()(status)
    app.command()(schedule)
