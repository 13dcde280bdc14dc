"""The app's version at backup time: APP_VERSION, or the project root's git commit."""

from __future__ import annotations

import re
from pathlib import Path

_SHA = re.compile(r"^[0-9a-f]{40}$")


def app_version(project_root: Path, configured: str | None) -> str | None:
    if configured:
        return configured
    commit = git_commit(project_root)
    return f"git:{commit[:12]}" if commit else None


def git_commit(project_root: Path) -> str | None:
    """HEAD's commit, read from .git directly (no git binary needed; never raises)."""
    git_dir = project_root / ".git"
    try:
        head = (git_dir / "HEAD").read_text().strip()
        if _SHA.match(head):
            return head
        if not head.startswith("ref: "):
            return None
        ref = head.removeprefix("ref: ")
        ref_file = git_dir / ref
        if ref_file.is_file():
            commit = ref_file.read_text().strip()
            return commit if _SHA.match(commit) else None
        packed = git_dir / "packed-refs"
        for line in packed.read_text().splitlines() if packed.is_file() else []:
            sha, _, name = line.partition(" ")
            if name == ref and _SHA.match(sha):
                return sha
    except OSError:
        return None
    return None
