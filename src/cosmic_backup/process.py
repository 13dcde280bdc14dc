"""The one place that starts subprocesses (pg_dump, pg_restore, psql, initdb...).

Each child runs in its own process group, so a timeout or an interrupt kills it and
anything it started; its stderr is collected in the background (bounded) for the error
message; secrets go in its environment, never its argument list, and what is logged is
redacted. The program is looked up before anything starts, so a missing one is a
sentence, not a traceback.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, BinaryIO, TypeVar

from cosmic_backup.errors import OperationFailed
from cosmic_backup.redact import redact

T = TypeVar("T")
STDERR_LINES_KEPT = 20
# PostgreSQL's severities and its tools' own "error:" prefix. A notice's DETAIL lines
# ("drop cascades to ...") are noise; those right after the error, and its HINT, are not.
# The tools print theirs as "pg_dump: detail: ..." ("Error message from server: ERROR:
# invalid memory alloc request size ..." follows a bare "PQgetResult() failed.").
ERROR_LINE = re.compile(r"\b(ERROR|FATAL|PANIC):|\berror:")
ERROR_NOTE = re.compile(r"(HINT|DETAIL):|[\w.-]+: (hint|detail):")
PUMP_CHUNK = 1024 * 1024


def require_program(program: str) -> str:
    """The path of `program` (a path, or a name looked up in PATH), or one sentence."""
    found = program if os.sep in program else shutil.which(program)
    if found and Path(found).is_file() and os.access(found, os.X_OK):
        return found
    raise OperationFailed(f"The program {program} was not found or is not executable.")


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class Child:
    """A running subprocess with a deadline and its stderr's last lines."""

    def __init__(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str],
        timeout: float,
        log: logging.Logger,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = subprocess.PIPE,
    ) -> None:
        self.name = Path(argv[0]).name
        self._expired = False  # its time limit passed
        self._signalled = False  # we sent it SIGKILL: a time limit, an interrupt, a sibling
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES_KEPT)
        argv = [require_program(argv[0]), *argv[1:]]
        log.info("running %s", redact(" ".join(argv)))
        self.process = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: killed as one
        )
        self._reader = threading.Thread(target=self._collect_stderr, daemon=True)
        self._reader.start()
        self._timer = threading.Timer(timeout, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _collect_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._stderr.append(redact(line))

    def _expire(self) -> None:
        self._expired = True
        self.kill()

    def kill(self) -> None:
        self._signalled = True  # before the signal: whoever reaps it must see the flag
        _kill_group(self.process.pid)

    @property
    def stopped(self) -> bool:
        """Stopped by us: it died of the SIGKILL we sent. Its exit status decides, not
        whether we had called kill(): a child that was already exiting when a sibling's
        watcher killed it (poll() still None while another thread waits for it) exited by
        itself, and its own error is the cause."""
        return self._signalled and self.process.returncode == -signal.SIGKILL

    @property
    def timed_out(self) -> bool:
        return self._expired and self.stopped

    @property
    def broken_pipe(self) -> bool:
        """Killed by SIGPIPE: whoever read its output went away first."""
        return self.process.returncode == -signal.SIGPIPE

    @property
    def ended_badly(self) -> bool:
        return self.process.poll() not in (None, 0)

    @property
    def failed_by_itself(self) -> bool:
        """Ended badly for a reason of its own, not because we stopped it."""
        return self.process.returncode not in (None, 0) and not self.stopped

    def wait(self) -> int:
        code = self.process.wait()
        self._timer.cancel()
        self._reader.join(timeout=5)
        return code

    def stderr_tail(self, lines: int = 3) -> str:
        """What explains a failure: the first error lines and their hints when the child
        printed any (the first error is the cause; what follows it, such as a lost
        connection's aftermath or a CONTEXT line, is not), else its last lines."""
        return error_tail(list(self._stderr), lines)

    def said(self) -> str:
        """`stderr_tail` for a sentence that already names the program and says it
        failed: without its "pg_dump: " before each line and the first line's "error: ",
        nor a final period."""
        own = f"{self.name}: "
        lines = [line.removeprefix(own) for line in error_lines(list(self._stderr))]
        if not lines:
            return "no error output"
        lines[0] = lines[0].removeprefix("error: ")
        return " | ".join(lines).rstrip(" .;")

    @property
    def stderr_text(self) -> str:
        return "\n".join(self._stderr)


class Failures:
    """Which of linked children failed first, for the one sentence that explains a run.

    Each child's watcher notes its child when it ends: the first to have failed by itself
    is kept, whatever order the watchers then run in. A child killed by SIGPIPE never
    takes the blame: its reader ended first (psql stops at its ERROR, then pg_restore's
    write into the pipe kills it, often before psql is even reaped).
    """

    def __init__(self, children: tuple[Child, ...]) -> None:
        self._children = children
        self._lock = threading.Lock()
        self._first: Child | None = None

    def note(self, child: Child) -> None:
        with self._lock:
            if self._first is None and child.failed_by_itself and not child.broken_pipe:
                self._first = child

    def first_failure(self) -> Child | None:
        """The child whose failure explains the others', once they have all ended: the
        first noted; else the first, in the order given, that failed by itself (one
        killed by SIGPIPE after the others); else the first that ended badly."""
        if self._first is not None:
            return self._first
        ended_badly = [c for c in self._children if c.process.returncode not in (None, 0)]
        own = [c for c in ended_badly if c.failed_by_itself]
        ranked = sorted(own, key=lambda c: c.broken_pipe) + ended_badly
        return ranked[0] if ranked else None


@contextlib.contextmanager
def running(*children: Child) -> Iterator[Failures]:
    """Kill every child if the block fails (or is interrupted), so nothing is left running.

    Children joined by pipes are linked: when one ends badly, the others are stopped at
    once. Otherwise its siblings block writing into a pipe that nobody reads any more, and
    our own pump blocks behind them until the time limit (small streams hide this: they
    fit in the pipe buffers). What it yields says, after the block, which failed first.
    """
    failures = Failures(children)
    watchers = (
        [_stop_siblings_on_failure(c, children, failures) for c in children]
        if len(children) > 1
        else []
    )
    try:
        yield failures
    except BaseException:
        for child in children:
            child.kill()
        for child in children:
            child.wait()
        raise
    finally:
        for watcher in watchers:
            watcher.join(timeout=5)


def _stop_siblings_on_failure(
    child: Child, children: tuple[Child, ...], failures: Failures
) -> threading.Thread:
    def watch() -> None:
        if child.process.wait() != 0:
            failures.note(child)  # before stopping the others: they fail because of it
            for sibling in children:
                if sibling is not child:
                    sibling.kill()

    watcher = threading.Thread(target=watch, daemon=True, name=f"watch-{child.name}")
    watcher.start()
    return watcher


def pump(source: BinaryIO, sink: IO[bytes]) -> None:
    """Copy `source` into a child's stdin in bounded chunks, then close it.

    A child that stops reading early is not an error here: its exit code and stderr say
    why, and the caller checks them.
    """
    try:
        while chunk := source.read(PUMP_CHUNK):
            sink.write(chunk)
    except BrokenPipeError:
        pass
    finally:
        with contextlib.suppress(BrokenPipeError):
            sink.close()


# -- who owns a leftover -------------------------------------------------------------------
def process_start(pid: int) -> str | None:
    """The start time of `pid` (field 22 of /proc/PID/stat): a pid alone may be reused.
    None when it is gone or a zombie (killed, not yet reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def process_mark(pid: int | None = None) -> dict[str, Any]:
    """What names a process for a later run: its pid and start time (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "started": process_start(pid)}


def process_alive(pid: int) -> bool:
    """Whether a process of that pid runs (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_alive(mark: object) -> bool:
    """Is the process a `process_mark` names still running (itself, not a reused pid)?"""
    if not isinstance(mark, dict):
        return False
    try:
        pid = int(mark["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    started = process_start(pid)
    return started is not None and started == mark.get("started")


def error_tail(kept: list[str], lines: int = 3) -> str:
    """The lines of a program's output that explain its failure (see Child.stderr_tail)."""
    chosen = error_lines(kept, lines)
    return " | ".join(chosen) if chosen else "no error output"


def error_lines(kept: list[str], lines: int = 3) -> list[str]:
    """The first error line and the DETAIL and HINT lines that belong to it; else the
    last `lines` lines."""
    first = next((i for i, line in enumerate(kept) if ERROR_LINE.search(line)), None)
    if first is None:
        return kept[-lines:]
    follows = itertools.takewhile(ERROR_NOTE.match, kept[first + 1 :])
    return [kept[first], *follows][:lines]


def run_captured(
    argv: list[str], *, timeout: float, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a short command to completion (a --version, initdb, pg_ctl) and keep its output.

    Past `timeout` its whole process group is killed and the sentence says so.
    """
    argv = [require_program(argv[0]), *argv[1:]]
    with subprocess.Popen(
        argv,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        out, err = _finish_or_kill(
            process, timeout, lambda limit: process.communicate(timeout=limit)
        )
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


def run_shown(
    argv: list[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    out: IO[str] | None,
    timeout: float,
    errors: list[str] | None = None,
) -> int:
    """Run a command to completion in exactly `env` (nothing of ours is inherited, unlike
    the runners above), its output going to `out`; its exit code.

    For commands shown to a person as they run (the demo). Past `timeout`, or when we are
    interrupted, its whole process group is killed. `errors`, when given, receives the
    lines it printed that begin with "error:" (its output then passes through a pipe of
    ours on its way to `out`).
    """
    argv = [require_program(argv[0]), *argv[1:]]
    if errors is None:
        process = subprocess.Popen(
            argv, env=dict(env), cwd=cwd, stdout=out, stderr=out, start_new_session=True
        )
        return _finish_or_kill(process, timeout, lambda limit: process.wait(timeout=limit))
    process = subprocess.Popen(
        argv,
        env=dict(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    relay = threading.Thread(target=_relay, args=(process, out, errors), daemon=True)
    relay.start()
    code = _finish_or_kill(process, timeout, lambda limit: process.wait(timeout=limit))
    relay.join()
    return code


def _relay(process: subprocess.Popen[str], out: IO[str] | None, errors: list[str]) -> None:
    assert process.stdout is not None
    sink = out or sys.stdout
    for line in process.stdout:
        sink.write(line)
        sink.flush()
        if line.startswith("error:"):
            errors.append(line.removeprefix("error:").strip())


def _finish_or_kill(
    process: subprocess.Popen[Any], timeout: float, finish: Callable[[float | None], T]
) -> T:
    """`finish(timeout)` (wait for it, collecting what it printed); past the time limit,
    or when we are interrupted, its whole process group is killed first."""
    try:
        return finish(timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process.pid)
        finish(None)
        name = Path(str(process.args[0])).name  # type: ignore[index]
        raise OperationFailed(
            f"{name} did not finish within {timeout:g} s and was stopped."
        ) from None
    except BaseException:
        _kill_group(process.pid)
        raise
