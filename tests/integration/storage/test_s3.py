"""What only the S3 store has: its URL, host prefixes, its error sentences, the probe."""

from __future__ import annotations

import io
import os
import tracemalloc
from pathlib import Path

import pytest

from cosmic_backup.errors import ExitCode, IntegrityError, UsageError
from cosmic_backup.storage.base import StorePermanent, StoreUnavailable
from cosmic_backup.storage.s3 import S3Store, make_client, parse_remote
from tests.conftest import TEST_BUCKET
from tests.s3proxy import Fault, S3Proxy
from tests.s3server import S3Server, free_ports


def _store(
    server: S3Server, monkeypatch: pytest.MonkeyPatch, url: str, host: str = "web-1", **env: str
) -> S3Store:
    for name, value in {**server.env(), **env}.items():
        monkeypatch.setenv(name, value)
    return S3Store(parse_remote(url, host), client=make_client())


def test_remote_url_is_parsed_with_the_host_prefix() -> None:
    location = parse_remote("s3://my-bucket/backups/app/", "web-1")
    assert (location.bucket, location.prefix, location.base) == (
        "my-bucket",
        "backups/app",
        "backups/app/web-1/",
    )
    assert parse_remote("s3://my-bucket", "db").url() == "s3://my-bucket/db/"


@pytest.mark.parametrize(
    "url",
    [
        "https://bucket/x",
        "s3://AK:hunter2@bucket/x",
        "s3://UPPER/x",
        "s3://b/x",
        "s3://bucket/a/../b",
    ],
)
def test_bad_remote_urls_are_one_sentence(url: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_remote(url, "web-1")
    assert caught.value.exit_code == ExitCode.USAGE
    assert "hunter2" not in caught.value.message


def test_two_hosts_share_a_bucket_without_seeing_each_other(
    s3_server: S3Server, remote_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = _store(s3_server, monkeypatch, remote_url, "web-1")
    two = _store(s3_server, monkeypatch, remote_url, "web-2")
    one.put("database/a", io.BytesIO(b"one"))
    two.put("database/a", io.BytesIO(b"two"))
    two.delete("database/a")
    assert [info.name for info in one.list("database/")] == ["database/a"]
    assert two.list("database/") == []
    with one.open_read("database/a") as handle:
        assert handle.read() == b"one"


def test_wrong_credentials_are_one_sentence_without_the_secret(
    s3_server: S3Server, remote_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-" + s3_server.secret_key[::-1]
    store = _store(s3_server, monkeypatch, remote_url, AWS_SECRET_ACCESS_KEY=wrong)
    with pytest.raises(StorePermanent) as caught:
        store.list("database/")
    message = caught.value.message
    assert "refused the credentials" in message and "AWS_SECRET_ACCESS_KEY" in message
    assert wrong not in message and s3_server.secret_key not in message
    assert caught.value.exit_code == ExitCode.FAILURE


def test_missing_bucket_is_named(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(s3_server, monkeypatch, "s3://no-such-bucket-here/x")
    with pytest.raises(StorePermanent, match="The bucket 'no-such-bucket-here' does not exist"):
        store.put("database/a", io.BytesIO(b"x"))


def test_unreachable_endpoint_is_one_sentence(
    s3_server: S3Server, remote_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (port,) = free_ports(1)  # nothing listens there
    store = _store(
        s3_server,
        monkeypatch,
        remote_url,
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_MAX_ATTEMPTS="1",
    )
    with pytest.raises(StoreUnavailable, match="cannot be reached") as caught:
        store.stat("database/a")
    assert f"127.0.0.1:{port}" in caught.value.message


def test_probe_writes_lists_reads_and_deletes(
    s3_server: S3Server, remote_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(s3_server, monkeypatch, remote_url)
    assert store.probe() == ["write", "list", "read", "delete"]
    assert store.list("") == []  # the probe object is gone


def test_a_failed_multipart_upload_leaves_no_object(
    s3_server: S3Server, remote_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(s3_server, monkeypatch, remote_url)
    store.part_size = 5 * 1024 * 1024

    class Dying(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if self.tell() >= store.part_size:
                raise OSError("the disk went away")
            return super().read(size)

    with pytest.raises(OSError, match="the disk went away"):
        store.put("database/big", Dying(b"x" * (3 * store.part_size)))
    assert store.list("database/") == []
    client = s3_server.client()
    uploads = client.list_multipart_uploads(Bucket=TEST_BUCKET).get("Uploads", [])
    assert not [u for u in uploads if u["Key"].startswith(store.location.base)]  # aborted


def test_a_download_failing_its_checksum_starts_over_and_one_always_bad_is_named(
    s3_server: S3Server, s3_proxy: S3Proxy, remote_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(s3_server, monkeypatch, remote_url, AWS_ENDPOINT_URL=s3_proxy.endpoint)
    body = bytes(range(256)) * 64
    store.put("config/a.manifest.json", io.BytesIO(body))
    s3_proxy.add(Fault.corrupt(), method="GET", path="a.manifest.json", nth=1)
    with store.open_read("config/a.manifest.json") as handle:
        assert handle.read() == body
    reads = s3_proxy.requests("GET", "a.manifest.json")
    assert [(s.fault, s.ranged) for s in reads] == [("corrupt", False), ("", False)]  # no Range

    s3_proxy.clear()
    s3_proxy.add(Fault.corrupt(), method="GET", path="a.manifest.json")  # bad every time
    with pytest.raises(IntegrityError, match=r"config/a\.manifest\.json failed its SHA-256 check"):
        store.open_read("config/a.manifest.json")
    assert not [s for s in s3_proxy.requests("GET") if s.ranged]


def test_a_200_answer_to_a_resumed_download_replaces_the_partial_bytes(
    s3_server: S3Server, s3_proxy: S3Proxy, remote_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(s3_server, monkeypatch, remote_url, AWS_ENDPOINT_URL=s3_proxy.endpoint)
    body = os.urandom(3 * 1024 * 1024)
    store.put("files/a.tar.gz.enc", io.BytesIO(body))
    s3_proxy.add(Fault.truncate(after=1024 * 1024 + 100), method="GET", path="a.tar.gz.enc", nth=1)
    s3_proxy.add(Fault.full_body_for_range(), method="GET")
    with store.open_read("files/a.tar.gz.enc") as handle:
        assert handle.read() == body
    reads = s3_proxy.requests("GET", "a.tar.gz.enc")
    assert [(s.fault, s.ranged) for s in reads] == [("truncate", False), ("range200", True)]

    s3_proxy.clear()  # a plain resume still appends the 206 answer
    s3_proxy.add(Fault.truncate(after=1024 * 1024 + 100), method="GET", path="a.tar.gz.enc", nth=1)
    with store.open_read("files/a.tar.gz.enc") as handle:
        assert handle.read() == body
    assert [s.status for s in s3_proxy.requests("GET", "a.tar.gz.enc")][-1] == 206


def test_a_404_on_the_check_after_an_upload_is_the_store_s_not_a_local_file_s(
    s3_server: S3Server, s3_proxy: S3Proxy, remote_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(s3_server, monkeypatch, remote_url, AWS_ENDPOINT_URL=s3_proxy.endpoint)
    s3_proxy.add(Fault.status(404), method="HEAD")
    with pytest.raises(StoreUnavailable, match="does not show config/a right after") as caught:
        store.put("config/a", io.BytesIO(b"abc"))
    assert not isinstance(caught.value, OSError)  # never read as a local file that is missing


def test_a_multipart_upload_holds_one_part_in_memory_not_three(
    s3_server: S3Server, remote_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store = _store(s3_server, monkeypatch, remote_url)
    store.part_size = 5 * 1024 * 1024
    source = tmp_path / "artifact"
    source.write_bytes(os.urandom(4 * store.part_size))
    with source.open("rb") as handle:
        tracemalloc.start()
        try:
            store.put("database/big", handle)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert store.stat("database/big").size == 4 * store.part_size
    # One part at a time, plus what boto3 allocates for the request.
    assert peak < 2 * store.part_size, peak / store.part_size  # 3 parts before


def test_a_multipart_object_corrupted_in_transit_is_fetched_again(
    s3_server: S3Server, s3_proxy: S3Proxy, remote_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(s3_server, monkeypatch, remote_url, AWS_ENDPOINT_URL=s3_proxy.endpoint)
    store.part_size = 5 * 1024 * 1024
    body = os.urandom(2 * store.part_size + 1000)  # three parts: botocore checks none
    store.put("files/big.tar.gz.enc", io.BytesIO(body))
    s3_proxy.add(Fault.corrupt(), method="GET", path="big.tar.gz.enc", nth=1)
    with store.open_read("files/big.tar.gz.enc") as handle:
        assert handle.read() == body
    reads = [s for s in s3_proxy.requests("GET", "big.tar.gz.enc") if "attributes" not in s.target]
    assert [(s.fault, s.ranged) for s in reads] == [("corrupt", False), ("", False)]


def _positions(moved: list[int]) -> list[int]:
    """Where a progress bar fed `moved` stood after each call."""
    at, shown = 0, []
    for n in moved:
        at += n
        shown.append(at)
    return shown


def test_progress_follows_the_parts_accepted_and_a_download_that_starts_over(
    s3_server: S3Server, s3_proxy: S3Proxy, remote_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(s3_server, monkeypatch, remote_url, AWS_ENDPOINT_URL=s3_proxy.endpoint)
    store.part_size = 5 * 1024 * 1024
    body = os.urandom(2 * store.part_size + 1000)
    sent: list[int] = []
    store.put("files/big.tar.gz.enc", io.BytesIO(body), sent.append)
    assert sent == [store.part_size, store.part_size, 1000]  # each part once accepted
    small: list[int] = []
    store.put("config/a", io.BytesIO(b"abc"), small.append)
    assert small == [3]

    s3_proxy.add(Fault.corrupt(), method="GET", path="big.tar.gz.enc", nth=1)
    received: list[int] = []
    with store.open_read("files/big.tar.gz.enc", received.append) as handle:
        assert handle.read() == body
    shown = _positions(received)
    assert len(received) > 3 and min(received) < 0  # it moved, and went back to start over
    assert max(shown) == len(body) and shown[-1] == len(body)  # never past the object's size
