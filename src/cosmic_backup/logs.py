"""Logging to ``./logs``: one file a day, a run id on every line, secrets masked."""

from __future__ import annotations

import json
import logging
import os
import secrets
from datetime import datetime
from pathlib import Path

from cosmic_backup.errors import OperationFailed
from cosmic_backup.redact import redact

LOGGER_NAME = "cosmic_backup"


def new_run_id() -> str:
    return secrets.token_hex(4)


class _RedactingFormatter(logging.Formatter):
    def __init__(self, run_id: str, fmt: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.fmt = fmt

    def format(self, record: logging.LogRecord) -> str:
        message = redact(record.getMessage())
        if record.exc_info and record.levelno >= logging.ERROR:
            message += "\n" + redact(self.formatException(record.exc_info))
        stamp = datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="seconds")
        if self.fmt == "json":
            return json.dumps(
                {
                    "time": stamp,
                    "level": record.levelname.lower(),
                    "run_id": self.run_id,
                    "message": message,
                },
                ensure_ascii=False,
            )
        return f"{stamp} [{self.run_id}] {record.levelname:<7} {message}"


def log_file_for_today(log_dir: Path) -> Path:
    return log_dir / f"cosmic-backup-{datetime.now().astimezone():%Y-%m-%d}.log"


def setup_logging(log_dir: Path, run_id: str, fmt: str = "text") -> tuple[logging.Logger, Path]:
    """Attach today's private log file to the package logger; returns it and the file's path."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        if getattr(handler, "_cosmic_file", False):
            logger.removeHandler(handler)
            handler.close()
    path = log_file_for_today(log_dir)
    try:
        log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    except OSError as exc:
        raise OperationFailed(
            f"The log file {path} cannot be created ({exc.strerror}); check that "
            "BACKUP_LOG_DIR names a folder you can write to."
        ) from None
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_RedactingFormatter(run_id, fmt))
    handler._cosmic_file = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False
    return logger, path


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


# Set on an error whose sentence a run has already logged with more context (a backup's
# failure record names its backup id), so the command's end does not log it twice.
LOGGED_MARK = "_cosmic_logged"


def mark_logged(error: BaseException) -> None:
    setattr(error, LOGGED_MARK, True)


def log_failure(command: str, error: BaseException, message: str) -> None:
    """A failed command's one sentence in today's log file as well as on stderr (cron's
    mail and a closed terminal keep nothing), once; nothing before the runtime opened
    the log file (a usage error has no log to go to)."""
    logger = get_logger()
    attached = any(getattr(handler, "_cosmic_file", False) for handler in logger.handlers)
    if attached and not getattr(error, LOGGED_MARK, False):
        logger.error("%s failed: %s", command, message)
