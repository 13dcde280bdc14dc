"""`init`: set up an app's project root for cosmic-backup, never overwriting anything."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cosmic_backup.settings import CONFIG_FILE_NAME, SPECS

# The Python that ran `init`, for the wrappers: cron's PATH finds no virtualenv or pipx
# install. Machine-specific, so git-ignored, while the wrappers stay the same everywhere.
INSTALLATION_FILE = ".cosmic-backup-python"
GITIGNORE_ENTRIES = (
    ".backup_key",
    ".backup_keyring/",
    "tmp/backups/",
    "tmp/restores/",
    "logs/",
    INSTALLATION_FILE,
)
WRAPPERS = ("backup.sh", "restore.sh", "recover.sh")
# SHA-256 of the wrappers earlier versions wrote: found unchanged, they are replaced by
# today's (which find the recorded installation); edited ones are the operator's and kept.
EARLIER_WRAPPERS = {
    "backup.sh": {"9d7f924347111189c299886cad05247fdb204a7089136541a9ec33dd36bbc612"},
    "restore.sh": {"67ef46e168d57c91c3a06257ed925c94ee06382817580c762a65bb8827d57344"},
    "recover.sh": set(),
}


@dataclass
class InitStep:
    path: str
    action: str  # "created", "kept" (already there), "updated", "skipped"


def wrapper_text(name: str) -> str:
    return resources.files("cosmic_backup").joinpath("templates", name).read_text()


def settings_template() -> str:
    lines = [
        "# cosmic-backup settings for this project. Every line is optional: the values shown",
        "# are the defaults. Environment variables (in brackets) and flags override this file;",
        "# this file overrides the app's .env, which is read for the same variables.",
        "# Never put the key here: use the key file, BACKUP_KEY or BACKUP_KEY_COMMAND.",
        "# Keep DATABASE_URL and BACKUP_NOTIFY_URL (secrets) in the app's .env, private",
        "# (chmod 600), and out of this file, which may be committed.",
        "",
    ]
    for spec in SPECS:
        if not spec.in_toml:
            continue
        default = spec.default
        shown = (
            ""
            if default is None
            else (
                str(default).lower()
                if isinstance(default, bool)
                else str(default)
                if isinstance(default, int)
                else f'"{default}"'
            )
        )
        env = f" [{spec.env}]" if spec.env else ""
        lines.append(f"# {spec.help}{env}")
        lines.append(f"# {spec.name} = {shown}" if shown else f"# {spec.name} =")
        lines.append("")
    return "\n".join(lines)


def init_project(root: Path) -> list[InitStep]:
    steps = [_wrapper(root / "scripts" / name) for name in WRAPPERS]
    steps.append(_record_installation(root / INSTALLATION_FILE))
    steps.append(_create(root / CONFIG_FILE_NAME, settings_template(), mode=0o644))
    steps.append(_ensure_gitignore(root / ".gitignore"))
    return steps


def _wrapper(path: Path) -> InitStep:
    text = wrapper_text(path.name)
    if path.is_file() and _sha256(path) in EARLIER_WRAPPERS[path.name]:
        path.write_text(text)
        return InitStep(str(path), "updated")
    return _create(path, text, mode=0o755)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record_installation(path: Path) -> InitStep:
    """Write which Python runs this cosmic-backup (the wrappers run `<it> -m cosmic_backup`).

    sys.executable as it is, not resolved: a virtualenv's python is a symlink whose target
    does not see the virtualenv's packages.
    """
    if not sys.executable:  # an embedded interpreter: nothing to record
        return InitStep(str(path), "skipped")
    text = sys.executable + "\n"
    if path.is_file() and path.read_text() == text:
        return InitStep(str(path), "kept")
    action = "updated" if path.exists() else "created"
    path.write_text(text)
    return InitStep(str(path), action)


def _create(path: Path, text: str, mode: int) -> InitStep:
    if path.exists():
        return InitStep(str(path), "kept")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return InitStep(str(path), "created")


def _ensure_gitignore(path: Path) -> InitStep:
    existing = path.read_text().splitlines() if path.exists() else []
    missing = [entry for entry in GITIGNORE_ENTRIES if entry not in existing]
    if not missing:
        return InitStep(str(path), "kept")
    prefix = "\n" if existing and existing[-1].strip() else ""
    heading = "# cosmic-backup: never commit the key, backups, logs or this machine's install\n"
    block = prefix + heading + "\n".join(missing)
    with path.open("a") as handle:
        handle.write(
            ("\n" if existing and not path.read_text().endswith("\n") else "") + block + "\n"
        )
    return InitStep(str(path), "updated" if existing else "created")
