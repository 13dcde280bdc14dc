"""Notifications: the webhook, and alerts through Apprise.

BACKUP_NOTIFY_URL holds one or more targets, comma-separated. A plain http(s):// URL is
the webhook: a JSON summary POSTed after each run, success or failure, as it always was.
Any other URL (mailto://, slack://, ntfy://, tgram://, json://...) is an Apprise target:
it gets a short alert on failure and on the first success after one ("recovered"), or
after every run with BACKUP_NOTIFY_ON=always. Apprise is imported only when a target
needs it.

A notification that fails is logged and never fails the backup. The URLs are secrets
(chat webhooks and bots carry their token in them), so they are masked everywhere.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import re
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cosmic_backup import __version__
from cosmic_backup.redact import redact, register_secret

TIMEOUT_SECONDS = 10
ALERTS_HINT = "install it with pip install 'cosmic-backup[alerts]'"
# Parts of an Apprise URL that may be a token (a bot's, a webhook's): long, and no dot,
# which host names have. Each is masked on its own, in case a message quotes it alone.
_URL_PARTS = re.compile(r"[/:@?&=#,]+")
_TOKEN_LENGTH = 10


@dataclass(frozen=True)
class Alert:
    """What an Apprise target is told: a subject line and a few lines of body."""

    subject: str
    body: str


@dataclass(frozen=True)
class Delivery:
    """Whether one target got its notification; `target` is masked, never the URL."""

    target: str
    sent: bool
    detail: str


def targets(setting: str | None) -> list[str]:
    """BACKUP_NOTIFY_URL's targets, each registered as a secret before anything uses it."""
    found = [part.strip() for part in (setting or "").split(",") if part.strip()]
    for url in found:
        register_url_secrets(url)
    return found


def register_url_secrets(url: str) -> None:
    """The URL, its password and each token-like part of it: never shown again."""
    register_secret(url)
    parts = urllib.parse.urlsplit(url)
    register_secret(parts.password)
    for piece in _URL_PARTS.split(url.split("://", 1)[-1]):
        if len(piece) >= _TOKEN_LENGTH and "." not in piece:
            register_secret(urllib.parse.unquote(piece))


def is_webhook(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme in ("http", "https")


def shown_target(url: str, index: int) -> str:
    """How a target is named to the operator: its number and scheme, nothing secret."""
    scheme = urllib.parse.urlsplit(url).scheme or "?"
    return f"#{index} ({scheme}://***)"


def alert_wanted(notify_on: str, failed: bool, recovered: bool) -> bool:
    return notify_on == "always" or failed or recovered


def alert_for(
    operation: str, word: str, lines: Iterable[str], report_url: str | None = None
) -> Alert:
    """A short alert: what ran, how it ended, where; one line per component."""
    host = socket.gethostname()
    body = list(lines)
    if report_url:
        body.append(f"Report: {report_url}")
    return Alert(
        subject=redact(f"cosmic-backup {operation} {word} on {host}"),
        body=redact("\n".join(body) or word),
    )


def notify(
    setting: str | None,
    payload: dict[str, Any] | None,
    alert: Alert | None,
    log: logging.Logger,
) -> list[Delivery]:
    """Each target its notification: a webhook the JSON `payload` (None: none), an Apprise
    target the `alert` (None: none). Never raises: what failed is logged."""
    deliveries = []
    for index, url in enumerate(targets(setting), 1):
        if is_webhook(url):
            if payload is None:
                continue
            sent = send(url, payload, log)
            detail = "accepted" if sent else "the webhook did not accept it (the log says why)"
            deliveries.append(Delivery(shown_target(url, index), sent, detail))
        elif alert is not None:
            deliveries.append(send_alert(url, alert, log, shown_target(url, index)))
    return deliveries


def send_alert(url: str, alert: Alert, log: logging.Logger, shown: str) -> Delivery:
    """One Apprise target; its own log lines are caught (they may quote the URL), masked,
    and only the reason of a failure is kept."""
    try:
        import apprise
    except ImportError:
        log.warning("the alert to %s was not sent: it needs Apprise; %s", shown, ALERTS_HINT)
        return Delivery(shown, False, f"Apprise is not installed; {ALERTS_HINT}")
    try:
        with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:
            notifier = apprise.Apprise()
            understood = notifier.add(url)
            sent = understood and bool(notifier.notify(title=alert.subject, body=alert.body))
            said = captured.getvalue()
    except Exception as exc:  # a plugin's own bug must not fail the backup either
        said, understood, sent = f"{exc.__class__.__name__}: {exc}", True, False
    if sent:
        log.info("the alert was sent to %s", shown)
        return Delivery(shown, True, "sent")
    reason = _last_line(said) or (
        "Apprise does not know this kind of URL" if not understood else "it was refused"
    )
    log.warning("the alert to %s was not sent: %s", shown, reason)
    return Delivery(shown, False, reason)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in redact(text).splitlines() if line.strip()]
    return lines[-1] if lines else ""


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
