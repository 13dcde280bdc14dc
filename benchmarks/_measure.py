"""Running a command and measuring it: wall time and the child's own peak RSS."""

from __future__ import annotations

import os
import subprocess
import time


def measure(
    argv: list[str] | str, env: dict[str, str] | None = None, shell: bool = False
) -> tuple[float, float]:
    """(seconds, peak RSS in MiB of the child itself) for one run; fails loudly."""
    start = time.perf_counter()
    process = subprocess.Popen(
        argv,
        env=env,
        shell=shell,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        error = process.stderr.read().decode() if process.stderr else ""
        raise SystemExit(f"{argv} failed ({process.returncode}): {error}")
    return elapsed, usage.ru_maxrss / 1024
