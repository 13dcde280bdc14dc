"""Alerts through Apprise, end to end with the real CLI: an email to a real local SMTP
server (aiosmtpd), JSON over HTTP (Apprise's json://) to a real local HTTP server, the
plain webhook beside them unchanged; failure versus always, "recovered", the status
check's overdue alert, unreachable targets that never fail the backup, no secret logged.

A files backup fails fast and for real when its folder goes missing after it was backed
up (the root has files backups, so "not configured" is a failure, not a skip).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from cosmic_backup.clock import SystemClock, iso
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.operations.context import open_runtime
from cosmic_backup.settings import load_settings
from tests.conftest import Project, clean_environ
from tests.unit.operations.webhook import Webhook, webhook_server

SMTP_PASSWORD = "Smtp-Secret-Pw-4821"
JSON_PASSWORD = "Json-Secret-Pw-9377"
JSON_TOKEN = "tok3nZXCVBNM0987"
KEY = "alerts test passphrase 0123456789"


@dataclass
class Mailbox:
    port: int = 0
    messages: list[EmailMessage] = field(default_factory=list)

    def url(self) -> str:
        return (
            f"mailto://ops:{SMTP_PASSWORD}@127.0.0.1:{self.port}"
            "?from=backup@example.com&to=oncall@example.com&mode=insecure"
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    """A real SMTP server on loopback that wants the password, and keeps each message."""
    box = Mailbox(port=_free_port())

    class Handler:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            raw = envelope.content  # type: ignore[attr-defined]
            box.messages.append(message_from_bytes(raw, policy=policy.default))  # type: ignore[arg-type]
            return "250 OK"

    def authenticate(*args: object) -> AuthResult:
        data = args[-1]
        ok = data.login == b"ops" and data.password == SMTP_PASSWORD.encode()  # type: ignore[attr-defined]
        return AuthResult(success=ok)

    controller = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=box.port,
        authenticator=authenticate,
        auth_require_tls=False,
    )
    controller.start()
    yield box
    controller.stop()


@pytest.fixture
def hook() -> Iterator[Webhook]:
    with webhook_server() as server:
        server.answer = 200
        yield server


def _json_url(hook: Webhook) -> str:
    return f"json://alerts:{JSON_PASSWORD}@127.0.0.1:{hook.port}/apprise/{JSON_TOKEN}"


def _files_project(project: Project, notify: str, **env: str) -> Project:
    (project.root / "uploads").mkdir()
    (project.root / "uploads" / "a.txt").write_text("a file\n")
    project.env.update(
        {"BACKUP_KEY": KEY, "BACKUP_FILES_DIRS": "uploads", "BACKUP_NOTIFY_URL": notify, **env}
    )
    return project


def _body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def _assert_no_secret_anywhere(project: Project, *outputs: str) -> None:
    logged = [path.read_text() for path in (project.root / "logs").glob("*")]
    manifests = [path.read_text() for path in project.backups.rglob("*.json")]
    for secret in (SMTP_PASSWORD, JSON_PASSWORD, JSON_TOKEN):
        for text in (*outputs, *logged, *manifests):
            assert secret not in text


def test_email_on_failure_then_recovered_and_nothing_for_a_plain_success(
    project: Project, mailbox: Mailbox
) -> None:
    _files_project(project, mailbox.url())
    first = project.run("backup", "files")
    assert first.returncode == 0, first.stderr
    assert mailbox.messages == []  # failure (the default): a success says nothing
    shutil.rmtree(project.root / "uploads")
    failed = project.run("backup", "files")
    assert failed.returncode != 0
    [alert] = mailbox.messages
    assert alert["Subject"] == f"cosmic-backup backup FAILED on {socket.gethostname()}"
    assert alert["To"] == "oncall@example.com"
    body = _body(alert)
    assert body.startswith("files backup failed: This backup root has files backups")
    assert "files is not configured now" in body
    (project.root / "uploads").mkdir()
    (project.root / "uploads" / "a.txt").write_text("back again\n")
    recovered = project.run("backup", "files", env={"BACKUP_REPORT_URL": "https://ops/r.html"})
    assert recovered.returncode == 0, recovered.stderr
    assert len(mailbox.messages) == 2
    assert mailbox.messages[1]["Subject"].startswith("cosmic-backup backup recovered on ")
    assert _body(mailbox.messages[1]).startswith("files backup recovered: files-")
    assert "Report: https://ops/r.html" in _body(mailbox.messages[1])
    quiet = project.run("backup", "files")
    assert quiet.returncode == 0 and len(mailbox.messages) == 2  # recovered once, not again
    listed = json.loads(project.run("--json", "list", "files").stdout)
    assert all(isinstance(e["duration_seconds"], float) for e in listed)  # new manifests time it
    _assert_no_secret_anywhere(project, *(r.stdout + r.stderr for r in (first, failed, quiet)))


def test_always_sends_json_over_http_and_the_plain_webhook_is_unchanged(
    project: Project, hook: Webhook
) -> None:
    plain = hook.url("/plain-webhook")
    _files_project(project, f"{_json_url(hook)}, {plain}")
    default = project.run("backup", "config")
    assert default.returncode == 0, default.stderr
    [summary] = hook.received  # failure mode: only the webhook, with today's summary
    assert summary.path == "/plain-webhook" and summary.body["status"] == "ok"
    assert summary.body["text"].startswith("cosmic-backup ok on ")
    always = project.run("backup", "config", env={"BACKUP_NOTIFY_ON": "always"})
    assert always.returncode == 0, always.stderr
    apprise_posts = [r for r in hook.received if r.path.startswith("/apprise/")]
    [post] = apprise_posts
    assert post.path == f"/apprise/{JSON_TOKEN}"
    assert post.body["title"] == f"cosmic-backup backup OK on {socket.gethostname()}"
    assert post.body["message"].startswith("config backup ok: config-")
    assert len([r for r in hook.received if r.path == "/plain-webhook"]) == 2
    _assert_no_secret_anywhere(project, default.stdout + default.stderr, always.stderr)


def test_the_status_check_alerts_on_an_overdue_backup(project: Project, hook: Webhook) -> None:
    """No backup runs: the schedule's `status --quiet --alert` is what raises it."""
    targets = f"{_json_url(hook)},{hook.url('/plain-webhook')}"
    project.env.update({"BACKUP_KEY": KEY, "BACKUP_NOTIFY_URL": targets})  # files: none
    settings = load_settings(project.root, environ=clean_environ(project.env))
    rt = open_runtime(settings)
    key = rt.keys.current(create=True).key
    started = SystemClock().now() - timedelta(days=40)
    rt.catalog.ensure_layout()
    old = rt.catalog.new_id("config", started)
    manifest = Manifest(
        old, "config", "ok", "full", ["scheduled"], iso(started), iso(started), "0.1.0",
        artifact=f"{old}.tar.gz.enc", key_fingerprint=key.fingerprint, stored_size=10,
    )  # fmt: skip
    rt.catalog.write_manifest(manifest, key)
    healthy_env = {"BACKUP_CONFIG_INTERVAL_DAYS": "60"}
    assert project.run("status", "--quiet", "--alert", env=healthy_env).returncode == 0
    assert hook.received == []  # healthy: nothing to say
    result = project.run("status", "--quiet", "--alert")
    assert result.returncode == 8
    by_path = {r.path: r.body for r in hook.received}
    alert = by_path[f"/apprise/{JSON_TOKEN}"]
    assert alert["title"].startswith("cosmic-backup status check ")
    assert "OVERDUE" in alert["title"]
    assert "config OVERDUE: the last good backup is 40.0 days old" in alert["message"]
    webhook = by_path["/plain-webhook"]
    assert webhook["operation"] == "status check" and webhook["status"] == "failed"
    assert {c["component"] for c in webhook["components"]} >= {"config"}
    _assert_no_secret_anywhere(project, result.stdout + result.stderr)


def test_unreachable_targets_never_fail_the_backup_and_are_logged_masked(
    project: Project,
) -> None:
    closed = _free_port()
    targets = (
        f"json://alerts:{JSON_PASSWORD}@127.0.0.1:{closed}/apprise/{JSON_TOKEN},"
        f"mailto://ops:{SMTP_PASSWORD}@127.0.0.1:{closed}?from=b@example.com&to=o@example.com,"
        "nosuchscheme://whatever-this-is"
    )
    _files_project(project, targets, BACKUP_NOTIFY_ON="always")
    result = project.run("backup", "config")
    assert result.returncode == 0, result.stderr
    [log] = (project.root / "logs").glob("*.log")
    text = log.read_text()
    assert "the alert to #1 (json://***) was not sent" in text
    assert "the alert to #2 (mailto://***) was not sent" in text
    assert "the alert to #3 (nosuchscheme://***) was not sent" in text
    _assert_no_secret_anywhere(project, result.stdout + result.stderr)


def test_notify_test_says_per_target_whether_it_went_out(
    project: Project, mailbox: Mailbox, hook: Webhook
) -> None:
    closed = _free_port()
    targets = f"{mailbox.url()},{hook.url('/plain')},json://127.0.0.1:{closed}/x"
    _files_project(project, targets)
    result = project.run("notify", "--test")
    assert result.returncode == 1  # one did not go out
    lines = result.stdout.splitlines()
    assert lines[0] == "#1 (mailto://***): sent"
    assert lines[1] == "#2 (http://***): sent"
    assert lines[2].startswith("#3 (json://***): NOT sent: ")
    [mail] = mailbox.messages
    assert mail["Subject"] == f"cosmic-backup notify test ok on {socket.gethostname()}"
    assert hook.received[0].body["operation"] == "notify test"
    _assert_no_secret_anywhere(project, result.stdout + result.stderr)
    unset = project.run("notify", "--test", env={"BACKUP_NOTIFY_URL": ""})
    assert unset.returncode == 2 and "BACKUP_NOTIFY_URL is not set" in unset.stderr


def test_without_apprise_the_backup_succeeds_and_the_log_says_how_to_install_it(
    project: Project,
) -> None:
    """apprise missing (None in sys.modules: its import fails, as on a plain install)."""
    _files_project(project, "ntfy://127.0.0.1:9/topic", BACKUP_NOTIFY_ON="always")
    program = (
        "import sys; sys.modules['apprise'] = None; "
        "from cosmic_backup.cli.main import run; "
        f"sys.argv = ['cosmic-backup', '-C', {str(project.root)!r}, 'backup', 'config']; run()"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        env=clean_environ(project.env),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    [log] = (project.root / "logs").glob("*.log")
    assert (
        "the alert to #1 (ntfy://***) was not sent: it needs Apprise; install it with "
        "pip install 'cosmic-backup[alerts]'" in log.read_text()
    )
