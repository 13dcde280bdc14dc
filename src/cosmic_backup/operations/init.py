"""`init`: set up an app's project root for cosmic-backup, never overwriting anything."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cosmic_backup.settings import CONFIG_FILE_NAME, SPECS

GITIGNORE_ENTRIES = (".backup_key", ".backup_keyring/", "tmp/backups/", "tmp/restores/", "logs/")
WRAPPERS = ("backup.sh", "restore.sh")


@dataclass
class InitStep:
    path: str
    action: str  # "created", "kept" (already there), "updated"


def wrapper_text(name: str) -> str:
    return resources.files("cosmic_backup").joinpath("templates", name).read_text()


def settings_template() -> str:
    lines = [
        "# cosmic-backup settings for this project. Every line is optional: the values shown",
        "# are the defaults. Environment variables (in brackets) and flags override this file.",
        "# Never put the key here: use the key file, BACKUP_KEY or BACKUP_KEY_COMMAND.",
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
    steps = []
    for name in WRAPPERS:
        steps.append(_create(root / "scripts" / name, wrapper_text(name), mode=0o755))
    steps.append(_create(root / CONFIG_FILE_NAME, settings_template(), mode=0o644))
    steps.append(_ensure_gitignore(root / ".gitignore"))
    return steps


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
    block = prefix + "# cosmic-backup: never commit the key, backups or logs\n" + "\n".join(missing)
    with path.open("a") as handle:
        handle.write(
            ("\n" if existing and not path.read_text().endswith("\n") else "") + block + "\n"
        )
    return InitStep(str(path), "updated" if existing else "created")
