"""The webhook: a JSON summary POSTed after each backup run, success or failure.

A webhook that fails is logged and never fails the backup. The URL is a secret (chat
webhooks carry their token in it), so it is masked everywhere.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import urllib.parse
import urllib.request
from typing import Any

from cosmic_backup import __version__
from cosmic_backup.redact import redact, register_secret

TIMEOUT_SECONDS = 10


def summary(
    status: str,
    run_id: str,
    project: str,
    components: list[dict[str, Any]],
    log_file: str,
    operation: str = "backup",
) -> dict[str, Any]:
    """The webhook's JSON; `operation` is "backup" or "restore test"."""
    host = socket.gethostname()
    outcomes = "; ".join(
        f"{c.get('component')} {c.get('status')}"
        + (f": {c['message']}" if c.get("message") else "")
        for c in components
    )
    return _masked(
        {
            "tool": "cosmic-backup",
            "version": __version__,
            "host": host,
            "project": project,
            "run_id": run_id,
            "operation": operation,
            "status": status,  # ok, partial, failed
            "components": components,
            "log_file": log_file,
            # Slack and Mattermost incoming webhooks show "text" as the message as it is
            "text": f"cosmic-backup {_prefix(operation)}{status} on {host} ({project}): {outcomes}",
        }
    )


def _prefix(operation: str) -> str:
    """The backup's text is as it always was; other operations are named before it."""
    return "" if operation == "backup" else f"{operation} "


def _masked(value: Any) -> Any:
    """Every string in `value` through `redact`: a webhook is outside our trust boundary."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_masked(item) for item in value]
    return value


def send(url: str, payload: dict[str, Any], log: logging.Logger) -> bool:
    """POST `payload`; True when the server accepted it. Never raises."""
    register_secret(url)
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        log.warning("BACKUP_NOTIFY_URL is not an http:// or https:// URL; no webhook was called")
        return False
    bare_url, authorization = _basic_auth(url)
    headers = {"Content-Type": "application/json", "User-Agent": f"cosmic-backup/{__version__}"}
    if authorization:
        headers["Authorization"] = authorization
    request = urllib.request.Request(  # noqa: S310 - the operator's own webhook URL
        bare_url, data=json.dumps(payload).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
            accepted = 200 <= response.status < 300
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError is an OSError
        log.warning("the webhook could not be called: %s", redact(str(exc)))
        return False
    if accepted:
        log.info("the webhook accepted the summary (HTTP %s)", response.status)
    else:
        log.warning("the webhook answered with HTTP %s", response.status)
    return accepted


def _basic_auth(url: str) -> tuple[str, str | None]:
    """``https://user:pass@host/...`` as the URL without them and an HTTP basic header.

    urllib would otherwise take ``user:pass@host`` for the host name and never connect.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    user = urllib.parse.unquote(parts.username or "")
    password = urllib.parse.unquote(parts.password or "")
    register_secret(password)
    netloc = parts.netloc.rpartition("@")[2]
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    register_secret(token)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), f"Basic {token}"
