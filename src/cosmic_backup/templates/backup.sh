#!/bin/sh
# Back up this app with cosmic-backup: ./scripts/backup.sh all|database|files|config [flags]
# Runs from the project root (this script's parent folder), so cron can call it from anywhere.
set -eu
cd "$(dirname "$0")/.."
if [ -n "${COSMIC_BACKUP:-}" ]; then exec $COSMIC_BACKUP backup "$@"; fi
if [ -x ./.venv/bin/cosmic-backup ]; then exec ./.venv/bin/cosmic-backup backup "$@"; fi
if command -v cosmic-backup >/dev/null 2>&1; then exec cosmic-backup backup "$@"; fi
exec python3 -m cosmic_backup backup "$@"
