"""The fault-injecting proxy itself (tests/s3proxy.py): each fault does what it says, to a
plain boto3 client, so a test that uses it fails for its own reason, not the proxy's."""

from __future__ import annotations

import base64
import hashlib
import re
import time

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from tests.conftest import TEST_BUCKET
from tests.s3proxy import Fault, S3Proxy
from tests.s3server import S3Server

BODY = bytes(range(256)) * 400


def test_each_fault_reaches_the_client_as_it_would_from_a_real_network(
    s3_server: S3Server, s3_proxy: S3Proxy, remote_url: str
) -> None:
    client = s3_server.client(s3_proxy.endpoint, attempts=1)
    key = remote_url.removeprefix(f"s3://{TEST_BUCKET}/") + "/x.manifest.json"
    checksum = base64.b64encode(hashlib.sha256(BODY).digest()).decode()
    client.put_object(Bucket=TEST_BUCKET, Key=key, Body=BODY, ChecksumSHA256=checksum)

    def get(**extra: str) -> bytes:
        return bytes(client.get_object(Bucket=TEST_BUCKET, Key=key, **extra)["Body"].read())

    assert get() == BODY  # no rule: passes through
    expected: list[tuple[Fault, str]] = [
        (Fault.status(503), "ServiceUnavailable"),
        (Fault.status(403), "AccessDenied"),
        (Fault.corrupt(), "FlexibleChecksumError"),
        (Fault.truncate(), "IncompleteRead"),
        (Fault.reset(after=100), "Connection reset"),
        (Fault.drop(), "ConnectionClosedError"),
    ]
    for fault, seen in expected:
        s3_proxy.clear()
        rule = s3_proxy.add(fault, method="GET", path=re.compile(r"\.manifest\.json$"))
        with pytest.raises((ClientError, BotoCoreError)) as caught:
            get()
        assert seen in f"{type(caught.value).__name__} {caught.value}", fault
        assert rule.matched == rule.fired >= 1  # boto3 may retry once

    s3_proxy.clear()
    s3_proxy.add(Fault.full_body_for_range(), method="GET")
    whole = client.get_object(Bucket=TEST_BUCKET, Key=key, Range="bytes=100-")
    assert whole["ResponseMetadata"]["HTTPStatusCode"] == 200 and "ContentRange" not in whole
    assert whole["Body"].read() == BODY

    s3_proxy.clear()
    second = s3_proxy.add(Fault.status(403), method="GET", nth=2)  # 403: never retried
    assert get() == BODY
    with pytest.raises(ClientError, match="AccessDenied"):
        get()
    assert get() == BODY and (second.matched, second.fired) == (3, 1)
    s3_proxy.add(Fault.status(404), method="HEAD")
    with pytest.raises(ClientError, match="404"):
        client.head_object(Bucket=TEST_BUCKET, Key=key)
    assert [s.status for s in s3_proxy.requests("HEAD")] == [404]

    s3_proxy.clear()
    some = s3_proxy.add(Fault.status(403), method="HEAD", fraction=0.5)  # seeded: repeatable
    refused = 0
    for _ in range(20):
        try:
            client.head_object(Bucket=TEST_BUCKET, Key=key)
        except ClientError:
            refused += 1
    assert some.matched == 20 and refused == some.fired and 3 <= refused <= 17

    s3_proxy.clear()
    s3_proxy.add(Fault.delay(0.3), method="GET", limit=1)
    began = time.monotonic()
    assert get() == BODY
    assert time.monotonic() - began >= 0.3
