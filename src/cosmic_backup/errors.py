"""User-facing errors: each carries its one sentence and its documented exit code.

Raise them where the cause is known; the CLI only renders them. Anything that is not a
`CosmicError` is a bug and shows a traceback only with ``--debug``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented process exit codes (README "Exit codes")."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    PARTIAL = 3
    NOT_FOUND = 4
    KEY = 5
    INTEGRITY = 6
    LOCKED = 7
    UNHEALTHY = 8
    INTERRUPTED = 130


class CosmicError(Exception):
    """An error with a sentence for the operator: what is wrong and what to do."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(CosmicError):
    """The command line or a setting is malformed."""

    exit_code = ExitCode.USAGE


class OperationFailed(CosmicError):
    """The operation could not be carried out (database unreachable, tool missing...)."""

    exit_code = ExitCode.FAILURE


class NotConfigured(OperationFailed):
    """A component has nothing to back up (no DATABASE_URL, no folders...)."""


class NotFound(CosmicError):
    """No backup matches what was asked for."""

    exit_code = ExitCode.NOT_FOUND


class KeyProblem(CosmicError):
    """The key is missing, unreadable, insecure or not the one a backup was made with."""

    exit_code = ExitCode.KEY


class IntegrityError(CosmicError):
    """A backup or manifest fails its MAC or structural check: corrupted or tampered."""

    exit_code = ExitCode.INTEGRITY


class Locked(CosmicError):
    """Another run holds the backup root's lock."""

    exit_code = ExitCode.LOCKED


class Interrupted(BaseException):
    """The run was interrupted (SIGINT/SIGTERM).

    Not a `CosmicError`: the handlers meant for user errors (``except CosmicError``) can
    never swallow it, so an interrupt always ends the run with exit code 130.
    """

    exit_code = ExitCode.INTERRUPTED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
