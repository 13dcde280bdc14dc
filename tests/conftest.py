"""Shared fixtures: an isolated project root and a way to run the real CLI in it.

The CLI runs as a subprocess (``python -m cosmic_backup``) so tests see exactly what an
operator sees: exit codes, stdout, stderr, files on disk. Servers (PostgreSQL, S3) are
started once per session: PostgreSQL by tests/integration/database/conftest.py, S3
(SeaweedFS) here, since several packages use it, with the fault-injecting proxy in front of
it (tests/s3proxy.py: `s3_proxy`).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.s3proxy import S3Proxy
from tests.s3server import S3Server, seaweedfs

# Environment variables of the developer's shell that must never leak into a test run.
_SCRUBBED_PREFIXES = (
    "BACKUP_",
    "DATABASE_URL",
    "PG",
    "RETENTION_DAYS",
    "APP_VERSION",
    "AWS_",  # a developer's own cloud credentials must never reach a test's bucket
)


def clean_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # boto3 must never probe a cloud's metadata
    env.update(extra or {})
    return env


@dataclass
class Project:
    """A temporary app project root, with the environment the CLI runs under."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def backups(self) -> Path:
        return self.root / "tmp" / "backups"

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cosmic_backup", "-C", str(self.root), *args]

    def run(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run the CLI to completion; never raises on a non-zero exit."""
        return subprocess.run(
            self.command(*args),
            env=clean_environ({**self.env, **(env or {})}),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            check=False,
        )

    def popen(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            env=clean_environ({**self.env, **(env or {})}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.root,
        )


@pytest.fixture(autouse=True)
def _no_secrets_from_earlier_tests() -> None:
    """Each test starts with no registered secret, so none passes thanks to another's."""
    from cosmic_backup.redact import forget_secrets

    forget_secrets()


@pytest.fixture
def project(tmp_path: Path) -> Project:
    root = tmp_path / "app"
    root.mkdir()
    return Project(root=root)


ProjectFactory = Callable[[], Project]


@pytest.fixture
def make_project(tmp_path: Path) -> ProjectFactory:
    counter = iter(range(1000))

    def make() -> Project:
        root = tmp_path / f"app{next(counter)}"
        root.mkdir()
        return Project(root=root)

    return make


TEST_BUCKET = "cosmic-test"
_prefixes = itertools.count()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS for the session, with the bucket the tests share (each under a prefix)."""
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        server.client().create_bucket(Bucket=TEST_BUCKET)
        yield server


@pytest.fixture
def remote_url(s3_server: S3Server) -> str:
    """A BACKUP_REMOTE of this test's own, in the shared bucket."""
    return f"s3://{TEST_BUCKET}/t{os.getpid()}-{next(_prefixes)}"


@pytest.fixture(scope="session")
def _s3_proxy_session(s3_server: S3Server) -> Iterator[S3Proxy]:
    proxy = S3Proxy(s3_server.endpoint, s3_server.client(), s3_server.env())
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def s3_proxy(_s3_proxy_session: S3Proxy) -> Iterator[S3Proxy]:
    """The fault-injecting proxy in front of the session's SeaweedFS, with no rules yet;
    `s3_proxy.env()` points a CLI run at it. Rules added by the test are cleared after it."""
    _s3_proxy_session.clear()
    yield _s3_proxy_session
    _s3_proxy_session.clear()
