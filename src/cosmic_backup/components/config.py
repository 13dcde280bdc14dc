"""The configuration component: config files and folders plus a snapshot of the environment.

The archive holds ``files/<path relative to the project root>`` for each configured path
and ``environment.env``, the filtered environment as shell-quoted ``NAME=value`` lines.
A restore never overwrites anything: it extracts into a new review folder and reports
what differs from the current files and environment (names only, never values).
"""

from __future__ import annotations

import filecmp
import fnmatch
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cosmic_backup.components.archive import TarWriter, list_members, safe_extract
from cosmic_backup.components.base import (
    BackupRequest,
    Component,
    Produced,
    RestorePlan,
    RestoreReport,
    RestoreRequest,
    Source,
)
from cosmic_backup.components.protected import protected_paths
from cosmic_backup.errors import UsageError
from cosmic_backup.format.manifest import Manifest

ENV_MEMBER = "environment.env"
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FILES_MEMBER = "files"
REVIEW_ROOT = Path("tmp") / "restores"


@dataclass(frozen=True)
class ConfigSource(Source):
    paths: list[str] = field(default_factory=list)  # as stored in the archive
    missing: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    environment_variables: int = 0

    def summary(self) -> str:
        own = f"{self.files} files, {self.environment_variables} environment variables"
        return ", ".join(filter(None, [own, super().summary()]))


class ConfigComponent(Component):
    name = "config"
    payload = "tar"

    # -- backup -----------------------------------------------------------------------
    def check_configured(self) -> None:
        """Always configured: the environment snapshot alone is worth keeping."""

    def _paths(self) -> list[tuple[Path, str]]:
        """(absolute path, name inside files/) for each configured path."""
        root = self.settings.project_root
        resolved = []
        for raw in self.settings.config_paths:
            path = self.settings.resolve(raw)
            try:
                arcname = str(path.relative_to(root))
            except ValueError:  # outside the project: keep it apart, by its full path
                arcname = "external" + str(path)
            resolved.append((path, arcname))
        return resolved

    def produce(self, out: BinaryIO, request: BackupRequest) -> Produced:
        present = [(path, arc) for path, arc in self._paths() if path.exists() or path.is_symlink()]
        missing = [arc for path, arc in self._paths() if (path, arc) not in present]
        environment = environment_snapshot(
            os.environ, self.settings.env_include, self.settings.env_exclude
        )
        # The key, keyring, logs and backups never go in, whatever the configured paths.
        with TarWriter(out, self.log, exclude=protected_paths(self.settings)) as tar:
            for path, arcname in present:
                tar.add_tree(path, f"{FILES_MEMBER}/{arcname}")
            tar.add_bytes(ENV_MEMBER, encode_env_file(format_env(environment)))
        stats = tar.stats
        warnings = [f"{name} does not exist; not backed up" for name in missing]
        warnings += stats.warnings + [f"{name} could not be read" for name in stats.unreadable]
        source = ConfigSource(
            paths=[arc for _, arc in present],
            missing=missing,
            files=stats.files,
            bytes=stats.bytes,
            environment_variables=len(environment),
        )
        return Produced(source, warnings=warnings)

    # -- restore ----------------------------------------------------------------------
    def plan_restore(self, manifest: Manifest, request: RestoreRequest) -> RestorePlan:
        review = self._review_folder(manifest, request.target)
        notes = [
            "Nothing is overwritten: the files and the environment snapshot are extracted "
            f"for review into {review}.",
        ]
        return RestorePlan(str(review), notes, safety_backup=None, private={"review": review})

    def _review_folder(self, manifest: Manifest, target: str | None) -> Path:
        if target is not None:
            chosen = self.settings.resolve(target)
            if chosen.exists() and any(chosen.iterdir()):
                raise UsageError(
                    f"The folder {chosen} is not empty; give --target-dir a new or empty folder."
                )
            return chosen
        base = self.settings.project_root / REVIEW_ROOT / manifest.id
        candidate, attempt = base, 1
        while candidate.exists():
            attempt += 1
            candidate = base.with_name(f"{base.name}-{attempt}")
        return candidate

    def consume(self, payload: BinaryIO, manifest: Manifest, plan: RestorePlan) -> RestoreReport:
        review: Path = plan.private["review"]
        review.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        stats = safe_extract(payload, review)
        files = compare_trees(review / FILES_MEMBER, self.settings.project_root, self._paths())
        env_file = review / ENV_MEMBER
        saved_env = parse_env(decode_env_file(env_file.read_bytes())) if env_file.exists() else {}
        current_env = environment_snapshot(
            os.environ, self.settings.env_include, self.settings.env_exclude
        )
        env = compare_env(saved_env, current_env)
        lines = [f"Extracted {stats.files} file(s) for review into {review}."]
        # say where in the review folder each is: the names are relative to the project root
        lines += _describe(f"files (in {FILES_MEMBER}/ of the review folder)", files)
        lines += _describe(f"environment variables (in {ENV_MEMBER})", env)
        lines.append("Review them and copy what you need into place by hand.")
        details = {"review_folder": str(review), "files": files, "environment": env}
        return RestoreReport(lines, details)

    def check_payload(self, payload: BinaryIO, manifest: Manifest) -> dict[str, Any]:
        stats = list_members(payload)
        return {"files": stats.files, "folders": stats.folders, "links": stats.links}


# -- the environment snapshot -----------------------------------------------------------
def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def environment_snapshot(
    environ: Mapping[str, str], include: tuple[str, ...], exclude: tuple[str, ...]
) -> dict[str, str]:
    return {
        name: value
        for name, value in sorted(environ.items())
        if _matches(name, include) and not _matches(name, exclude)
    }


def format_env(environment: Mapping[str, str]) -> str:
    """``NAME='value'`` lines a shell can source; a name that is not a shell identifier
    (``my-var``, ``a.b``) cannot be assigned by a shell, so its whole line is quoted
    (``'my-var=value'``, as ``env`` takes it) and reads back exactly."""
    return "".join(_assignment(name, value) + "\n" for name, value in environment.items())


def _assignment(name: str, value: str) -> str:
    if _SHELL_NAME.fullmatch(name):
        return f"{name}={shlex.quote(value)}"
    return shlex.quote(f"{name}={value}")


def encode_env_file(text: str) -> bytes:
    """The snapshot's bytes. The environment holds bytes, not text: a value (or name) that
    is not UTF-8 reaches Python as lone surrogates and goes back to its very bytes."""
    return text.encode("utf-8", "surrogateescape")


def decode_env_file(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def parse_env(text: str) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for token in shlex.split(text, posix=True):
        name, _, value = token.partition("=")
        parsed[name] = value
    return parsed


def compare_env(saved: Mapping[str, str], current: Mapping[str, str]) -> dict[str, list[str]]:
    diff = {
        "added": sorted(set(saved) - set(current)),  # in the backup, not set now
        "changed": sorted(
            name for name in saved if name in current and saved[name] != current[name]
        ),
        "removed": sorted(set(current) - set(saved)),  # set now, not in the backup
    }
    return {kind: [_printable(name) for name in names] for kind, names in diff.items()}


def _printable(name: str) -> str:
    """A name that is not UTF-8 shown with \\x escapes: a terminal cannot print its bytes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# -- comparing the extracted files with the live ones ---------------------------------
def _relative_files(folder: Path) -> set[str]:
    if folder.is_file() or folder.is_symlink():
        return {""}
    found = set()
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            found.add(str((Path(dirpath) / name).relative_to(folder)))
    return found


def compare_trees(
    extracted: Path, project_root: Path, paths: list[tuple[Path, str]]
) -> dict[str, list[str]]:
    """Per configured path: files only in the backup, changed, and only in the live tree."""
    added: list[str] = []
    changed: list[str] = []
    removed: list[str] = []
    for live, arcname in paths:
        saved_root = extracted / arcname
        saved = _relative_files(saved_root) if saved_root.exists() else set()
        current = _relative_files(live) if live.exists() else set()
        for rel in sorted(saved | current):
            shown = str(Path(arcname) / rel) if rel else arcname
            if rel not in current:
                added.append(shown)
            elif rel not in saved:
                removed.append(shown)
            elif not _same_file(
                saved_root / rel if rel else saved_root, live / rel if rel else live
            ):
                changed.append(shown)
    return {"added": sorted(added), "changed": sorted(changed), "removed": sorted(removed)}


def _same_file(a: Path, b: Path) -> bool:
    if a.is_symlink() or b.is_symlink():
        return a.is_symlink() and b.is_symlink() and os.readlink(a) == os.readlink(b)
    return filecmp.cmp(a, b, shallow=False)


def _describe(what: str, diff: Mapping[str, list[str]]) -> list[str]:
    if not any(diff.values()):
        return [f"The {what} are the same as now."]
    labels = {
        "added": "only in the backup",
        "changed": "different from now",
        "removed": "only now, not in the backup",
    }
    lines = []
    for kind, label in labels.items():
        names = diff[kind]
        if names:
            shown = ", ".join(names[:20]) + (
                f" and {len(names) - 20} more" if len(names) > 20 else ""
            )
            lines.append(f"{what.capitalize()} {label}: {shown}.")
    return lines
