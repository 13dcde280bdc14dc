"""The webhook: a JSON summary POSTed after each backup run, success or failure.

A webhook that fails is logged and never fails the backup. The URL is a secret (chat
webhooks carry their token in it), so it is masked everywhere.
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request
from typing import Any

from cosmic_backup import __version__
from cosmic_backup.redact import redact, register_secret

TIMEOUT_SECONDS = 10


def summary(
    status: str, run_id: str, project: str, components: list[dict[str, Any]], log_file: str
) -> dict[str, Any]:
    return {
        "tool": "cosmic-backup",
        "version": __version__,
        "host": socket.gethostname(),
        "project": project,
        "run_id": run_id,
        "status": status,  # ok, partial, failed
        "components": components,
        "log_file": log_file,
    }


def send(url: str, payload: dict[str, Any], log: logging.Logger) -> bool:
    """POST `payload`; True when the server accepted it. Never raises."""
    register_secret(url)
    request = urllib.request.Request(  # noqa: S310 - the operator's own webhook URL
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "User-Agent": f"cosmic-backup/{__version__}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
            accepted = 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.warning("the webhook could not be called: %s", redact(str(exc)))
        return False
    if not accepted:
        log.warning("the webhook answered with HTTP %s", response.status)
    return accepted
