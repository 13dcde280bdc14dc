"""The webhook against a real local HTTP server: delivered, masked, and never raising."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
from collections.abc import Iterator

import pytest

from cosmic_backup.operations.notify import send, summary
from cosmic_backup.redact import register_secret
from tests.unit.operations.webhook import Webhook, webhook_server


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def log() -> Iterator[tuple[logging.Logger, _Records]]:
    logger = logging.getLogger("tests.notify")
    records = _Records()
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    yield logger, records
    logger.removeHandler(records)


@pytest.fixture
def server() -> Iterator[Webhook]:
    with webhook_server() as hook:
        yield hook


def payload() -> dict:
    components = [{"component": "config", "status": "ok", "message": "config-20261124T020000Z"}]
    return summary("ok", "run1", "/srv/app", components, "logs/x.log")


def test_the_summary_is_delivered(server: Webhook, log: tuple) -> None:
    logger, records = log
    url = server.url("/hook/token-abc123")
    assert send(url, payload(), logger) is True
    [received] = server.received
    body = received.body
    assert body["status"] == "ok" and body["run_id"] == "run1"
    assert body["components"][0]["component"] == "config"
    assert body["text"].startswith("cosmic-backup ok on ")
    assert "config ok: config-20261124T020000Z" in body["text"]
    assert records.lines == ["the webhook accepted the summary (HTTP 204)"]


def test_secrets_never_reach_the_webhook() -> None:
    register_secret("s3cr3t-passphrase-for-notify")
    body = summary(
        "failed",
        "run2",
        "/srv/app",
        [
            {
                "component": "database",
                "status": "failed",
                "message": "bad s3cr3t-passphrase-for-notify",
            }
        ],
        "logs/x.log",
    )
    assert "s3cr3t-passphrase-for-notify" not in json.dumps(body)
    assert body["components"][0]["message"] == "bad ***"


def test_a_server_error_is_logged_not_raised(server: Webhook, log: tuple) -> None:
    logger, records = log
    server.answer = 500
    url = server.url("/hook/token-xyz789")
    assert send(url, payload(), logger) is False
    assert len(server.received) == 1
    assert "500" in records.lines[0] and "token-xyz789" not in " ".join(records.lines)


def test_an_unreachable_webhook_is_logged_not_raised(log: tuple) -> None:
    logger, records = log
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hook/token-unreach"
    assert send(url, payload(), logger) is False
    assert records.lines[0].startswith("the webhook could not be called")
    assert "token-unreach" not in records.lines[0]


def test_a_server_that_does_not_speak_http_is_logged_not_raised(log: tuple) -> None:
    logger, records = log
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def garbage() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"this is not HTTP\r\n\r\n")

    thread = threading.Thread(target=garbage, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
        assert send(url, payload(), logger) is False
    finally:
        thread.join(5)
        listener.close()
    assert records.lines[0].startswith("the webhook could not be called")


def test_only_http_urls_are_called(tmp_path, log: tuple) -> None:
    logger, records = log
    target = tmp_path / "never-written"
    assert send(f"file://{target}", payload(), logger) is False
    assert not target.exists()
    assert "not an http:// or https:// URL" in records.lines[0]


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_logged(
    server: Webhook, log: tuple
) -> None:
    logger, records = log
    url = server.url("/hook", userinfo="ops:Hook%40Pass-9271@")
    assert send(url, payload(), logger) is True
    [received] = server.received
    assert received.path == "/hook"
    expected = base64.b64encode(b"ops:Hook@Pass-9271").decode()
    assert received.headers["Authorization"] == f"Basic {expected}"
    server.answer = 500
    assert send(url, payload(), logger) is False
    logged = " ".join(records.lines)
    assert "Hook" not in logged and "9271" not in logged and expected not in logged
