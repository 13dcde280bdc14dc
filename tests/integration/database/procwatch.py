"""Watching other processes' argument lists through /proc, as any local user could."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import TracebackType


def command_lines() -> list[bytes]:
    """The NUL-separated argument list of every live (non-zombie) process."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline:  # a zombie's is empty
            found.append(cmdline)
    return found


def is_program(line: bytes, program: str) -> bool:
    return os.path.basename(line.split(b"\0")[0]) == program.encode()


def running(program: str, mentioning: str) -> list[bytes]:
    """Argument lists of live processes of `program` that mention `mentioning`."""
    lines = command_lines()
    return [line for line in lines if mentioning.encode() in line and is_program(line, program)]


class CommandLineWatcher(threading.Thread):
    """Samples every process's argument list every few milliseconds while in its block."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: set[bytes] = set()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.seen.update(command_lines())
            time.sleep(0.002)

    def __enter__(self) -> CommandLineWatcher:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._done.set()
        self.join()

    def programs(self, name: str, mentioning: str) -> list[bytes]:
        """The argument lists seen of program `name` that mention `mentioning` (a database
        name, say: other test sessions may run the same programs meanwhile)."""
        return [
            line for line in self.seen if mentioning.encode() in line and is_program(line, name)
        ]
