"""`doctor`: checks as data (name, state, detail, hint), rendered by the CLI as text or JSON."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cosmic_backup.components.files import interrupted_restore
from cosmic_backup.dotenv import DOTENV_FILE_NAME
from cosmic_backup.errors import CosmicError
from cosmic_backup.operations.appversion import app_version
from cosmic_backup.operations.keys import KeySource
from cosmic_backup.process import run_captured
from cosmic_backup.settings import CONFIG_FILE_NAME, SPECS, Settings, check_offsite_environment
from cosmic_backup.states import Outcome

LOW_DISK_BYTES = 1024**3


@dataclass
class Check:
    name: str
    state: Outcome  # ok, warning or failed
    detail: str
    hint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def settings_report(settings: Settings) -> list[dict[str, str]]:
    report = []
    for spec in SPECS:
        value, source = settings.shown(spec.name), settings.sources.get(spec.name, "default")
        if spec.name == "app_version" and settings.app_version is None:
            # unset, the backups record the git commit: show that, not "(not set)"
            commit = app_version(settings.project_root, None)
            if commit is not None:
                value, source = commit, "default: the project's git commit"
        report.append({"name": spec.name, "env": spec.env or "", "value": value, "source": source})
    return report


def run_checks(settings: Settings) -> list[Check]:
    return [
        check_key(settings),
        check_settings_files(settings),
        check_backup_dir(settings),
        check_files_restore(settings),
        check_disk(settings),
        *check_tools(settings),
        check_openssl(),
        check_database(settings),
        check_remote(settings),
    ]


def check_settings_files(settings: Settings) -> Check:
    """A secret setting (DATABASE_URL, the webhook) read from a file others can read."""
    exposed: dict[str, list[str]] = {}  # file name -> the secret settings read from it
    for spec in SPECS:
        file_name = _settings_file(settings.sources.get(spec.name, "default"))
        if spec.secret and file_name is not None:
            exposed.setdefault(file_name, []).append(spec.env or spec.name)
    readable = [name for name in exposed if _others_can_read(settings.project_root / name)]
    if not readable:
        return Check("settings files", Outcome.OK, "no secret setting in a file others can read")
    shown = "; ".join(f"{name} ({', '.join(exposed[name])})" for name in readable)
    return Check(
        "settings files",
        Outcome.WARNING,
        f"other users can read secret settings in {shown}",
        f"chmod 600 {' '.join(readable)} (or 640, for the group the app runs as)",
    )


def _others_can_read(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


def _settings_file(source: str) -> str | None:
    """The file a value was read from, or None for defaults, the environment and flags."""
    if source == CONFIG_FILE_NAME:
        return CONFIG_FILE_NAME
    if source.startswith(f"{DOTENV_FILE_NAME} "):
        return DOTENV_FILE_NAME
    return None


def check_remote(settings: Settings) -> Check:
    """The off-site store: reachable, the bucket there, and the credentials able to write,
    list, read and delete (a small probe object, removed again)."""
    if not settings.remote:
        return Check(
            "off-site",
            Outcome.WARNING,
            "no BACKUP_REMOTE: every backup stays on this machine",
            "set BACKUP_REMOTE=s3://bucket/prefix and the usual AWS credentials",
        )
    import socket

    from cosmic_backup.storage.s3 import S3Store, parse_remote

    try:
        check_offsite_environment(os.environ)
        location = parse_remote(settings.remote, settings.remote_host or socket.gethostname())
        done = S3Store(location).probe()
    except (CosmicError, OSError) as exc:
        return Check(
            "off-site",
            Outcome.FAILED,
            exc.message if isinstance(exc, CosmicError) else f"the probe object vanished ({exc})",
            "backups still work locally; uploads fail until this is fixed",
        )
    return Check("off-site", Outcome.OK, f"{location.url()}: {', '.join(done)} work")


def check_files_restore(settings: Settings) -> Check:
    """A killed files restore: its folders wait, half-swapped, for the next locked run."""
    journal = interrupted_restore(settings)
    if journal is None:
        return Check("files restore", Outcome.OK, "no interrupted files restore")
    return Check(
        "files restore",
        Outcome.WARNING,
        f"a files restore was interrupted ({journal} remains); its folders are not settled",
        "run 'cosmic-backup backup files': it finishes or undoes the restore first",
    )


def check_key(settings: Settings) -> Check:
    keys = KeySource(settings, lambda _message: None)
    if not settings.key and not settings.key_command and not keys.key_file.exists():
        return Check(
            "key",
            Outcome.WARNING,
            f"no key yet: {keys.key_file} is created by the first backup",
            "keep a copy of it somewhere safe once it exists",
        )
    try:
        loaded = keys.current()
    except CosmicError as exc:
        return Check("key", Outcome.FAILED, exc.message)
    detail = f"fingerprint {loaded.key.fingerprint} from {loaded.source}"
    if keys.key_file.exists() and stat.S_IMODE(keys.key_file.stat().st_mode) & 0o077:
        return Check(
            "key", Outcome.WARNING, detail + " (readable by others)", f"chmod 600 {keys.key_file}"
        )
    retired = keys.keyring.fingerprints()
    if retired:
        detail += f"; keyring holds {len(retired)} retired key(s)"
    return Check("key", Outcome.OK, detail)


def check_backup_dir(settings: Settings) -> Check:
    folder = settings.path("backup_dir")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".cosmic-doctor-"):
            pass
    except OSError as exc:
        return Check(
            "backup folder",
            Outcome.FAILED,
            f"{existing} is not writable ({exc.strerror})",
            "fix its permissions or set BACKUP_DIR",
        )
    if folder.exists() and stat.S_IMODE(folder.stat().st_mode) & 0o077:
        return Check(
            "backup folder",
            Outcome.WARNING,
            f"{folder} can be read by other users",
            f"chmod 700 {folder}",
        )
    return Check("backup folder", Outcome.OK, f"{folder} is writable")


def check_disk(settings: Settings) -> Check:
    folder = settings.path("backup_dir")
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    detail = f"{free / 1024**3:.1f} GiB free at {folder}"
    if free < LOW_DISK_BYTES:
        return Check("disk space", Outcome.WARNING, detail, "free space or move BACKUP_DIR")
    return Check("disk space", Outcome.OK, detail)


def _tool_version(path: str, flag: str = "--version") -> str:
    try:
        result = run_captured([path, flag], timeout=10)
    except CosmicError as exc:
        return exc.message
    return result.stdout.strip() or result.stderr.strip()


def check_tools(settings: Settings) -> list[Check]:
    """The PostgreSQL client tools found, newest first (the database check says which fits)."""
    from cosmic_backup.components.database.tools import TOOLS, candidates

    checks = []
    for name in TOOLS:
        found = sorted(candidates(name, settings.pg_bin_dir), key=lambda tool: -tool.major)
        if not found:
            checks.append(
                Check(
                    name,
                    Outcome.FAILED if settings.database_url else Outcome.WARNING,
                    "not found",
                    "install the PostgreSQL client (e.g. apt install postgresql-client)",
                )
            )
            continue
        checks.append(Check(name, Outcome.OK, ", ".join(f"{t.version} ({t.path})" for t in found)))
    return checks


def check_openssl() -> Check:
    path = shutil.which("openssl")
    if path is None:
        return Check(
            "openssl",
            Outcome.WARNING,
            "not found",
            "not needed by cosmic-backup, but by-hand recovery uses it",
        )
    return Check("openssl", Outcome.OK, _tool_version(path, "version").split(" (")[0])


def check_database(settings: Settings) -> Check:
    """One connection attempt to DATABASE_URL, when it is set."""
    if not settings.database_url:
        return Check(
            "database",
            Outcome.WARNING,
            "DATABASE_URL is not set: no database backups",
            "set DATABASE_URL (in the environment or the app's .env) to back up the database",
        )
    from cosmic_backup.components.database.connection import check_connection
    from cosmic_backup.components.database.url import parse_database_url

    quiet = logging.getLogger("cosmic_backup.doctor")  # doctor reports; it does not log
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    try:
        target = parse_database_url(settings.database_url)
        server = check_connection(target, timeout=settings.connect_timeout, attempts=1, log=quiet)
    except CosmicError as exc:
        return Check("database", Outcome.FAILED, exc.message)
    return Check("database", Outcome.OK, f"{target.describe()}: PostgreSQL {server.version}")
