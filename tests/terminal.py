"""Running the real CLI under a pseudo-terminal, and reading the progress bars it drew.

Its stdout and stderr are the pty's slave end, as on an operator's terminal; the test
reads everything drawn from the master end. Off a terminal (cron, a pipe) nothing
decorative may appear: `ANSI_ESCAPE` and `RATE` find what must then be absent.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
from dataclasses import dataclass

from tests.conftest import Project, clean_environ

ANSI_ESCAPE = re.compile(r"\x1b\[")
RATE = re.compile(r"[0-9.]+ (?:[kMG]B|bytes)/s")
_ESCAPE_SEQUENCE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_UNITS = {"bytes": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9}
_AMOUNTS = re.compile(r"(?P<done>[0-9.]+)/(?P<total>[0-9.]+) (?P<unit>bytes|kB|MB|GB)")


def run_on_terminal(
    project: Project, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run the CLI with a pty as its terminal; return its exit code and all it drew."""
    master, slave = pty.openpty()
    extra = {**project.env, "COLUMNS": "160", "TERM": "xterm", **(env or {})}
    process = subprocess.Popen(
        project.command(*args),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=clean_environ(extra),
        cwd=project.root,
    )
    os.close(slave)
    drawn = bytearray()
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        drawn += data
    os.close(master)
    return process.wait(timeout=60), drawn.decode(errors="replace")


@dataclass(frozen=True)
class Frame:
    """One drawing of a bar: the bytes it showed done and its total, both in bytes
    (as rounded on screen: one decimal of the unit), and the unit's size."""

    done: float
    total: float
    unit: int
    line: str  # the whole line, for its rate and ETA

    def shows(self, size: int) -> bool:
        """Whether the bar's total is `size` bytes, as far as the screen's rounding tells."""
        return abs(self.total - size) <= self.unit * 0.05 + 1


def frames(drawn: str, label: str) -> list[Frame]:
    """Every drawing of the bar whose description starts with `label`, in order."""
    found = []
    for line in re.split(r"[\r\n]", _ESCAPE_SEQUENCE.sub("", drawn)):
        if not line.startswith(label):
            continue
        amounts = _AMOUNTS.search(line)
        if amounts is not None:
            unit = _UNITS[amounts["unit"]]
            done, total = float(amounts["done"]) * unit, float(amounts["total"]) * unit
            found.append(Frame(done, total, unit, line))
    return found
