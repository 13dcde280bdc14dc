"""The peers (borg, restic) and the shared helpers of the throughput benchmarks.

borg and restic are compared, never depended on: when one is missing, `available()`
installs the distribution's package (`apt-get install borgbackup restic`, as root) for
the benchmark only, and a peer that still cannot run is left out with a printed note.

Each peer gets a fresh repository per run (created untimed, like a repository that
exists before the nightly backup), with its passphrase in the environment
(BORG_PASSPHRASE, RESTIC_PASSWORD: never in argv) and its cache and config in the run's
own folder (BORG_BASE_DIR, RESTIC_CACHE_DIR), so nothing of an earlier run helps it.
borg: `borg init --encryption=repokey`, default compression (lz4). restic: `restic init`
(its default repository version and compression).
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
from pathlib import Path

PEERS = ["borg", "restic"]
PACKAGES = {"borg": "borgbackup", "restic": "restic"}
PASSPHRASE = "bench peer passphrase"  # noqa: S105 - the throwaway repositories' own


def pipeline(command: str) -> list[str]:
    """argv that runs a shell pipeline failing when any stage fails (dash has no pipefail)."""
    return ["bash", "-o", "pipefail", "-c", command]


def tree_bytes(path: Path) -> int:
    """The bytes of every file under `path`: what a repository or folder stores."""
    if path.is_file():
        return path.stat().st_size
    return sum(
        (Path(folder) / name).stat().st_size for folder, _, names in os.walk(path) for name in names
    )


def root_bytes(backups: Path) -> int:
    """What a backup root stores: its files without `store/cache`, which is local and
    never stored or uploaded (as restic's cache lives outside its repository)."""
    if not backups.exists():
        return 0
    cache = backups / "store" / "cache"
    return tree_bytes(backups) - (tree_bytes(cache) if cache.exists() else 0)


def _version(name: str) -> str:
    argv = [name, "--version"] if name == "borg" else [name, "version"]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    words = result.stdout.split()
    return words[1] if result.returncode == 0 and len(words) > 1 else ""


def _install(names: list[str]) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    packages = [PACKAGES[name] for name in names]
    print(f"installing {' '.join(packages)} (apt-get) for the comparison only", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            print(f"note: {' '.join(argv)} failed: {result.stderr.strip()[-300:]}")
            return


def available(wanted: list[str]) -> list[str]:
    """The peers of `wanted` that can run, installing missing ones once; notes the rest."""
    missing = [name for name in wanted if not shutil.which(name)]
    if missing:
        _install(missing)
    found = []
    for name in wanted:
        if shutil.which(name) and _version(name):
            found.append(name)
        else:
            print(f"note: {name} is not installed and could not be; it is left out", flush=True)
    return found


class Peer:
    """One peer's repository and environment under `base`, fresh for each run."""

    def __init__(self, name: str, base: Path) -> None:
        self.name = name
        self.version = _version(name)
        self.base = base
        self.repo = base / "repo"
        # Added to the caller's environment (which may hold PGHOST & co for pg_dump).
        self.vars = {
            "BORG_PASSPHRASE": PASSPHRASE,
            "BORG_BASE_DIR": str(base / "home"),
            "RESTIC_PASSWORD": PASSPHRASE,
            "RESTIC_CACHE_DIR": str(base / "cache"),
        }

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **self.vars}

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    def fresh(self) -> None:
        """An empty repository and cache: created here, untimed."""
        shutil.rmtree(self.base, ignore_errors=True)
        self.base.mkdir(parents=True)
        if self.name == "borg":
            argv = ["borg", "init", "--encryption=repokey", str(self.repo)]
        else:
            argv = ["restic", "init", "--repo", str(self.repo)]
        result = subprocess.run(argv, env=self.env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {result.stderr.strip()}")

    def stdin_backup(self, producer: str) -> list[str]:
        """`producer | <peer's backup of stdin>` as argv, e.g. a raw pg_dump."""
        repo = shlex.quote(str(self.repo))
        if self.name == "borg":
            peer = f"borg create --stdin-name db.dump {repo}::A -"
        else:
            peer = f"restic --repo {repo} backup --stdin --stdin-filename db.dump --host bench"
        return pipeline(f"{producer} | {peer}")

    def folder_backup(self, parent: Path, folder: str) -> list[str]:
        """Back up `parent/folder`, stored as the relative path `folder`."""
        repo, name = shlex.quote(str(self.repo)), shlex.quote(folder)
        if self.name == "borg":
            peer = f"borg create {repo}::A {name}"
        else:
            peer = f"restic --repo {repo} backup --host bench {name}"
        return pipeline(f"cd {shlex.quote(str(parent))} && {peer}")

    def fresh_backup(self, parent: Path, folder: str) -> list[str]:
        """A fresh repository now (untimed), and the argv that backs up into it."""
        self.fresh()
        return self.folder_backup(parent, folder)

    def folder_restore(self, target: Path) -> list[str]:
        """Restore the one snapshot into the (empty) folder `target`."""
        repo, into = shlex.quote(str(self.repo)), shlex.quote(str(target))
        if self.name == "borg":
            return pipeline(f"mkdir -p {into} && cd {into} && borg extract {repo}::A")
        return pipeline(f"restic --repo {repo} restore latest --target {into}")

    def stored(self) -> int:
        return tree_bytes(self.repo)


def files_peers(leave_out: bool, base: Path) -> list[Peer]:
    """borg and restic for the files benchmark, each in its own folder under `base`."""
    return [] if leave_out else [Peer(name, base / f"peer-{name}") for name in available(PEERS)]


def machine() -> str:
    """One line on where the figures come from: CPU model, cores, memory, kernel."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        memory = Path("/proc/meminfo").read_text().split()[1]
        gib = f"{int(memory) / 2**20:.0f} GiB RAM"
    except (OSError, IndexError, ValueError):
        gib = "RAM unknown"
    sha = " (SHA-NI)" if "sha_ni" in _cpu_flags() else ""
    cores = len(os.sched_getaffinity(0))
    return f"{model or platform.processor()}{sha}, {cores} cores, {gib}, Linux {platform.release()}"


def _cpu_flags() -> str:
    try:
        return next(
            (
                line
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("flags")
            ),
            "",
        )
    except OSError:
        return ""
