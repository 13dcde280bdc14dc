"""The allocator's settings: freed MiB buffers stay with the process (cli/allocator.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

ROUNDS = 50
# Eight MiB-sized buffers made and freed, fifty times, as a restore's threads do per chunk.
CHURN = f"""
import resource, sys
if sys.argv[1] == "tuned":
    from cosmic_backup.cli.allocator import keep_freed_memory
    keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({ROUNDS}):
    buffers = [b"x" * (1 << 20) for _ in range(8)]
    del buffers
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_buffers_are_reused_instead_of_faulted_in_again() -> None:
    eight_mib_in_pages = 8 * 256
    plain, tuned = _page_faults("plain"), _page_faults("tuned")
    # Untuned, glibc hands the 8 MiB back to the kernel every round and faults them in
    # again; tuned, the pages are faulted in once.
    assert plain > 5 * eight_mib_in_pages  # 22,000 here
    assert tuned < 2 * eight_mib_in_pages  # 2,047 here
