"""Restore tests: prove backups restorable by restoring them where nothing live is touched.

`verify --restore-test [COMPONENT [SELECTOR]]`, and without a component (or with
``all``) the whole-app drill: the latest backup of every component, tested together in
one sandbox, with a warning when they are far apart in time.

- database: restored through the component's own restore (the code path of a real
  restore) into a throwaway PostgreSQL server (throwaway.py), or into a new, uniquely
  named database on the server of ``--into URL``, dropped afterwards. Row counts are
  checked against the manifest (by the restore itself) and the objects present against
  the dump's table of contents (objects.py).
- files and config: extracted through the component's own restore into a private
  temporary folder; every member's size, mode and SHA-256 compared with the archive
  (archive_check.py), and the counts with the manifest.

The root's lock is held only while the backups are selected and their artifacts opened
(key and MAC checked): the open file stays readable even if a prune removes it, so a
backup started during a long test does not wait for it. Results are written into each
tested backup's (re-signed) manifest, under the lock again for that moment only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from cosmic_backup.catalog import Entry, StoreCatalog
from cosmic_backup.clock import iso, parse_iso
from cosmic_backup.components import COMPONENT_NAMES
from cosmic_backup.errors import CosmicError, IntegrityError, NotFound, OperationFailed
from cosmic_backup.format.keys import Key
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.format.pipeline import CHUNK_SIZE, UnsealingReader
from cosmic_backup.operations.artifacts import open_plaintext, open_stored, trusted_key
from cosmic_backup.operations.context import Runtime
from cosmic_backup.operations.offsite import Located, pull_for_reading, select_anywhere
from cosmic_backup.operations.restore_sandbox import (
    Sandbox,
    extract_archive_and_compare,
    restore_database_and_compare,
)
from cosmic_backup.operations.store import PayloadReader, open_chunked
from cosmic_backup.states import Outcome

FAR_APART_HOURS = 24  # backups further apart than this are warned about in the drill


@dataclass
class RestoreTestResult:
    component: str
    status: Outcome  # ok, failed, or skipped (no backup to test)
    message: str = ""
    id: str | None = None
    backup_started_at: str | None = None
    age_seconds: float | None = None
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status != Outcome.FAILED

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"seconds": round(self.seconds, 3)}


@dataclass
class DrillReport:
    results: list[RestoreTestResult]
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.results)

    @property
    def failed_by_integrity(self) -> bool:
        return any(r.figures.get("integrity") for r in self.results if not r.ok)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "results": [r.to_dict() for r in self.results],
            "warnings": self.warnings,
        }


@dataclass
class _Opened:
    entry: Entry
    catalog: StoreCatalog  # where it was read from (local, or off-site when gone locally)
    key: Key
    artifact: BinaryIO | None  # None for a chunked backup, read from the store
    reader: UnsealingReader | PayloadReader


def restore_test(
    rt: Runtime, what: str | None, selector: str | None, *, into: str | None = None
) -> DrillReport:
    """Test `what`'s backup (`selector`, default latest), or every component's latest."""
    from cosmic_backup.components.database.throwaway import remove_leftovers

    removed = remove_leftovers()
    if removed:
        rt.log.info("removed leftovers of killed restore tests: %s", ", ".join(map(str, removed)))
    names = list(COMPONENT_NAMES) if what in (None, "all") else [str(what)]
    explicit = what not in (None, "all")
    if into is not None:  # a malformed URL is a usage error (exit 2), found before anything
        from cosmic_backup.components.database.url import parse_database_url

        parse_database_url(into, "the --into URL")
    results: list[RestoreTestResult] = []
    with contextlib.ExitStack() as stack:
        opened = _open_backups(rt, names, selector or "latest", explicit, results, stack)
        catalogs = {o.entry.id: o.catalog for o in opened.values()}
        sandbox = stack.enter_context(Sandbox.create(rt, into))
        for name in names:
            if name in opened:
                results.append(_test_one(rt, opened[name], sandbox))
    results.sort(key=lambda r: names.index(r.component))
    _record(rt, results, catalogs)
    report = DrillReport(results, far_apart(results) if not explicit else [])
    _tell(rt, report)
    return report


# -- selecting and opening, under the lock -----------------------------------------------
def _open_backups(
    rt: Runtime,
    names: list[str],
    selector: str,
    explicit: bool,
    results: list[RestoreTestResult],
    stack: contextlib.ExitStack,
) -> dict[str, _Opened]:
    opened: dict[str, _Opened] = {}
    with rt.catalog.lock("verify --restore-test", wait=rt.wait):
        for name in names:
            try:
                located = select_anywhere(rt, name, selector)
            except NotFound as exc:
                if explicit:
                    raise
                results.append(RestoreTestResult(name, Outcome.SKIPPED, exc.message))
                continue
            try:
                opened[name] = _open(rt, located, stack)
            except CosmicError as exc:
                results.append(_failure(rt, located.entry.manifest, exc, 0.0))
    return opened


def _open(rt: Runtime, located: Located, stack: contextlib.ExitStack) -> _Opened:
    entry = located.entry
    key = trusted_key(rt, entry)
    if entry.manifest.chunked:
        pull_for_reading(rt, located, key)  # held off-site only: its packs come here
        return _Opened(entry, located.catalog, key, None, open_chunked(rt, entry.manifest, key))
    try:
        artifact = stack.enter_context(open_stored(rt, located.catalog, entry))
    except OSError as exc:
        raise OperationFailed(
            f"The artifact of {entry.manifest.id} cannot be read ({exc.strerror})."
        ) from None
    reader = open_plaintext(rt, artifact, entry.manifest, key)
    return _Opened(entry, located.catalog, key, artifact, reader)


# -- testing one backup ------------------------------------------------------------------
def _test_one(rt: Runtime, opened: _Opened, sandbox: Sandbox) -> RestoreTestResult:
    manifest = opened.entry.manifest
    began = time.monotonic()
    rt.log.info("restore test of %s started", manifest.id)
    try:
        with rt.progress(f"restore test of {manifest.id}", manifest.plaintext_size) as advance:
            opened.reader.on_progress = advance
            payload = io.BufferedReader(opened.reader, CHUNK_SIZE)
            if manifest.component == "database":
                figures = restore_database_and_compare(rt, payload, manifest, sandbox)
            else:
                figures = extract_archive_and_compare(rt, payload, manifest, sandbox)
    except CosmicError as exc:
        return _failure(rt, manifest, exc, time.monotonic() - began)
    seconds = time.monotonic() - began
    rt.log.info("restore test of %s ok in %.1fs: %s", manifest.id, seconds, figures)
    return _result(rt, manifest, Outcome.OK, "ok", seconds, figures)


def _result(
    rt: Runtime,
    manifest: Manifest,
    status: Outcome,
    message: str,
    seconds: float,
    figures: dict[str, Any],
) -> RestoreTestResult:
    age = (rt.clock.now() - parse_iso(manifest.started_at)).total_seconds()
    return RestoreTestResult(
        manifest.component, status, message, manifest.id, manifest.started_at, age, seconds, figures
    )


def _failure(
    rt: Runtime, manifest: Manifest, exc: CosmicError, seconds: float
) -> RestoreTestResult:
    rt.log.error("restore test of %s failed: %s", manifest.id, exc.message)
    figures = {"integrity": isinstance(exc, IntegrityError)}
    return _result(rt, manifest, Outcome.FAILED, exc.message, seconds, figures)


# -- recording and the drill's warnings --------------------------------------------------
def _record(
    rt: Runtime, results: list[RestoreTestResult], catalogs: dict[str, StoreCatalog]
) -> None:
    """Each tested backup's manifest records the test (re-signed) where it was read from,
    under the lock briefly."""
    tested = [r for r in results if r.id in catalogs and r.status != Outcome.SKIPPED]
    if not tested:
        return
    now = iso(rt.clock.now())
    with rt.catalog.lock("verify --restore-test (recording)", wait=True, wait_seconds=600):
        for result in tested:
            catalog = catalogs[str(result.id)]
            entry = next((e for e in catalog.entries(result.component) if e.id == result.id), None)
            if entry is None:  # pruned meanwhile: nothing to record on
                continue
            key = trusted_key(rt, entry)
            record = {
                "ok": result.ok,
                "at": now,
                "seconds": round(result.seconds, 3),
                "figures": {k: v for k, v in result.figures.items() if k != "integrity"},
                "message": "" if result.ok else result.message,
            }
            changes: dict[str, Any] = {"restore_test": record}
            if result.ok:
                changes["restore_tested_at"] = now
            catalog.write_manifest(dataclasses.replace(entry.manifest, **changes), key)


def far_apart(results: list[RestoreTestResult]) -> list[str]:
    """One warning per backup much older than the newest one tested with it."""
    dated = [r for r in results if r.backup_started_at and r.status == Outcome.OK]
    if len(dated) < 2:
        return []
    newest = max(dated, key=lambda r: parse_iso(str(r.backup_started_at)))
    newest_at = parse_iso(str(newest.backup_started_at))
    warnings = []
    for result in dated:
        gap = newest_at - parse_iso(str(result.backup_started_at))
        if gap.total_seconds() > FAR_APART_HOURS * 3600:
            warnings.append(
                f"the {result.component} backup is {_span(gap.total_seconds())} older than "
                f"the {newest.component} backup: {_lost(result.component)} since then are "
                "missing from it"
            )
    return warnings


def _span(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:.0f} days" if days >= 2 else f"{seconds / 3600:.0f} hours"


def _lost(component: str) -> str:
    return {
        "files": "uploads added",
        "config": "configuration changes",
        "database": "rows written",
    }.get(component, "changes")


# -- metrics and the webhook, as after a backup run ---------------------------------------
def _tell(rt: Runtime, report: DrillReport) -> None:
    """Never fails the test: problems with the metrics file or the webhook are logged."""
    from cosmic_backup.operations.metrics import write_metrics_file
    from cosmic_backup.operations.notify import alert_for, alert_wanted, notify, summary

    if rt.settings.metrics_file:
        write_metrics_file(rt)
    if rt.settings.notify_url:
        tested = [r for r in report.results if r.status != Outcome.SKIPPED]
        status = Outcome.OK if report.ok else Outcome.FAILED
        components = [
            {
                "component": r.component,
                "status": r.status,
                "message": "" if r.ok else r.message,
                "id": r.id,
                "figures": r.figures,
                "duration_seconds": round(r.seconds, 3),
            }
            for r in tested
        ]
        payload = summary(
            status, rt.run_id, str(rt.root), components, rt.relative(rt.log_file), "restore test"
        )
        payload["warnings"] = report.warnings
        alert = None
        if alert_wanted(rt.settings.notify_on, failed=not report.ok, recovered=False):
            lines = [f"{r.component} restore test {r.status}: {r.message}" for r in tested]
            alert = alert_for("restore test", str(status).upper(), lines, rt.settings.report_url)
        notify(rt.settings.notify_url, payload, alert, rt.log)
