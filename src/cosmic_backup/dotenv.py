"""Read the tool's settings from the app's `.env`, the file most apps keep DATABASE_URL in.

cron and systemd start the backup with almost no environment, so the app's `.env` is the
one place that holds the database URL for both the app and its backups. Only the names
asked for are taken, in the common dotenv syntax: `NAME=value`, an optional `export`,
'single' (literal) or "double" quotes (with \\n, \\", \\\\ escapes), `# comments`, and
`${OTHER}` taken from the real environment first, then from the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from cosmic_backup.errors import UsageError

DOTENV_FILE_NAME = ".env"
_LINE = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*)")
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def read_dotenv(path: Path, names: Collection[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The values of `names` in the dotenv file at `path` ({} when there is none)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(
            f"The app's {path} cannot be read ({exc.strerror}); cosmic-backup reads its "
            "settings (e.g. DATABASE_URL) from it: run as the user the app runs as, or "
            "let this user read it (chmod 640 and the app's group)."
        ) from exc
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = _LINE.fullmatch(line)
        if match is None:
            continue  # blank lines, comments, and whatever the app's own loader accepts
        name, raw = match.groups()
        try:
            values[name] = _value(raw, lambda ref: environ.get(ref) or values.get(ref, ""))
        except ValueError as exc:
            if name in names:  # someone else's odd line is none of our business
                raise UsageError(f"Line {number} of {path} ({name}) {exc}.") from exc
    return {name: values[name] for name in names if name in values}


def _value(raw: str, lookup: Callable[[str], str]) -> str:
    raw = raw.strip()
    if raw.startswith("'"):
        end = raw.find("'", 1)
        if end < 0:
            raise ValueError("has no closing quote")
        return raw[1:end]
    if raw.startswith('"'):
        return _expand(_double_quoted(raw), lookup)
    return _expand(re.split(r"\s+#", raw, maxsplit=1)[0].rstrip(), lookup)


def _double_quoted(raw: str) -> str:
    out, i = [], 1
    while i < len(raw):
        char = raw[i]
        if char == "\\" and i + 1 < len(raw):
            out.append(_ESCAPES.get(raw[i + 1], "\\" + raw[i + 1]))
            i += 2
            continue
        if char == '"':
            return "".join(out)
        out.append(char)
        i += 1
    raise ValueError("has no closing quote")


def _expand(value: str, lookup: Callable[[str], str]) -> str:
    return _REFERENCE.sub(lambda match: lookup(match.group(1)), value)
