#!/bin/sh
# Restore this app with cosmic-backup: ./scripts/restore.sh database|files|config latest|YYYY-MM-DD|ID [flags]
# Runs from the project root (this script's parent folder).
# Which cosmic-backup: $COSMIC_BACKUP (a command) if set; else the Python that
# 'cosmic-backup init' recorded in .cosmic-backup-python, since cron's PATH (/usr/bin:/bin)
# finds no virtualenv or pipx install; else ./.venv, then PATH.
set -eu
cd "$(dirname "$0")/.."
if [ -n "${COSMIC_BACKUP:-}" ]; then exec $COSMIC_BACKUP restore "$@"; fi
if [ -f .cosmic-backup-python ]; then
    python=$(cat .cosmic-backup-python)
    if "$python" -c 'import cosmic_backup' 2>/dev/null; then exec "$python" -m cosmic_backup restore "$@"; fi
    echo "$0: cosmic-backup is no longer installed for $python (recorded in .cosmic-backup-python); run 'cosmic-backup init' again with the installation to use. Trying ./.venv and PATH." >&2
fi
if [ -x ./.venv/bin/cosmic-backup ]; then exec ./.venv/bin/cosmic-backup restore "$@"; fi
if command -v cosmic-backup >/dev/null 2>&1; then exec cosmic-backup restore "$@"; fi
if python3 -c 'import cosmic_backup' 2>/dev/null; then exec python3 -m cosmic_backup restore "$@"; fi
echo "$0: no cosmic-backup found (none usable recorded in .cosmic-backup-python, none in ./.venv or on PATH=$PATH); run 'cosmic-backup init' with the installation to use, or set COSMIC_BACKUP to its command." >&2
exit 127
