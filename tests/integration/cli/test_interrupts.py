"""Ctrl-C is never swallowed: wherever it lands, the run ends with exit code 130.

To interrupt at an exact moment, the run is made to block reading a named pipe (FIFO):
the test's ``open`` of the pipe for writing returns only once the run has opened it for
reading, so the signal arrives while the run is inside that step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

from cosmic_backup.format.keys import Key
from cosmic_backup.format.manifest import Manifest, dump_manifest
from tests.conftest import Project

KEY = "interrupt-test-passphrase-0123456789"
OTHER_KEY = Key(b"another-key-whose-keyring-file-is-a-pipe")


def _interrupt_when_read(process: subprocess.Popen[str], fifo: Path) -> tuple[int, str]:
    """Wait until `process` opens `fifo` for reading, send SIGINT, return its exit and stderr."""
    opened = threading.Event()

    def writer() -> None:
        fd = os.open(fifo, os.O_WRONLY)  # blocks until the reader opens it
        opened.set()
        process.wait(timeout=60)
        os.close(fd)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    assert opened.wait(timeout=60), "the run never reached the step under test"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    thread.join(timeout=5)
    return process.returncode, stderr


def test_sigint_during_the_retention_after_a_backup_exits_130(project: Project) -> None:
    """Retention reads an old manifest whose key is looked up in the keyring: a pipe."""
    config = project.backups / "config"
    config.mkdir(parents=True)
    old = Manifest(
        "config-20200101T000000Z",
        "config",
        "ok",
        "full",
        ["manual"],
        "2020-01-01T00:00:00.000000Z",
        "2020-01-01T00:00:01.000000Z",
        "0",
        key_fingerprint=OTHER_KEY.fingerprint,
    )
    (config / f"{old.id}.manifest.json").write_bytes(dump_manifest(old, OTHER_KEY))
    keyring = project.root / ".backup_keyring"
    keyring.mkdir(mode=0o700)
    fifo = keyring / f"{OTHER_KEY.fingerprint}.key"
    os.mkfifo(fifo, 0o600)

    process = project.popen("backup", "config", env={"BACKUP_KEY": KEY})
    code, stderr = _interrupt_when_read(process, fifo)

    assert code == 130, stderr
    assert "retention after the backup failed" not in stderr
    assert "Stopped by SIGINT" in stderr


def test_sigint_during_the_key_command_exits_130(project: Project) -> None:
    fifo = project.root / "passphrase.pipe"
    os.mkfifo(fifo, 0o600)
    process = project.popen("key", "fingerprint", env={"BACKUP_KEY_COMMAND": f"cat {fifo}"})
    code, stderr = _interrupt_when_read(process, fifo)

    assert code == 130, stderr
    assert "BACKUP_KEY_COMMAND" not in stderr
