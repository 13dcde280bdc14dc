#!/bin/sh
# Restore this app with cosmic-backup: ./scripts/restore.sh database|files|config latest|YYYY-MM-DD|ID [flags]
# Runs from the project root (this script's parent folder).
set -eu
cd "$(dirname "$0")/.."
if [ -n "${COSMIC_BACKUP:-}" ]; then exec $COSMIC_BACKUP restore "$@"; fi
if [ -x ./.venv/bin/cosmic-backup ]; then exec ./.venv/bin/cosmic-backup restore "$@"; fi
if command -v cosmic-backup >/dev/null 2>&1; then exec cosmic-backup restore "$@"; fi
exec python3 -m cosmic_backup restore "$@"
