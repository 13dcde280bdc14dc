"""`cosmic-backup verify [COMPONENT [SELECTOR]]`, and `verify --restore-test`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cosmic_backup.cli.common import (
    check_component,
    emit_json,
    exit_with,
    human_size,
    open_cli_runtime,
    settings_for,
    state,
    stdout,
)
from cosmic_backup.errors import ExitCode, UsageError
from cosmic_backup.operations.restore_test import DrillReport, RestoreTestResult, restore_test
from cosmic_backup.operations.verify import SubsetReport, VerifyResult, verify_backups


def verify(
    ctx: typer.Context,
    what: Annotated[
        str | None, typer.Argument(help="database, files or config (all: with --restore-test).")
    ] = None,
    selector: Annotated[
        str | None, typer.Argument(help="latest, YYYY-MM-DD or an id (default: every backup).")
    ] = None,
    restore_test_flag: Annotated[
        bool,
        typer.Option(
            "--restore-test",
            help="Really restore the backup (default: the latest of every component) into a "
            "throwaway PostgreSQL server or a private temporary folder, and compare.",
        ),
    ] = False,
    into: Annotated[
        str | None,
        typer.Option(
            "--into",
            help="With --restore-test: restore the database into a new, uniquely named "
            "database on this server (dropped afterwards) instead of a throwaway server.",
        ),
    ] = None,
    read_data_subset: Annotated[
        str | None,
        typer.Option(
            "--read-data-subset",
            help="Chunked backups: read only N% of the packs (a window that moves on after "
            "each clean run, so successive runs cover the store), or n/t (the n-th of t "
            "slices); every list and every pack's presence are still checked.",
        ),
    ] = None,
) -> None:
    """Prove backups restorable: MAC, decryption, SHA-256 and structure; with
    --restore-test, a real restore where nothing live is touched."""
    if restore_test_flag:
        if read_data_subset is not None:
            raise UsageError("--read-data-subset is for verify without --restore-test.")
        _restore_test(ctx, what, selector, into)
        return
    if into is not None:
        raise UsageError("--into is for --restore-test; add --restore-test or leave it out.")
    check_component(what)
    runtime = open_cli_runtime(ctx, settings_for(ctx), opens_store=True)
    results, subset = verify_backups(runtime, what, selector, subset=read_data_subset)
    if state(ctx).json:
        emit_json([result.to_dict() for result in results])
    else:
        _print_results(results, subset)
    exit_with(0 if all(r.ok for r in results) else int(ExitCode.INTEGRITY))


def _print_results(results: list[VerifyResult], subset: SubsetReport | None) -> None:
    if not results:
        stdout.print("There are no good backups to verify.", markup=False)
    for result in results:
        stdout.print(
            f"{result.id:<32} {'ok' if result.ok else 'FAILED'}  "
            f"{result.message.removeprefix('ok').lstrip('; :') if result.ok else result.message}",
            markup=False,
        )
    breaks = {r.pack: r.pack_breaks for r in results if r.pack and r.pack_breaks}
    for pack, backups in sorted(breaks.items()):
        stdout.print(
            f"The pack {pack} breaks {len(backups)} backup(s): {', '.join(backups)}.",
            markup=False,
        )
    if subset is not None:
        moved = "the next run goes on from there" if subset.moved_on else "the window stays"
        stdout.print(
            f"Read {subset.packs_read} of the {subset.packs_used} packs the backups use "
            f"({subset.window}); {moved}.",
            markup=False,
        )


def _restore_test(
    ctx: typer.Context, what: str | None, selector: str | None, into: str | None
) -> None:
    if what != "all":
        check_component(what)
    if what in (None, "all") and selector not in (None, "latest"):
        raise UsageError(
            "The whole-app drill tests the latest backups; name a component to test another one."
        )
    runtime = open_cli_runtime(ctx, settings_for(ctx), opens_store=True)
    report = restore_test(runtime, what, selector, into=into)
    if state(ctx).json:
        emit_json(report.to_dict())
    else:
        _print_report(report)
    exit_with(exit_code(report))


def exit_code(report: DrillReport) -> int:
    if report.ok:
        return 0
    return int(ExitCode.INTEGRITY if report.failed_by_integrity else ExitCode.FAILURE)


def _print_report(report: DrillReport) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("component", "backup", "age", "restored", "time", "result"):
        table.add_column(column, no_wrap=column != "result", overflow="fold")
    for result in report.results:
        table.add_row(
            result.component,
            result.id or "-",
            _age(result.age_seconds),
            _restored(result),
            f"{result.seconds:.1f}s" if result.id else "-",
            "ok" if result.status == "ok" else result.status.upper(),
        )
    stdout.print(table)
    for result in report.results:
        if result.status != "ok":
            stdout.print(f"{result.component}: {result.message}", markup=False)
    for warning in report.warnings:
        stdout.print(f"warning: {warning}.", markup=False)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.0f} hours"
    return f"{max(seconds, 0) / 60:.0f} min"


def _restored(result: RestoreTestResult) -> str:
    figures = result.figures
    if "rows" in figures:
        return f"{figures['rows']} rows in {figures['tables']} tables"
    if "files" in figures:
        return f"{figures['files']} files, {human_size(figures.get('bytes'))}"
    return "-"


def register(app: typer.Typer) -> None:
    app.command()(verify)
