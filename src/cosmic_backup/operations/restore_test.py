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
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cosmic_backup.catalog import Entry, StoreCatalog
from cosmic_backup.clock import iso, parse_iso
from cosmic_backup.components import COMPONENT_NAMES, create_component
from cosmic_backup.components.base import RestoreRequest
from cosmic_backup.errors import CosmicError, IntegrityError, NotFound, OperationFailed
from cosmic_backup.format.keys import Key
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.format.pipeline import CHUNK_SIZE, UnsealingReader
from cosmic_backup.operations.artifacts import open_plaintext, trusted_key
from cosmic_backup.operations.context import Runtime
from cosmic_backup.operations.offsite import Located, select_anywhere
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
    artifact: BinaryIO
    reader: UnsealingReader


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
    try:
        artifact = stack.enter_context(located.catalog.open_artifact(entry))
    except OSError as exc:
        raise OperationFailed(
            f"The artifact of {entry.manifest.id} cannot be read ({exc.strerror})."
        ) from None
    reader = open_plaintext(rt, artifact, entry.manifest, key)
    return _Opened(entry, located.catalog, key, artifact, reader)


# -- the sandbox: a private folder, and a throwaway server started when first needed -----
class Sandbox:
    def __init__(self, rt: Runtime, folder: Path, into: str | None, stack: contextlib.ExitStack):
        self.rt, self.folder, self.into, self._stack = rt, folder, into, stack
        self._server: Any = None

    @classmethod
    @contextlib.contextmanager
    def create(cls, rt: Runtime, into: str | None) -> Iterator[Sandbox]:
        from cosmic_backup.components.database.throwaway import private_folder

        folder = private_folder("files-")  # 0700; removed by the next run if this one is killed
        try:
            with contextlib.ExitStack() as stack:
                yield cls(rt, folder, into, stack)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def server(self, min_major: int) -> Any:
        from cosmic_backup.components.database.throwaway import throwaway_server

        if self._server is None:
            self.rt.say("Starting a throwaway PostgreSQL server for the restore test...")
            self._server = self._stack.enter_context(
                throwaway_server(min_major=min_major, configured=self.rt.settings.pg_bin_dir)
            )
        return self._server

    @contextlib.contextmanager
    def database(self, manifest: Manifest) -> Iterator[str]:
        """The URL of a new, empty database for `manifest`'s dump; dropped afterwards."""
        if self.into is not None:
            with _database_on(self.into, self.rt.settings.connect_timeout) as url:
                yield url
            return
        import psycopg

        server = self.server(_major(manifest.source.get("server_version")))
        name = server.create_database("restore_test")
        try:
            yield server.url(name)
        finally:
            with contextlib.suppress(psycopg.Error):
                server.drop_database(name)


@contextlib.contextmanager
def _database_on(into: str, timeout: int) -> Iterator[str]:
    """A uniquely named database on the --into server; never an existing one."""
    import secrets

    import psycopg
    from psycopg import sql

    from cosmic_backup.components.database.connection import connect
    from cosmic_backup.components.database.url import parse_database_url

    target = parse_database_url(into, "the --into URL")
    name = f"cosmic_restore_test_{secrets.token_hex(6)}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    try:
        with connect(target, timeout, autocommit=True) as conn:
            conn.execute(create)
    except psycopg.Error as exc:
        raise OperationFailed(
            f"No database for the restore test could be created on {target.describe()} "
            f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); "
            "the --into URL's user needs CREATEDB."
        ) from None
    url = psycopg.conninfo.make_conninfo(**{**target.params, "dbname": name})
    try:
        yield url
    finally:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        with contextlib.suppress(psycopg.Error), connect(target, timeout, autocommit=True) as conn:
            conn.execute(drop)


def _major(version: object) -> int:
    text = str(version or "0").split(".")[0]
    return int(text) if text.isdigit() else 0


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
                figures = _test_database(rt, payload, manifest, sandbox)
            else:
                figures = _test_archive(rt, payload, manifest, sandbox)
    except CosmicError as exc:
        return _failure(rt, manifest, exc, time.monotonic() - began)
    seconds = time.monotonic() - began
    rt.log.info("restore test of %s ok in %.1fs: %s", manifest.id, seconds, figures)
    return _result(rt, manifest, Outcome.OK, "ok", seconds, figures)


def _test_database(
    rt: Runtime, payload: BinaryIO, manifest: Manifest, sandbox: Sandbox
) -> dict[str, Any]:
    import psycopg

    from cosmic_backup.components.database.objects import TocTee, missing_objects, parse_toc
    from cosmic_backup.components.database.tools import find_tool
    from cosmic_backup.components.database.url import parse_database_url

    component = create_component("database", rt.settings, rt.log)
    pg_restore = find_tool(
        "pg_restore", _major(manifest.source.get("pg_dump_version")), rt.settings.pg_bin_dir
    )
    with sandbox.database(manifest) as url:
        # Without the GRANTs: they name the app's roles, which a throwaway server does
        # not have, and privileges are not what a restore test proves.
        request = RestoreRequest(target=url, safety_backup=False, no_privileges=True)
        plan = component.plan_restore(manifest, request)
        with TocTee(payload, pg_restore, rt.settings.timeout, rt.log) as tee:
            teed = io.BufferedReader(tee, CHUNK_SIZE)  # kept: collecting it would close tee
            try:
                component.consume(teed, manifest, plan)
            except OperationFailed as exc:
                raise _with_extension_advice(exc, sandbox.into is None) from None
            listed = parse_toc(tee.listing())
        target = parse_database_url(url, "the restore test's database")
        try:
            missing = missing_objects(target, listed, rt.settings.connect_timeout)
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OperationFailed(
                f"The restored database {target.describe()} could not be inspected ({first}); "
                "the restore test is incomplete: run it again."
            ) from None
    if missing:
        shown = ", ".join(str(item) for item in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise IntegrityError(
            f"The restore test of {manifest.id} restored the dump, but {len(missing)} "
            f"object(s) its table of contents lists are missing afterwards: {shown}{more}; "
            "do not rely on this backup: take a new one and check the database's definitions."
        )
    counts: dict[str, int] = manifest.source.get("row_counts", {})
    return {
        "tables": len(manifest.source.get("tables", [])),
        "rows": sum(counts.values()),
        "objects": len(listed),
        "bytes": manifest.plaintext_size,
    }


def _with_extension_advice(exc: OperationFailed, throwaway: bool) -> OperationFailed:
    """An extension the dump needs that the throwaway server lacks (PostGIS...): say how
    to test on a server that has it."""
    text = exc.message
    lacking = "extension" in text and ("not available" in text or "control file" in text)
    if not (throwaway and lacking):
        return exc
    return OperationFailed(
        f"{text.rstrip('.')}. The throwaway server lacks an extension the backup uses: "
        "install it for that server, or test on a server that has it with --into URL."
    )


def _test_archive(
    rt: Runtime, payload: BinaryIO, manifest: Manifest, sandbox: Sandbox
) -> dict[str, Any]:
    from cosmic_backup.components.archive_check import ArchiveDigests, compare_with_disk
    from cosmic_backup.components.config import ENV_MEMBER

    component = create_component(manifest.component, rt.settings, rt.log)
    folder = sandbox.folder / manifest.id
    plan = component.plan_restore(manifest, RestoreRequest(target=str(folder)))
    digests = ArchiveDigests(payload)
    try:
        with digests:
            teed = io.BufferedReader(digests, CHUNK_SIZE)  # kept: collecting it closes it
            component.consume(teed, manifest, plan)
            members = digests.finish()
        problems = compare_with_disk(members, folder)
        files = sum(1 for name, m in members if m.kind == "file" and name != ENV_MEMBER)
        size = sum(m.size for name, m in members if m.kind == "file" and name != ENV_MEMBER)
        links = members.by_kind.get("link", 0)
    finally:
        digests.discard()
        shutil.rmtree(folder, ignore_errors=True)
    expected = manifest.source.get("files")
    if expected is not None and expected != files:
        problems.append(f"{files} file(s) in the archive, the manifest says {expected}")
    if problems:
        shown = "; ".join(problems[:10]) + ("; and more" if len(problems) > 10 else "")
        raise IntegrityError(
            f"The restore test of {manifest.id} extracted the archive, but what is on disk "
            f"differs from it: {shown}; do not rely on this backup: take a new one."
        )
    return {"files": files, "links": links, "bytes": size}


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
    from cosmic_backup.operations.metrics import component_values, render, write_atomically
    from cosmic_backup.operations.notify import send, summary

    if rt.settings.metrics_file:
        path = rt.settings.path("metrics_file")
        values = {name: component_values(rt.catalog.entries(name)) for name in COMPONENT_NAMES}
        try:
            write_atomically(path, render(values))
        except OSError as exc:
            rt.log.warning("the metrics file %s could not be written: %s", path, exc.strerror)
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
        send(rt.settings.notify_url, payload, rt.log)
