"""Take backups: one component, or several in a row (``backup all``).

The artifact is streamed through the sealing pipeline into a temporary file that is
fsynced and renamed; the manifest is written last. Any failure after the lock is taken
leaves a failure record (the seed's "placeholder"), signed when a key is at hand.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from cosmic_backup import __version__
from cosmic_backup.catalog import LockFailed
from cosmic_backup.chunkstore.files_cache import FilesCache
from cosmic_backup.chunkstore.records import RecordWriter
from cosmic_backup.clock import iso
from cosmic_backup.components import create_component
from cosmic_backup.components.base import BackupRequest, Component, Produced
from cosmic_backup.errors import CosmicError, Interrupted, Locked, NotConfigured, OperationFailed
from cosmic_backup.format.compression import threads_pay
from cosmic_backup.format.keys import Key
from cosmic_backup.format.manifest import (
    FORMAT_CHUNKED,
    FORMAT_VERSION,
    Manifest,
    kdf_description,
)
from cosmic_backup.format.pipeline import SealingWriter
from cosmic_backup.format.store_config import FILE, STREAM
from cosmic_backup.logs import mark_logged
from cosmic_backup.operations.appversion import app_version
from cosmic_backup.operations.context import Runtime
from cosmic_backup.operations.metrics import write_metrics_file
from cosmic_backup.operations.notify import Alert, alert_for, alert_wanted, notify, summary
from cosmic_backup.operations.offsite import host_prefix, mark_upload_pending, upload_after_backup
from cosmic_backup.operations.prune import prune
from cosmic_backup.operations.retention import Policy
from cosmic_backup.operations.store import open_chunk_store
from cosmic_backup.settings import FORMAT_SINGLE_FILE
from cosmic_backup.states import Outcome


@dataclass
class BackupOutcome:
    """What became of one component's backup in this run."""

    component: str
    status: Outcome  # ok, failed or skipped
    message: str = ""
    manifest: Manifest | None = None
    duration: float = 0.0
    error: CosmicError | Interrupted | None = field(default=None, repr=False)
    offsite: str | None = None  # with BACKUP_REMOTE: "ok" or why the upload failed

    def to_dict(self) -> dict[str, Any]:
        manifest = self.manifest
        return {
            "component": self.component,
            "status": self.status,
            "message": self.message,
            "offsite": self.offsite,
            "id": manifest.id if manifest else None,
            "mode": manifest.mode if manifest else None,
            "stored_size": manifest.stored_size if manifest else None,
            "warnings": manifest.warnings if manifest else [],
            "duration_seconds": round(self.duration, 3),
        }


def backup_component(rt: Runtime, name: str, request: BackupRequest) -> Manifest:
    """Back up one component; raise its error after leaving a failure record."""
    component = create_component(name, rt.settings, rt.log)
    try:
        with rt.catalog.lock(f"backup {name}", wait=rt.wait):
            removed = rt.catalog.remove_leftovers()
            if removed:
                rt.log.info("removed leftovers of interrupted runs: %s", ", ".join(removed))
            if request.source_override is None:
                _check_configured(rt, component, request)
            return _backup_locked(rt, component, request)
    except LockFailed as exc:  # a full disk: still try to leave the failure record
        started = rt.clock.now()
        try:
            backup_id = rt.catalog.new_id(name, started)
        except OSError:
            raise exc from None
        _record_failure(rt, component, request, backup_id, started, None, exc, locked=False)
        raise


def _check_configured(rt: Runtime, component: Component, request: BackupRequest) -> None:
    """Nothing to back up is a skip (NotConfigured), unless this root has backups of the
    component: then its settings went missing (under cron, DATABASE_URL not reaching the
    run is the usual case). That is a failure with a record, so `status` says so at once
    instead of the backups silently stopping."""
    try:
        component.check_configured()
    except NotConfigured as exc:
        earlier = [e for e in rt.catalog.entries(component.name) if not e.manifest.is_pre_restore]
        if not earlier:
            raise
        error = OperationFailed(
            f"This backup root has {component.name} backups (the latest {earlier[-1].id}), "
            f"but {component.name} is not configured now: {exc.message}"
        )
        started = rt.clock.now()
        backup_id = rt.catalog.new_id(component.name, started)
        _record_failure(rt, component, request, backup_id, started, None, error)
        raise error from exc


def _backup_locked(rt: Runtime, component: Component, request: BackupRequest) -> Manifest:
    started = rt.clock.now()
    backup_id = rt.catalog.new_id(component.name, started)
    rt.log.info("backup %s started (tags: %s)", backup_id, ",".join(request.tags))
    key: Key | None = None
    try:
        key = rt.keys.current(create=True).key
        produced, stored, cache = _write_payload(rt, component, request, backup_id, key)
        try:
            manifest = _good_manifest(
                rt, component, request, backup_id, started, key, produced, stored
            )
            rt.catalog.write_manifest(manifest, key)  # last: only now is the backup good
        except BaseException:
            if cache is not None:
                cache.discard()
            raise
        if cache is not None:  # the files cache of a backup that exists
            cache.commit()
        if rt.settings.remote and not manifest.is_pre_restore:  # uploaded next: pending
            mark_upload_pending(rt, manifest)  # until confirmed, whatever dies in between
    except BaseException as exc:
        error = _as_cosmic_error(exc)
        _record_failure(rt, component, request, backup_id, started, key, error)
        if error is exc:
            raise
        raise error from exc
    for warning in produced.warnings:
        rt.log.warning("%s: %s", backup_id, warning)
    rt.log.info(
        "backup %s done: %s, format %d, %d bytes stored (%d plain)",
        backup_id,
        manifest.mode,
        manifest.format_version,
        manifest.stored_size,
        manifest.plaintext_size,
    )
    return manifest


def _good_manifest(
    rt: Runtime,
    component: Component,
    request: BackupRequest,
    backup_id: str,
    started: datetime,
    key: Key,
    produced: Produced,
    stored: StoredPayload,
) -> Manifest:
    finished = rt.clock.now()
    return Manifest(
        id=backup_id,
        component=component.name,
        status=Outcome.OK,
        mode=produced.mode,
        tags=list(request.tags),
        started_at=iso(started),
        finished_at=iso(finished),
        tool_version=__version__,
        source=replace(
            produced.source, app_version=app_version(rt.root, rt.settings.app_version)
        ).to_dict(),
        key_fingerprint=key.fingerprint,
        warnings=list(produced.warnings),
        log_file=rt.relative(rt.log_file),
        host=host_prefix(rt),
        root_id=rt.catalog.root_id(),
        duration_seconds=_seconds_between(started, finished),
        **stored.manifest_fields(),
    )


def _seconds_between(started: datetime, finished: datetime) -> float:
    return round((finished - started).total_seconds(), 3)


@dataclass(frozen=True)
class StoredPayload:
    """Where a backup's payload went and its figures: the manifest fields of its format."""

    plaintext_size: int
    plaintext_sha256: str | None  # format 2: None (the chunk ids and the MACed list bind it)
    stored_size: int  # format 1: the artifact; format 2: the bytes added to the store
    kdf: dict[str, Any]
    format_version: int = FORMAT_VERSION
    artifact: str | None = None
    artifact_mac: str | None = None
    chunk_list: dict[str, Any] | None = None
    data_key: str | None = None

    def manifest_fields(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _write_payload(
    rt: Runtime, component: Component, request: BackupRequest, backup_id: str, key: Key
) -> tuple[Produced, StoredPayload, FilesCache | None]:
    """The payload, and the new files cache to put in place once the manifest is written."""
    if rt.settings.backup_format == FORMAT_SINGLE_FILE:
        return (*_write_artifact(rt, component, request, backup_id, key), None)
    return _write_chunked(rt, component, request, backup_id, key)


def _write_artifact(
    rt: Runtime, component: Component, request: BackupRequest, backup_id: str, key: Key
) -> tuple[Produced, StoredPayload]:
    name = rt.catalog.artifact_name(component.name, backup_id, component.payload)
    iterations = rt.settings.kdf_iterations
    with (
        rt.progress(f"{component.name} backup", None) as advance,
        rt.catalog.store.open_write(name) as sink,
    ):
        # The writer gathers tar's 512-byte writes itself, and takes pg_dump's reads
        # without a copy, which a BufferedWriter in front would force.
        threaded = threads_pay(component.producer_cores)
        writer = SealingWriter(sink, key, iterations, on_progress=advance, threaded=threaded)
        try:
            produced = component.produce(writer, request)  # type: ignore[arg-type]
            writer.close()  # finishes the gzip, AES and MAC streams
        except BaseException:
            writer.abort()
            raise
    sealed = writer.result
    assert sealed is not None
    return produced, StoredPayload(
        plaintext_size=sealed.plaintext_size,
        plaintext_sha256=sealed.plaintext_sha256,
        stored_size=sealed.stored_size,
        kdf=kdf_description(sealed.iterations),
        artifact=name.split("/", 1)[1],
        artifact_mac=sealed.mac,
    )


def _write_chunked(
    rt: Runtime, component: Component, request: BackupRequest, backup_id: str, key: Key
) -> tuple[Produced, StoredPayload, FilesCache | None]:
    """The payload, produced as for an artifact, cut into the chunk store; the chunk list
    is written by `finish`, before the caller writes the manifest (the commit point).
    A tar is cut at its records, and files unchanged since the files cache are named."""
    store = open_chunk_store(rt, key, create=True)
    kind = STREAM if component.name == "database" else FILE
    cache = FilesCache(store.layout, component.name, rt.log) if component.payload == "tar" else None
    try:
        with (
            rt.progress(f"{component.name} backup", None) as advance,
            store.payload_writer(component.name, backup_id, payload=component.payload) as payload,
        ):
            writer = (
                payload.stream_writer(kind, on_progress=advance, background=kind == STREAM)
                if cache is None
                else RecordWriter(
                    payload, kind, cache, use_cache=not rt.settings.force_read, on_progress=advance
                )
            )
            produced = component.produce(writer, request)  # type: ignore[arg-type]
            writer.finish()
            record = payload.finish()
    except BaseException:
        if cache is not None:
            cache.discard()
        raise
    if isinstance(writer, RecordWriter) and writer.reused_files:
        rt.log.info("%d unchanged file(s) named from the files cache", writer.reused_files)
    return (
        produced,
        StoredPayload(
            plaintext_size=record.plaintext_size,
            plaintext_sha256=record.plaintext_sha256,
            stored_size=record.added_bytes,
            kdf=kdf_description(store.config.object_iterations, salt="per object"),
            format_version=FORMAT_CHUNKED,
            chunk_list=record.manifest_field(),
            data_key=store.data_key.fingerprint,
        ),
        cache,
    )


def _as_cosmic_error(exc: BaseException) -> CosmicError | Interrupted:
    if isinstance(exc, CosmicError | Interrupted):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted("The backup was interrupted; nothing was kept of it.")
    if isinstance(exc, OSError):
        return OperationFailed(
            f"The backup failed: {exc.strerror or exc} ({getattr(exc, 'filename', '') or ''}); "
            "check free space and permissions of the backup folder."
        )
    return OperationFailed(
        f"The backup failed unexpectedly ({exc.__class__.__name__}: {exc}); run again with "
        "--debug and report it."
    )


def _record_failure(
    rt: Runtime,
    component: Component,
    request: BackupRequest,
    backup_id: str,
    started: datetime,
    key: Key | None,
    error: CosmicError | Interrupted,
    *,
    locked: bool = True,
) -> None:
    """Leave the failure record: listed, counted by status, never restorable.

    Leftovers are cleaned only under the lock: without it they may be another run's work.
    """
    rt.log.error("backup %s failed: %s", backup_id, error.message)
    mark_logged(error)
    signing_key = key or rt.keys.current_if_any()
    finished = rt.clock.now()
    manifest = Manifest(
        id=backup_id,
        component=component.name,
        status=Outcome.FAILED,
        mode=request.mode or "?",
        tags=list(request.tags),
        started_at=iso(started),
        finished_at=iso(finished),
        tool_version=__version__,
        key_fingerprint=signing_key.fingerprint if signing_key else None,
        error=error.message,
        log_file=rt.relative(rt.log_file),
        host=host_prefix(rt),
        duration_seconds=_seconds_between(started, finished),
    )
    try:
        if locked:
            rt.catalog.remove_leftovers()
        manifest.root_id = rt.catalog.root_id()
        rt.catalog.write_manifest(manifest, signing_key)
    except (OSError, CosmicError) as exc:  # e.g. the disk is full: the log still says it
        rt.log.error("could not write the failure record of %s: %s", backup_id, exc)


def backup_components(rt: Runtime, names: list[str], request: BackupRequest) -> list[BackupOutcome]:
    """Back up each component in turn, going on past failures; "not configured" is a skip."""
    outcomes: list[BackupOutcome] = []
    for name in names:
        began = time.monotonic()
        try:
            manifest = backup_component(rt, name, request)
        except NotConfigured as exc:
            rt.log.info("%s skipped: %s", name, exc.message)
            outcomes.append(BackupOutcome(name, Outcome.SKIPPED, exc.message, error=exc))
            continue
        except (Interrupted, Locked) as exc:
            # The run ends here, but monitoring still hears of it: a refused or killed
            # scheduled backup is exactly what the webhook and the metrics are for.
            outcomes.append(BackupOutcome(name, Outcome.FAILED, exc.message, error=exc))
            after_run(rt, outcomes, retention=False)
            raise
        except CosmicError as exc:
            outcomes.append(
                BackupOutcome(
                    name, Outcome.FAILED, exc.message, None, time.monotonic() - began, exc
                )
            )
            continue
        warnings = f" ({len(manifest.warnings)} warning(s))" if manifest.warnings else ""
        outcome = BackupOutcome(
            name, Outcome.OK, f"{manifest.id}{warnings}", manifest, time.monotonic() - began
        )
        if rt.settings.remote:  # off-site right after; a failure leaves the local backup good
            outcome.offsite = upload_after_backup(rt, manifest) or Outcome.OK
        outcomes.append(outcome)
    after_run(rt, outcomes)
    return outcomes


def after_run(rt: Runtime, outcomes: list[BackupOutcome], *, retention: bool = True) -> None:
    """After every backup run: retention for what succeeded, then metrics and the webhook.

    None of these may fail the backup that just succeeded: their problems are logged.
    """
    succeeded = [o.component for o in outcomes if o.status == Outcome.OK]
    if succeeded and retention:
        try:
            policy = Policy.from_settings(rt.settings)
            prune(rt, succeeded, policy, dry_run=False, sweep_always=False)
        except (CosmicError, OSError) as exc:
            rt.log.warning("retention after the backup failed: %s", exc)
            rt.say(f"warning: retention after the backup failed: {exc}")
    if rt.settings.metrics_file:
        write_metrics_file(rt)
    if rt.settings.notify_url:
        status = run_status(outcomes)
        payload = summary(
            status,
            rt.run_id,
            str(rt.root),
            [o.to_dict() for o in outcomes],
            rt.relative(rt.log_file),
        )
        notify(rt.settings.notify_url, payload, _alert(rt, outcomes, status), rt.log)


def _alert(rt: Runtime, outcomes: list[BackupOutcome], status: Outcome) -> Alert | None:
    """The Apprise alert of this run, or None when BACKUP_NOTIFY_ON does not want one."""
    recovered = [o.component for o in outcomes if o.manifest and _recovered(rt, o.manifest)]
    failed = status != Outcome.OK
    if not alert_wanted(rt.settings.notify_on, failed, bool(recovered)):
        return None
    word = "recovered" if recovered and not failed else str(status).upper()
    lines = []
    for o in outcomes:
        if o.status == Outcome.SKIPPED:
            continue
        how = "recovered" if o.component in recovered else str(o.status)
        lines.append(f"{o.component} backup {how}: {o.message}")
    return alert_for("backup", word, lines, rt.settings.report_url)


def _recovered(rt: Runtime, manifest: Manifest) -> bool:
    """The first good backup after a failed one: the attempt before it failed."""
    attempts = [
        e
        for e in rt.catalog.entries(manifest.component)
        if not e.manifest.is_pre_restore and not e.manifest.is_other_target
    ]
    ids = [e.id for e in attempts]
    if manifest.id not in ids or ids.index(manifest.id) == 0:
        return False
    return not attempts[ids.index(manifest.id) - 1].manifest.ok


def run_status(outcomes: list[BackupOutcome]) -> Outcome:
    statuses = {o.status for o in outcomes if o.status != Outcome.SKIPPED}
    if statuses <= {Outcome.OK}:
        return Outcome.OK
    return Outcome.FAILED if statuses == {Outcome.FAILED} else Outcome.PARTIAL
