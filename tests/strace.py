"""A command killed by strace at an exact system call: the kills of the crash tests."""

from __future__ import annotations

import os
import subprocess
from typing import Any


def killed_at(
    syscall: str, when: int, command: list[str], **run: Any
) -> subprocess.CompletedProcess[bytes]:
    """Run `command` under strace, which sends it SIGKILL at its `when`-th `syscall`
    (strace counts per thread); `run` goes to subprocess.run (cwd, env)."""
    return subprocess.run(
        [
            "strace",
            "-qq",
            "-f",
            "-o",
            os.devnull,
            "-e",
            f"trace={syscall}",
            "-e",
            f"inject={syscall}:signal=KILL:when={when}",
            *command,
        ],
        capture_output=True,
        check=False,
        **run,
    )
