"""Watching other processes' argument lists through /proc, as any local user could."""

from __future__ import annotations

import os
import threading
import time
from types import TracebackType


def command_lines() -> dict[int, bytes]:
    """pid -> its NUL-separated argument list, for every live (non-zombie) process."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{entry.name}/cmdline", "rb").read()  # noqa: SIM115
        except OSError:
            continue
        if cmdline:  # a zombie's is empty
            found[int(entry.name)] = cmdline
    return found


def running_with(fragment: bytes) -> list[bytes]:
    return [line for line in command_lines().values() if fragment in line]


class CommandLineWatcher(threading.Thread):
    """Samples every process's argument list every few milliseconds while in its block."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: set[bytes] = set()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.seen.update(command_lines().values())
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

    def programs(self, name: str, mentioning: str) -> list[list[bytes]]:
        """The argument lists seen of program `name` that mention `mentioning` (a database
        name, say: other test sessions may run the same programs meanwhile)."""
        lists = [line.split(b"\0") for line in self.seen if mentioning.encode() in line]
        return [argv for argv in lists if os.path.basename(argv[0]) == name.encode()]
