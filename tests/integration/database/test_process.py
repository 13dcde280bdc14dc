"""The one subprocess runner (cosmic_backup.process), with real processes."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path

import pytest

from cosmic_backup.errors import OperationFailed
from cosmic_backup.process import (
    Child,
    Failures,
    pump,
    require_program,
    run_captured,
    run_shown,
    running,
)
from cosmic_backup.redact import register_secret

LOG = logging.getLogger("cosmic_backup")


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent that will never reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_time_limit_kills_the_child_and_what_it_started() -> None:
    child = Child(["/bin/sh", "-c", "sleep 60 & echo $!; wait"], env={}, timeout=0.5, log=LOG)
    assert child.process.stdout is not None
    grandchild = int(child.process.stdout.readline())
    began = time.monotonic()
    assert child.wait() != 0
    assert child.timed_out and time.monotonic() - began < 5
    deadline = time.monotonic() + 5
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(grandchild)


def test_the_last_lines_of_stderr_are_kept_and_redacted() -> None:
    register_secret("hunter2-process-secret")
    child = Child(
        [
            "/bin/sh",
            "-c",
            "for i in 1 2 3 4; do echo line $i >&2; done; "
            "echo 'auth with hunter2-process-secret' >&2; exit 3",
        ],
        env={},
        timeout=10,
        log=LOG,
    )
    assert child.wait() == 3 and not child.timed_out
    assert child.stderr_tail() == "line 3 | line 4 | auth with ***"


def test_the_first_error_and_its_hint_explain_a_failure_not_the_noise_around_it() -> None:
    script = (
        "echo 'psql:<stdin>:1: NOTICE:  drop cascades to 2 other objects' >&2; "
        "echo 'DETAIL:  drop cascades to table audit.log' >&2; "
        "echo 'psql:<stdin>:9: ERROR:  out of shared memory' >&2; "
        "echo 'HINT:  You might need to increase max_locks_per_transaction.' >&2; "
        "echo 'CONTEXT:  COPY big, line 7' >&2; "
        "echo 'psql:<stdin>:9: error: connection to server was lost' >&2; exit 3"
    )
    child = Child(["/bin/sh", "-c", script], env={}, timeout=10, log=LOG)
    assert child.wait() == 3
    assert child.stderr_tail() == (
        "psql:<stdin>:9: ERROR:  out of shared memory | "
        "HINT:  You might need to increase max_locks_per_transaction."
    )


def test_a_tools_detail_lines_carry_the_servers_error_into_the_sentence(tmp_path: Path) -> None:
    """pg_dump's own "error:" line says only "PQgetResult() failed."; the server's ERROR
    is on the "pg_dump: detail:" line after it (a 900 MB bytea, issue 18 item 13)."""
    stand_in = tmp_path / "pg_dump"  # a sentence names the program: its prefix goes
    stand_in.write_text(
        "#!/bin/sh\n"
        'echo \'pg_dump: error: Dumping the contents of table "files" failed: '
        "PQgetResult() failed.' >&2\n"
        "echo 'pg_dump: detail: Error message from server: ERROR:  invalid memory alloc "
        "request size 1073741824' >&2\n"
        "echo 'pg_dump: detail: Command was: COPY public.files (id, data) TO stdout;' >&2\n"
        "echo 'pg_dump: error: a worker process died unexpectedly' >&2\nexit 1\n"
    )
    stand_in.chmod(0o755)
    child = Child([str(stand_in)], env={}, timeout=10, log=LOG)
    assert child.wait() == 1
    assert "invalid memory alloc request size 1073741824" in child.stderr_tail()
    assert child.said() == (
        'Dumping the contents of table "files" failed: PQgetResult() failed. | '
        "detail: Error message from server: ERROR:  invalid memory alloc request size "
        "1073741824 | detail: Command was: COPY public.files (id, data) TO stdout"
    )


def test_when_one_linked_child_fails_the_other_is_stopped_at_once() -> None:
    """A writer blocked on a full pipe would otherwise wait for the time limit."""
    reader = Child(
        ["/bin/sh", "-c", "sleep 0.3; echo broke >&2; exit 4"],
        env={},
        timeout=60,
        log=LOG,
        stdin=subprocess.PIPE,
    )
    writer = Child(["/bin/sh", "-c", "sleep 60"], env={}, timeout=60, log=LOG)
    began = time.monotonic()
    with running(reader, writer):
        assert writer.wait() != 0
        assert reader.wait() == 4
    assert time.monotonic() - began < 5
    assert reader.failed_by_itself and not writer.failed_by_itself
    assert writer.stopped and not reader.stopped


RACE_ROUNDS = 400


def failing_reader_and_broken_writer() -> tuple[Child, Child]:
    """psql's and pg_restore's race, with stand-ins: a reader that reads a little, prints
    its ERROR and exits 3, and a writer blocked on the pipe into it, which dies of SIGPIPE
    as the reader's files close, often before the reader is reaped."""
    read_end, write_end = os.pipe()
    try:
        script = "head -c 65536 >/dev/null; echo 'ERROR:  the reader failed' >&2; exit 3"
        reader = Child(["/bin/sh", "-c", script], env={}, timeout=30, log=LOG, stdin=read_end)
        writer = Child(["yes"], env={}, timeout=30, log=LOG, stdout=write_end)
    finally:
        os.close(read_end)
        os.close(write_end)
    return reader, writer


def run_linked(first: Child, second: Child) -> Failures:
    with running(first, second) as failures:
        first.wait()
        second.wait()
    return failures


@pytest.mark.parametrize("order", ["reader first", "writer first"])
def test_the_child_that_failed_first_keeps_the_blame_in_every_round(order: str) -> None:
    """The watchers of both children wake at once; whichever runs first, the reader's own
    exit 3 is never taken for "stopped by us", and it is the one blamed."""
    wrong: list[str] = []
    for round_number in range(RACE_ROUNDS // 2):
        reader, writer = failing_reader_and_broken_writer()
        linked = (reader, writer) if order == "reader first" else (writer, reader)
        blamed = run_linked(*linked).first_failure()
        seen = (reader.process.returncode, reader.stopped, writer.failed_by_itself)
        # The writer died of SIGPIPE (its own failure, not blamed), or of our SIGKILL.
        writer_ended = writer.broken_pipe or writer.stopped
        if seen[:2] != (3, False) or not writer_ended or blamed is not reader:
            wrong.append(f"round {round_number}: {seen}, blamed {blamed and blamed.name}")
    assert not wrong, wrong[:5]
    assert "the reader failed" in reader.stderr_tail()


def test_a_child_that_exited_by_itself_is_not_stopped_by_a_later_kill() -> None:
    child = Child(["/bin/sh", "-c", "exit 3"], env={}, timeout=10, log=LOG)
    assert child.wait() == 3
    child.kill()
    assert child.failed_by_itself and not child.stopped and not child.timed_out


def test_the_environment_reaches_the_child_and_argv_is_logged_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    register_secret("pw-in-env-only")
    caplog.set_level(logging.INFO, logger="cosmic_backup")
    child = Child(
        ["/bin/sh", "-c", 'test "$PGPASSWORD" = pw-in-env-only', "pw-in-env-only"],
        env={"PGPASSWORD": "pw-in-env-only"},
        timeout=10,
        log=LOG,
    )
    assert child.wait() == 0
    assert "running /bin/sh" in caplog.text and "pw-in-env-only" not in caplog.text


def test_a_failing_block_kills_every_child() -> None:
    first = Child(["sleep", "60"], env={}, timeout=60, log=LOG)
    second = Child(["sleep", "60"], env={}, timeout=60, log=LOG)
    with pytest.raises(KeyboardInterrupt), running(first, second):
        raise KeyboardInterrupt
    assert first.process.returncode is not None and second.process.returncode is not None
    assert not alive(first.process.pid) and not alive(second.process.pid)


def test_a_missing_program_is_one_sentence() -> None:
    with pytest.raises(OperationFailed, match="was not found or is not executable"):
        require_program("/nonexistent/pg_dump")
    with pytest.raises(OperationFailed, match="no-such-program-xyz was not found"):
        Child(["no-such-program-xyz"], env={}, timeout=1, log=LOG)
    assert require_program("sh").endswith("/sh")


def test_run_captured_returns_output_and_stops_at_its_time_limit() -> None:
    done = run_captured(["/bin/sh", "-c", "echo out; echo err >&2; exit 4"], timeout=10)
    assert (done.returncode, done.stdout, done.stderr) == (4, "out\n", "err\n")
    began = time.monotonic()
    with pytest.raises(OperationFailed, match=r"sh did not finish within 0.5 s"):
        run_captured(["/bin/sh", "-c", "sleep 60 & sleep 60"], timeout=0.5)
    assert time.monotonic() - began < 5


def test_a_child_reading_nothing_does_not_block_the_writer(tmp_path: Path) -> None:
    """pump() tolerates a child that exits without reading its input."""
    child = Child(["/bin/sh", "-c", "exit 0"], env={}, timeout=10, log=LOG, stdin=subprocess.PIPE)
    assert child.process.stdin is not None
    big = tmp_path / "big"
    big.write_bytes(b"x" * (8 * 1024 * 1024))
    with big.open("rb") as source:
        pump(source, child.process.stdin)
    assert child.wait() == 0


def test_a_shown_command_runs_in_exactly_its_environment_and_is_stopped_at_its_limit(
    tmp_path: Path,
) -> None:
    out = (tmp_path / "out.txt").open("w+")
    script = 'echo "[$BACKUP_DIR] [$ONLY]"; pwd'
    env = {"ONLY": "mine", "PATH": "/usr/bin:/bin"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BACKUP_DIR", "/somewhere/else")  # the operator's: never inherited
        assert run_shown(["/bin/sh", "-c", script], env=env, cwd=tmp_path, out=out, timeout=10) == 0
    out.seek(0)
    assert out.read().split("\n")[:2] == ["[] [mine]", str(tmp_path)]
    began = time.monotonic()
    with pytest.raises(OperationFailed, match=r"did not finish within 0\.5 s"):
        run_shown(["/bin/sh", "-c", "sleep 30"], env=env, cwd=tmp_path, out=out, timeout=0.5)
    assert time.monotonic() - began < 5
