"""An S3-compatible bucket as a `Store`: AWS S3, Cloudflare R2, Backblaze B2, MinIO, SeaweedFS.

boto3 is imported only here, and only when a remote is used (the ``s3`` extra). Credentials,
region and endpoint come the usual AWS ways (environment, profile, instance role;
``AWS_ENDPOINT_URL`` for an S3-compatible store): this module never sees a secret itself,
and no message it makes names one.

Each host writes under its own prefix (``s3://bucket/prefix/<host>/...``), so several
servers share one bucket without touching each other's backups.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from cosmic_backup.errors import CosmicError, IntegrityError, OperationFailed, UsageError
from cosmic_backup.storage.base import (
    ObjectInfo,
    StoreNotFound,
    StorePermanent,
    StoreUnavailable,
    Transferred,
    check_name,
)

MIB = 1024 * 1024
PART_SIZE = 16 * MIB  # one part in memory at a time: the bound on an upload's memory
MIN_PART_SIZE = 5 * MIB  # S3's own minimum for every part but the last
DOWNLOAD_CHUNK = MIB
DEFAULT_ATTEMPTS = 5
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "403",
    "Forbidden",
}
_CONTENT_RANGE = re.compile(r"^bytes (?P<start>\d+)-(?P<end>\d+)/(?P<total>\d+)$")
_TRANSIENT = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "503", "500"}

T = TypeVar("T")


class CorruptTransfer(StoreUnavailable):
    """A download whose bytes failed the store's checksum: retried from the first byte."""


@dataclass(frozen=True)
class RemoteLocation:
    """``s3://bucket/prefix`` parsed; `host` is this machine's own folder under it."""

    bucket: str
    prefix: str
    host: str

    @property
    def base(self) -> str:
        """The key prefix of this host's objects, ending in ``/``."""
        return "/".join(part for part in (self.prefix, self.host) if part) + "/"

    def url(self) -> str:
        return f"s3://{self.bucket}/{self.base}"


def parse_remote(url: str, host: str) -> RemoteLocation:
    """`BACKUP_REMOTE` (``s3://bucket/prefix``) and the host prefix, or a UsageError."""
    if not url.startswith("s3://"):
        raise UsageError(
            f"BACKUP_REMOTE '{_masked(url)}' is not an s3:// URL; write it as "
            "s3://bucket/prefix (credentials go in the usual AWS variables, never in the URL)."
        )
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if "@" in bucket or ":" in bucket:
        raise UsageError(
            "BACKUP_REMOTE must not carry credentials or a port; set AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL instead."
        )
    if not _BUCKET.match(bucket):
        raise UsageError(
            f"'{bucket}' in BACKUP_REMOTE is not a valid bucket name (3-63 lower-case "
            "letters, digits, dots and dashes); write it as s3://bucket/prefix."
        )
    prefix = prefix.strip("/")
    if ".." in prefix.split("/") or "//" in prefix:
        raise UsageError(f"The prefix '{prefix}' in BACKUP_REMOTE has an empty or '..' part.")
    if not _HOST.match(host) or host in (".", ".."):
        raise UsageError(
            f"The host prefix '{host}' is not usable as a folder name; set BACKUP_REMOTE_HOST "
            "to letters, digits, dots, dashes or underscores."
        )
    return RemoteLocation(bucket, prefix, host)


def _masked(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", url)


def make_client(attempts: int | None = None) -> Any:
    """A boto3 S3 client configured the usual AWS ways, with retries and back-off."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise OperationFailed(
            "BACKUP_REMOTE is set but boto3 is not installed; install it with "
            "pip install 'cosmic-backup[s3]'."
        ) from None
    if attempts is None:
        attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or DEFAULT_ATTEMPTS)
    config = Config(
        # "standard" retries throttling, 5xx and connection errors with jittered back-off.
        retries={"mode": "standard", "max_attempts": max(1, attempts)},
        connect_timeout=10,
        read_timeout=120,
        s3={"addressing_style": os.environ.get("AWS_S3_ADDRESSING_STYLE", "path")},
    )
    return boto3.session.Session().client("s3", config=config)


def _nothing(_moved: int) -> None:
    """The progress callback of a transfer nobody watches."""


class _Position:
    """Tells a progress callback where a download stands: a download that starts over
    after a corrupt transfer moves the bar back, never past the object's size."""

    def __init__(self, advance: Transferred) -> None:
        self._advance = advance
        self._reported = 0

    def at(self, position: int) -> None:
        if position != self._reported:
            self._advance(position - self._reported)
            self._reported = position


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _sha256_of_next(source: BinaryIO, size: int) -> bytes:
    """The SHA-256 of the next `size` bytes of `source` (fewer at its end), 1 MiB at a time."""
    digest = hashlib.sha256()
    while size > 0 and (data := source.read(min(DOWNLOAD_CHUNK, size))):
        digest.update(data)
        size -= len(data)
    return digest.digest()


class S3Store:
    """The `Store` contract on one host's prefix of a bucket."""

    def __init__(
        self,
        location: RemoteLocation,
        *,
        client: Any = None,
        part_size: int = PART_SIZE,
        spool_dir: Path | None = None,
        lock_days: int | None = None,
    ) -> None:
        self.location = location
        self.client = client if client is not None else make_client()
        self.part_size = max(part_size, MIN_PART_SIZE)
        self.spool_dir = spool_dir
        self.lock_days = lock_days
        self.attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or DEFAULT_ATTEMPTS)

    def describe(self) -> str:
        return self.location.url()

    def _key(self, name: str) -> str:
        return self.location.base + check_name(name)

    # -- errors ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _calling(self, what: str, name: str = "") -> Iterator[None]:
        """Turn boto's exceptions into the contract's kinds, each with one sentence."""
        from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError

        try:
            yield
        except ClientError as exc:
            raise self._client_error(exc, what, name) from None
        except FlexibleChecksumError:
            raise CorruptTransfer(f"The download of {name} failed its SHA-256 check.") from None
        except BotoCoreError as exc:
            raise self._core_error(exc, what) from None

    def _client_error(self, exc: Any, what: str, name: str) -> Exception:
        error = exc.response.get("Error", {})
        code = str(
            error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        )
        where = self.describe()
        if code in _NOT_FOUND:
            return StoreNotFound(name)
        if code == "NoSuchBucket":
            return StorePermanent(
                f"The bucket '{self.location.bucket}' does not exist at {self._endpoint()}; "
                "create it, or fix BACKUP_REMOTE (and AWS_ENDPOINT_URL)."
            )
        if code in _DENIED:
            return StorePermanent(
                f"The off-site store at {self._endpoint()} refused the credentials ({code}) "
                f"while trying to {what} {where}; check AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the bucket's permissions."
            )
        if code in _TRANSIENT or code.startswith("5"):
            return StoreUnavailable(
                f"The off-site store at {self._endpoint()} kept failing ({code}) while trying "
                f"to {what} {where}; try again later ('cosmic-backup sync' completes copies)."
            )
        if code in ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"):
            return IntegrityError(
                f"The off-site store received other bytes than were sent for {name} "
                f"({code}); nothing was kept of it. Run 'cosmic-backup sync' to try again."
            )
        return StorePermanent(
            f"The off-site store at {self._endpoint()} refused to {what} {where} ({code})."
        )

    def _core_error(self, exc: Any, what: str) -> Exception:
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError

        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StorePermanent(
                "No credentials for the off-site store were found; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or give the machine an instance role."
            )
        return StoreUnavailable(
            f"The off-site store at {self._endpoint()} cannot be reached "
            f"({exc.__class__.__name__}) while trying to {what} {self.describe()}; check "
            "AWS_ENDPOINT_URL and the network ('cosmic-backup sync' completes copies later)."
        )

    def _endpoint(self) -> str:
        url = str(getattr(self.client.meta, "endpoint_url", "") or "AWS S3")
        return _masked(url).split("?")[0]

    # -- the contract ---------------------------------------------------------------------
    def stat(self, name: str) -> ObjectInfo:
        with self._calling("read", name):
            head = self.client.head_object(Bucket=self.location.bucket, Key=self._key(name))
        return ObjectInfo(name, int(head["ContentLength"]))

    def locked_until(self, name: str) -> datetime | None:
        """When the object's Object Lock retention ends (None: not locked)."""
        with self._calling("read", name):
            head = self.client.head_object(Bucket=self.location.bucket, Key=self._key(name))
        until = head.get("ObjectLockRetainUntilDate")
        return until if isinstance(until, datetime) else None

    def extend_retention(self, name: str, until: datetime) -> None:
        """Lengthen the object's COMPLIANCE retention to `until` (PutObjectRetention)."""
        retention = {"Mode": "COMPLIANCE", "RetainUntilDate": until}
        with self._calling("extend the Object Lock retention of", name):
            self.client.put_object_retention(
                Bucket=self.location.bucket, Key=self._key(name), Retention=retention
            )

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self.location.base
        found = []
        with self._calling("list"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=base + prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    found.append(ObjectInfo(item["Key"][len(base) :], int(item["Size"])))
        return sorted(found, key=lambda info: info.name)

    def delete(self, name: str) -> None:
        with self._calling("delete from", name):
            self.client.delete_object(Bucket=self.location.bucket, Key=self._key(name))

    @contextlib.contextmanager
    def open_write(self, name: str) -> Iterator[BinaryIO]:
        """A private spool file, uploaded as a whole when the block ends without error."""
        check_name(name)
        with tempfile.TemporaryFile(dir=self.spool_dir) as spool:
            yield spool  # type: ignore[misc]
            spool.flush()
            spool.seek(0)
            self.put(name, spool)  # type: ignore[arg-type]

    def put(
        self, name: str, source: BinaryIO, on_progress: Transferred | None = None
    ) -> ObjectInfo:
        """Upload `source` in one request or as a multipart upload (one part in memory),
        each part's SHA-256 sent for the server to check, and compared with its answer.
        `on_progress` hears of each part once the store has accepted it."""
        key = self._key(name)
        advance = on_progress or _nothing
        first = source.read(self.part_size)
        if len(first) < self.part_size:
            info = self._put_small(name, key, first)
            advance(len(first))
            return info
        # Handed over in a list the parts loop empties, so no frame keeps the first part
        # alive for the whole upload: at most one part is in memory, not three.
        first_part = [first]
        del first
        return self._put_multipart(name, key, first_part, source, advance)

    def _lock_arguments(self) -> dict[str, Any]:
        if not self.lock_days:
            return {}
        until = datetime.now(UTC) + timedelta(days=self.lock_days)
        return {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": until}

    def _put_small(self, name: str, key: str, data: bytes) -> ObjectInfo:
        checksum = _b64(hashlib.sha256(data).digest())
        with self._calling("write to", name):
            answer = self.client.put_object(
                Bucket=self.location.bucket,
                Key=key,
                Body=data,
                ChecksumSHA256=checksum,
                **self._lock_arguments(),
            )
        self._compare(name, checksum, answer.get("ChecksumSHA256"))
        return self._check_arrived(name, len(data))

    def _put_multipart(
        self, name: str, key: str, first_part: list[bytes], source: BinaryIO, advance: Transferred
    ) -> ObjectInfo:
        bucket = self.location.bucket
        with self._calling("write to", name):
            upload = self.client.create_multipart_upload(
                Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256", **self._lock_arguments()
            )
        upload_id = upload["UploadId"]
        try:
            parts, digests, size = self._upload_parts(
                name, key, upload_id, first_part, source, advance
            )
            expected = f"{_b64(hashlib.sha256(b''.join(digests)).digest())}-{len(parts)}"
            with self._calling("write to", name):
                answer = self.client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            self._abort(key, upload_id)
            raise
        self._compare(name, expected, answer.get("ChecksumSHA256"))
        return self._check_arrived(name, size)

    def _upload_parts(
        self,
        name: str,
        key: str,
        upload_id: str,
        first_part: list[bytes],
        source: BinaryIO,
        advance: Transferred,
    ) -> tuple[list[dict[str, Any]], list[bytes], int]:
        """Send `first_part` (a one-item list, emptied here) and the rest of `source`."""
        parts: list[dict[str, Any]] = []
        digests: list[bytes] = []
        size = 0
        data = first_part.pop()
        while data:
            digest = hashlib.sha256(data).digest()
            number = len(parts) + 1
            with self._calling("write to", name):
                answer = self.client.upload_part(
                    Bucket=self.location.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data,
                    ChecksumSHA256=_b64(digest),
                )
            self._compare(name, _b64(digest), answer.get("ChecksumSHA256"))
            parts.append(
                {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": _b64(digest)}
            )
            digests.append(digest)
            size += len(data)
            advance(len(data))
            data = b""  # drop this part before the next is read
            data = source.read(self.part_size)
        return parts, digests, size

    def _abort(self, key: str, upload_id: str) -> None:
        """Best effort: an unfinished upload is invisible anyway, and lifecycle rules reap it."""
        with contextlib.suppress(Exception):
            self.client.abort_multipart_upload(
                Bucket=self.location.bucket, Key=key, UploadId=upload_id
            )

    @staticmethod
    def _compare(name: str, sent: str, answered: str | None) -> None:
        # A store that reports no checksum (older S3-compatible ones) is checked by size below.
        if answered is not None and answered != sent:
            raise IntegrityError(
                f"The off-site copy of {name} does not match what was sent (SHA-256 "
                f"{answered} instead of {sent}); run 'cosmic-backup sync' to upload it again."
            )

    def _check_arrived(self, name: str, size: int) -> ObjectInfo:
        try:
            info = self.stat(name)
        except StoreNotFound:  # not a local file missing: the store lost or hides the upload
            raise StoreUnavailable(
                f"The off-site store does not show {name} right after accepting its upload "
                f"(404 Not Found at {self.describe()}); run 'cosmic-backup sync' to upload "
                "it again."
            ) from None
        if info.size != size:
            raise IntegrityError(
                f"The off-site copy of {name} has {info.size} bytes instead of {size}; run "
                "'cosmic-backup sync' to upload it again."
            )
        return info

    def open_read(self, name: str, on_progress: Transferred | None = None) -> BinaryIO:
        """Download to a private (0600, already unlinked) spool file, resuming after
        dropped connections, and hand it back positioned at its start."""
        spool = tempfile.TemporaryFile(dir=self.spool_dir)  # noqa: SIM115 - handed back open
        try:
            position = _Position(on_progress or _nothing)
            total = self._download(name, spool, position)  # type: ignore[arg-type]
            if spool.tell() != total:
                raise StoreUnavailable(
                    f"The download of {name} from {self.describe()} stopped short; try again."
                )
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return spool  # type: ignore[return-value]

    def _download(self, name: str, sink: BinaryIO, position: _Position) -> int:
        """Fetch `name` into `sink`; the object's size. After a dropped connection the next
        attempt resumes where the bytes stopped; after bytes that failed their checksum it
        starts again from the first byte, since none of them can be trusted."""
        checksum: str | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                total, answered = self._download_once(name, sink, position)
                checksum = answered or checksum  # a resumed (206) answer carries none
                self._check_parts(name, sink, checksum)
                return total
            except CorruptTransfer:
                sink.seek(0)
                sink.truncate()
                position.at(0)
                if attempt == self.attempts:
                    raise IntegrityError(
                        f"The off-site copy of {name} failed its SHA-256 check on each of "
                        f"{self.attempts} downloads from {self.describe()}: the stored object "
                        "is damaged; use another backup (see 'cosmic-backup list')."
                    ) from None
            except StoreUnavailable:
                if attempt == self.attempts:
                    raise
            time.sleep(min(0.2 * 2**attempt, 5.0))
        raise AssertionError("unreachable")

    def _download_once(
        self, name: str, sink: BinaryIO, position: _Position
    ) -> tuple[int, str | None]:
        """One GET, from where `sink` stands: the object's size, and the SHA-256 the store
        answered for the whole object (None for a range)."""
        offset = sink.tell()
        arguments: dict[str, Any] = {"Bucket": self.location.bucket, "Key": self._key(name)}
        if offset:
            arguments["Range"] = f"bytes={offset}-"
        with self._calling("read", name):
            answer = self.client.get_object(**arguments)
            total = self._continue_at(name, answer, offset, sink)
            for chunk in answer["Body"].iter_chunks(DOWNLOAD_CHUNK):
                sink.write(chunk)
                position.at(sink.tell())
        whole = answer.get("ResponseMetadata", {}).get("HTTPStatusCode") == 200
        return total, answer.get("ChecksumSHA256") if whole else None

    def _check_parts(self, name: str, sink: BinaryIO, checksum: str | None) -> None:
        """Check a multipart object's composite SHA-256 (``<sha256 of the parts'
        digests>-<count>``) over the downloaded bytes, part by part; botocore checks only
        a whole-object one. Skipped when the store does not say how the object was cut."""
        if not checksum or "-" not in checksum:
            return
        expected, _, count = checksum.rpartition("-")
        sizes = self._part_sizes(name)
        if sizes is None or str(len(sizes)) != count:
            return
        end = sink.tell()
        sink.seek(0)
        digests = [_sha256_of_next(sink, size) for size in sizes]
        sink.seek(end)
        if sum(sizes) != end or _b64(hashlib.sha256(b"".join(digests)).digest()) != expected:
            raise CorruptTransfer(f"The download of {name} failed its SHA-256 check.")

    def _part_sizes(self, name: str) -> list[int] | None:
        """The sizes of the object's parts, in order (None: the store does not list them)."""
        sizes: list[int] = []
        marker = 0
        with contextlib.suppress(CosmicError, StoreNotFound), self._calling("read", name):
            while True:  # not permitted or not supported: the artifact's MAC still decides
                answer = self.client.get_object_attributes(
                    Bucket=self.location.bucket,
                    Key=self._key(name),
                    ObjectAttributes=["ObjectParts"],
                    PartNumberMarker=marker,
                )
                parts = answer.get("ObjectParts", {})
                sizes.extend(int(part["Size"]) for part in parts.get("Parts", []))
                if not parts.get("IsTruncated"):
                    return sizes or None
                marker = int(parts["NextPartNumberMarker"])
        return None

    def _continue_at(self, name: str, answer: dict[str, Any], offset: int, sink: BinaryIO) -> int:
        """The object's size, with `sink` positioned where the answer's body goes.

        A resumed download appends only a 206 whose Content-Range starts at `offset`; a 200
        (a store or proxy that ignores Range) is the whole object, so it starts over."""
        status = answer.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if offset and status == 206:
            match = _CONTENT_RANGE.match(str(answer.get("ContentRange", "")))
            if match is None or int(match.group("start")) != offset:
                answer["Body"].close()
                sink.seek(0)
                sink.truncate()
                raise StoreUnavailable(
                    f"The off-site store answered another range of {name} than was asked "
                    f"({answer.get('ContentRange')!r}); try again."
                )
            return int(match.group("total"))
        if offset:
            sink.seek(0)
            sink.truncate()
        return int(answer["ContentLength"])

    def hidden_by_delete_markers(self, prefix: str, newest: int = 20) -> list[str]:
        """Names whose current version is a delete marker over a version Object Lock still
        holds: deleted by a plain DELETE, yet kept. Only the `newest` such names are
        checked (one HEAD each); an expired version a prune deleted is not one."""
        base = self.location.base
        markers: set[str] = set()
        versions: dict[str, tuple[datetime, str]] = {}  # name -> its newest real version
        with self._calling("list the versions of"):
            pages = self.client.get_paginator("list_object_versions").paginate(
                Bucket=self.location.bucket, Prefix=base + prefix
            )
            for page in pages:
                markers |= {m["Key"] for m in page.get("DeleteMarkers", []) if m.get("IsLatest")}
                for v in page.get("Versions", []):
                    if v["Key"] not in versions or versions[v["Key"]][0] < v["LastModified"]:
                        versions[v["Key"]] = (v["LastModified"], v["VersionId"])
        now = datetime.now(UTC)
        hidden = []
        for key in sorted(markers & versions.keys(), reverse=True)[:newest]:
            with self._calling("read", key):
                head = self.client.head_object(
                    Bucket=self.location.bucket, Key=key, VersionId=versions[key][1]
                )
            until = head.get("ObjectLockRetainUntilDate")
            if isinstance(until, datetime) and until > now:
                hidden.append(key[len(base) :])
        return sorted(hidden)

    # -- leftovers of killed uploads ------------------------------------------------------
    def abandoned_uploads(self, before: datetime) -> list[tuple[str, str]]:
        """Multipart uploads under this host's prefix opened before `before` and never
        completed or aborted (a killed process): (name, upload id) of each."""
        base = self.location.base
        found = []
        with self._calling("list the unfinished uploads of"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.location.bucket, Prefix=base
            )
            for page in pages:
                for item in page.get("Uploads", []):
                    if item["Initiated"] < before:
                        found.append((item["Key"][len(base) :], item["UploadId"]))
        return found

    def abort_upload(self, name: str, upload_id: str) -> None:
        with self._calling("abort an unfinished upload to", name):
            self.client.abort_multipart_upload(
                Bucket=self.location.bucket, Key=self._key(name), UploadId=upload_id
            )

    # -- for doctor -----------------------------------------------------------------------
    def probe(self) -> list[str]:
        """Write, list, read and delete a small object; the steps that worked, in order.

        Raises the contract's error of the first step that failed."""
        name = f".probe-{os.getpid()}-{int(time.time())}"
        body = b"cosmic-backup probe\n"
        done: list[str] = []
        steps: list[tuple[str, Callable[[], object]]] = [
            ("write", lambda: self._put_small(name, self._key(name), body)),
            ("list", lambda: self._listed(name)),
            ("read", lambda: self._read_back(name, body)),
            ("delete", lambda: self.delete(name)),
        ]
        try:
            for step, run in steps:
                run()
                done.append(step)
        finally:
            if "delete" not in done:
                with contextlib.suppress(Exception):
                    self.delete(name)
        return done

    def _listed(self, name: str) -> None:
        if name not in {info.name for info in self.list(".probe-")}:
            raise StorePermanent(
                f"An object written to {self.describe()} is not listed there; the store "
                "or its permissions (s3:ListBucket) are not what cosmic-backup needs."
            )

    def _read_back(self, name: str, body: bytes) -> None:
        with self.open_read(name) as handle:
            if handle.read() != body:
                raise IntegrityError(
                    f"An object read back from {self.describe()} differs from what was written."
                )
