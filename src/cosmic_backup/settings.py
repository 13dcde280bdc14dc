"""Every setting: its default, its `cosmic-backup.toml` key, its environment variable, and
where the effective value came from (defaults < the app's .env < toml < environment < flags)."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cosmic_backup.dotenv import DOTENV_FILE_NAME, read_dotenv
from cosmic_backup.errors import UsageError

CONFIG_FILE_NAME = "cosmic-backup.toml"
MIN_KDF_ITERATIONS = 600_000
FORMAT_CHUNKED = "chunked"
FORMAT_SINGLE_FILE = "single-file"

DEFAULT_ENV_EXCLUDE = (
    "PATH,PWD,OLDPWD,HOME,USER,LOGNAME,SHELL,SHLVL,TERM,TERM_*,COLORTERM,HOSTNAME,LANG,"
    "LANGUAGE,LC_*,TZ,_,PS1,PS2,DISPLAY,SSH_*,TMUX,TMUX_*,STY,COLUMNS,LINES,MAIL,XDG_*,"
    "EDITOR,VISUAL,PAGER,LESS*,LS_COLORS,HIST*,MOTD_SHOWN,DBUS_*,OLDPWD,VIRTUAL_ENV,"
    "PYTHON*,PIP_*,CI,BACKUP_KEY,BACKUP_KEY_COMMAND,PGPASSWORD,PGPASSFILE"
)


def _text(value: Any) -> str:
    return str(value)


def _optional_text(value: Any) -> str | None:
    text = str(value).strip()
    return text or None


def _int(value: Any) -> int:
    try:
        return int(str(value).strip())
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a whole number") from exc


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"{value!r} is not true or false")


def _list(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return tuple(str(item).strip() for item in items if str(item).strip())


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return text

    return parse


@dataclass(frozen=True)
class Spec:
    """How one setting is read: its environment variable, default, parser and help."""

    name: str
    env: str | None
    default: Any
    parse: Callable[[Any], Any]
    help: str
    secret: bool = False
    in_toml: bool = True
    is_path: bool = False
    # Whole numbers: the lowest and highest accepted. The upper bounds keep every value
    # within what dates, timers and PBKDF2 can take (a retention of 10**20 days overflows
    # a date); they are far beyond any sensible use.
    bounds: tuple[int, int] | None = None


def setting(env: str, default: Any, parse: Callable[[Any], Any], help: str, **how: Any) -> Any:
    """A typed field of `Settings`, with how it is read (see `Spec`)."""
    return field(
        metadata={"spec": {"env": env, "default": default, "parse": parse, "help": help, **how}}
    )


@dataclass(frozen=True)
class Settings:
    """Effective settings of one run, typed, with where each value came from.

    Each setting is declared once, here: its name and type, then how it is read.
    """

    project_root: Path
    sources: Mapping[str, str]
    database_url: str | None = setting(
        "DATABASE_URL", None, _optional_text, "PostgreSQL connection URL", secret=True
    )
    backup_dir: str = setting("BACKUP_DIR", "./tmp/backups", _text, "backup root", is_path=True)
    key_file: str = setting("BACKUP_KEY_FILE", "./.backup_key", _text, "key file", is_path=True)
    keyring_dir: str = setting(
        "BACKUP_KEYRING_DIR", "./.backup_keyring", _text, "folder of retired keys", is_path=True
    )
    key: str | None = setting(
        "BACKUP_KEY", None, _optional_text, "the passphrase itself", secret=True, in_toml=False
    )
    key_command: str | None = setting(
        "BACKUP_KEY_COMMAND", None, _optional_text, "command that prints the passphrase"
    )
    allow_insecure_key: bool = setting(
        "BACKUP_ALLOW_INSECURE_KEY",
        False,
        _bool,
        "accept a key file others can read (with a warning)",
    )
    log_dir: str = setting("BACKUP_LOG_DIR", "./logs", _text, "log folder", is_path=True)
    log_format: str = setting(
        "BACKUP_LOG_FORMAT", "text", _choice("text", "json"), "log line format"
    )
    files_dirs: tuple[str, ...] = setting(
        "BACKUP_FILES_DIRS", "static,uploads", _list, "file folders"
    )
    files_restore_owner: bool = setting(
        "BACKUP_FILES_RESTORE_OWNER",
        True,
        _bool,
        "as root, give restored files their owners from the backup, as tar does",
    )
    config_paths: tuple[str, ...] = setting(
        "BACKUP_CONFIG_PATHS", ".env,config", _list, "config files and folders"
    )
    env_include: tuple[str, ...] = setting(
        "BACKUP_ENV_INCLUDE", "*", _list, "environment variables to snapshot (glob patterns)"
    )
    env_exclude: tuple[str, ...] = setting(
        "BACKUP_ENV_EXCLUDE",
        DEFAULT_ENV_EXCLUDE,
        _list,
        "environment variables never snapshotted (glob patterns)",
    )
    retention_days: int = setting(
        "RETENTION_DAYS", 30, _int, "days backups are kept", bounds=(1, 36_500)
    )
    wait: bool = setting(
        "BACKUP_WAIT",
        False,
        _bool,
        "wait for another run's lock instead of refusing (for scheduled runs)",
    )
    remote: str | None = setting(
        "BACKUP_REMOTE", None, _optional_text, "off-site location (s3://...)"
    )
    remote_host: str | None = setting(
        "BACKUP_REMOTE_HOST",
        None,
        _optional_text,
        "this machine's folder under BACKUP_REMOTE (default: its host name)",
    )
    remote_lock_days: int = setting(
        "BACKUP_REMOTE_LOCK_DAYS",
        0,
        _int,
        "days each upload stays undeletable (S3 Object Lock, compliance mode; 0: off)",
        bounds=(0, 36_500),
    )
    # Format 2 (the chunk store) by default; single-file keeps one self-contained artifact
    # per backup (format 1), for off-site copies and for hand-over on removable media.
    backup_format: str = setting(
        "BACKUP_FORMAT",
        FORMAT_CHUNKED,
        _choice(FORMAT_CHUNKED, FORMAT_SINGLE_FILE),
        "how new backups are stored: chunked (the deduplicating store) or single-file",
    )
    force_read: bool = setting(
        "BACKUP_FORCE_READ",
        False,
        _bool,
        "files: read every file, ignoring the files cache (for those who distrust mtimes)",
    )
    kdf_iterations: int = setting(
        "BACKUP_KDF_ITERATIONS",
        MIN_KDF_ITERATIONS,
        _int,
        "PBKDF2 iterations for new backups",
        bounds=(MIN_KDF_ITERATIONS, 100_000_000),
    )
    pg_bin_dir: str | None = setting(
        "BACKUP_PG_BIN_DIR", None, _optional_text, "folder holding pg_dump, pg_restore and psql"
    )
    timeout: int = setting(
        "BACKUP_TIMEOUT", 3600, _int, "overall time limit of one operation (s)", bounds=(1, 604_800)
    )
    connect_timeout: int = setting(
        "BACKUP_CONNECT_TIMEOUT", 10, _int, "database connect timeout (s)", bounds=(1, 3600)
    )
    connect_retries: int = setting(
        "BACKUP_CONNECT_RETRIES", 10, _int, "connection attempts at most", bounds=(1, 100)
    )
    # A serverless compute (Neon, a resuming Supabase project) accepts connections only
    # once it has woken up, which can take well over the seconds a few retries last.
    connect_wait: int = setting(
        "BACKUP_CONNECT_WAIT",
        30,
        _int,
        "how long connection attempts are retried (s)",
        bounds=(0, 3600),
    )
    lock_wait_timeout: int = setting(
        "BACKUP_LOCK_WAIT_TIMEOUT",
        60,
        _int,
        "longest wait for a table lock during a dump (s)",
        bounds=(1, 86_400),
    )
    db_jobs: int = setting(
        "BACKUP_DB_JOBS",
        1,
        _int,
        "parallel pg_dump jobs; above 1 the dump is written to a temporary folder "
        "(directory format) and sealed as one tar",
        bounds=(1, 64),
    )
    db_row_order: str = setting(
        "BACKUP_DB_ROW_ORDER",
        "dump",
        _choice("primary-key", "dump"),
        "order of each table's rows in a database backup: primary-key (stable, so a "
        "second backup stores little more than what changed) or dump (pg_dump's heap "
        "order, no sort)",
    )
    db_row_order_memory: int = setting(
        "BACKUP_DB_ROW_ORDER_MEMORY",
        64,
        _int,
        "MiB of rows sorted in memory before sorted runs spill to a temporary folder",
        bounds=(1, 65_536),
    )
    neon_full: bool = setting(
        "BACKUP_NEON_FULL", False, _bool, "take full (not schema-only) backups of Neon databases"
    )
    app_version: str | None = setting("APP_VERSION", None, _optional_text, "the app's version")
    notify_url: str | None = setting(
        "BACKUP_NOTIFY_URL",
        None,
        _optional_text,
        "where to notify, comma-separated: an http(s):// webhook (JSON after each run) "
        "or Apprise URLs (mailto://, slack://, ntfy://, tgram://...)",
        secret=True,
    )
    notify_on: str = setting(
        "BACKUP_NOTIFY_ON",
        "failure",
        _choice("failure", "always"),
        "Apprise alerts on failure (and the first success after one) or after every run",
    )
    report_url: str | None = setting(
        "BACKUP_REPORT_URL", None, _optional_text, "where alerts link the HTML report"
    )
    metrics_file: str | None = setting(
        "BACKUP_METRICS_FILE", None, _optional_text, "Prometheus textfile to write"
    )
    keep_last: int = setting(
        "BACKUP_KEEP_LAST",
        0,
        _int,
        "always keep the N newest backups (0: off)",
        bounds=(0, 100_000),
    )
    keep_daily: int = setting(
        "BACKUP_KEEP_DAILY", 0, _int, "keep the newest backup of each of N days", bounds=(0, 36_500)
    )
    keep_weekly: int = setting(
        "BACKUP_KEEP_WEEKLY", 0, _int, "keep the newest backup of each of N weeks", bounds=(0, 5200)
    )
    keep_monthly: int = setting(
        "BACKUP_KEEP_MONTHLY",
        0,
        _int,
        "keep the newest backup of each of N months",
        bounds=(0, 1200),
    )
    database_interval_days: int = setting(
        "BACKUP_DATABASE_INTERVAL_DAYS",
        1,
        _int,
        "status: a database backup is expected every N days",
        bounds=(1, 3660),
    )
    files_interval_days: int = setting(
        "BACKUP_FILES_INTERVAL_DAYS",
        7,
        _int,
        "status: a files backup is expected every N days",
        bounds=(1, 3660),
    )
    config_interval_days: int = setting(
        "BACKUP_CONFIG_INTERVAL_DAYS",
        31,
        _int,
        "status: a config backup is expected every N days",
        bounds=(1, 3660),
    )
    status_grace_hours: int = setting(
        "BACKUP_STATUS_GRACE_HOURS",
        6,
        _int,
        "status: hours of grace before a backup counts as overdue",
        bounds=(0, 8784),
    )
    restore_test_interval_days: int = setting(
        "BACKUP_RESTORE_TEST_INTERVAL_DAYS",
        0,
        _int,
        "status: a passing `verify --restore-test` is expected every N days (0: not checked)",
        bounds=(0, 3660),
    )

    @property
    def values(self) -> dict[str, Any]:
        return {spec.name: getattr(self, spec.name) for spec in SPECS}

    def path(self, name: str) -> Path:
        """A path setting, resolved against the project root."""
        return self.resolve(str(getattr(self, name)))

    def resolve(self, raw: str) -> Path:
        """A path as the operator wrote it (``~`` allowed), relative to the project root."""
        path = Path(raw).expanduser()
        return path if path.is_absolute() else self.project_root / path

    def optional_path(self, name: str) -> Path | None:
        return self.path(name) if getattr(self, name) is not None else None

    def shown(self, name: str) -> str:
        """The value as it may be printed: secrets masked."""
        value = getattr(self, name)
        if value is None:
            return "(not set)"
        if SPEC_BY_NAME[name].secret:
            return mask_secret_setting(name, str(value))
        if isinstance(value, tuple):
            return ",".join(value)
        return str(value)

    def with_overrides(self, overrides: Mapping[str, Any], source: str) -> Settings:
        parsed = {name: _parse(SPEC_BY_NAME[name], raw, source) for name, raw in overrides.items()}
        sources = {**self.sources, **dict.fromkeys(overrides, source)}
        return replace(self, sources=sources, **parsed)


SPECS: tuple[Spec, ...] = tuple(
    Spec(item.name, **item.metadata["spec"]) for item in fields(Settings) if "spec" in item.metadata
)
SPEC_BY_NAME = {spec.name: spec for spec in SPECS}
# What the app's .env may set: what the settings file may (never the key itself).
_DOTENV_NAMES = frozenset(spec.env for spec in SPECS if spec.env and spec.in_toml)


def mask_secret_setting(name: str, value: str) -> str:
    if name == "database_url":
        from cosmic_backup.redact import mask_connection_string

        return mask_connection_string(value)
    return "********"


def _parse(spec: Spec, raw: Any, source: str) -> Any:
    try:
        value = spec.parse(raw)
    except ValueError as exc:
        raise UsageError(f"The setting {spec.name} from {source} is invalid: {exc}.") from exc
    if spec.bounds is not None:
        low, high = spec.bounds
        if not low <= value <= high:
            off = " (0 turns it off)" if low == 0 and spec.name.startswith("keep_") else ""
            raise UsageError(
                f"The setting {spec.name} from {source} is {value}; it must be at least {low} "
                f"and at most {high}{off}."
            )
    return value


def check_offsite_environment(environ: Mapping[str, str]) -> None:
    """The AWS variables boto reads itself, checked before any client is made, so a typo is
    one sentence naming it (and only the off-site copy fails, never the local backup)."""
    endpoint = environ.get("AWS_ENDPOINT_URL", "").strip()
    if endpoint and not re.match(r"^https?://[^/\s?#]+(/\S*)?$", endpoint):
        raise UsageError(
            f"The setting AWS_ENDPOINT_URL ('{_masked_url(endpoint)}') is not an http:// or "
            "https:// URL; write it as https://host[:port]."
        )
    attempts = environ.get("AWS_MAX_ATTEMPTS", "").strip()
    if attempts and (not attempts.isdigit() or not 1 <= int(attempts) <= 100):
        raise UsageError(
            f"The setting AWS_MAX_ATTEMPTS ('{attempts}') is not a whole number from 1 to 100."
        )
    style = environ.get("AWS_S3_ADDRESSING_STYLE", "").strip()
    if style and style not in ("path", "virtual", "auto"):
        raise UsageError(
            f"The setting AWS_S3_ADDRESSING_STYLE ('{style}') is not one of path, virtual, auto."
        )


def _masked_url(url: str) -> str:
    return re.sub(r"^([^/]*//)?[^/@]*@", r"\1***@", url)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"The settings file {path} cannot be read ({exc.strerror}).") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"The settings file {path} is not valid TOML: {exc}.") from exc
    unknown = sorted(set(data) - {spec.name for spec in SPECS if spec.in_toml})
    if unknown:
        raise UsageError(
            f"The settings file {path} has unknown settings: {', '.join(unknown)}. "
            f"Known: {', '.join(spec.name for spec in SPECS if spec.in_toml)}."
        )
    return data


def load_settings(
    project_root: Path,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge defaults, the app's `.env`, the project's `cosmic-backup.toml`, the environment
    and flags.

    The app's `.env` is read below everything else the operator sets because it is the
    app's file (the tool's own settings file and the real environment are more specific),
    and at all because under cron it is the one place that holds DATABASE_URL. Never the
    key from it: the config backups hold the `.env`, and files never hold the key.
    """
    environ = os.environ if environ is None else environ
    toml_path = project_root / CONFIG_FILE_NAME
    from_toml = _read_toml(toml_path) if toml_path.is_file() else {}
    from_dotenv = read_dotenv(project_root / DOTENV_FILE_NAME, _DOTENV_NAMES, environ)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in SPECS:
        raw, source = spec.default, "default"
        if spec.env and from_dotenv.get(spec.env, "") != "":
            raw, source = from_dotenv[spec.env], f"{DOTENV_FILE_NAME} {spec.env}"
        if spec.name in from_toml:
            raw, source = from_toml[spec.name], CONFIG_FILE_NAME
        if spec.env and environ.get(spec.env, "") != "":
            raw, source = environ[spec.env], f"environment {spec.env}"
        if flags and flags.get(spec.name) is not None:
            raw, source = flags[spec.name], "command line"
        values[spec.name] = None if raw is None else _parse(spec, raw, source)
        sources[spec.name] = source
    return Settings(project_root.resolve(), sources, **values)
