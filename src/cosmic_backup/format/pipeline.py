"""The streaming pipeline: plaintext -> gzip -> AES-256-CBC -> HMAC (encrypt-then-MAC), and back.

Memory is bounded by the chunk size whatever the payload's size. Sizes and digests are
computed on the way through. On the way back the MAC of the whole stored artifact is
checked, in constant time, before a single decrypted byte is handed out.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from cosmic_backup.errors import IntegrityError
from cosmic_backup.format.cipher import (
    HEADER_LEN,
    Decryptor,
    Encryptor,
    KeySource,
    derive_key_iv,
    read_salt,
)
from cosmic_backup.format.compression import DEFAULT_LEVEL, Decompressor, compressor, threads_pay
from cosmic_backup.format.keys import Key

CHUNK_SIZE = 1024 * 1024
# Chunks waiting for the sealing thread: enough to ride out a slow write, few MiB.
QUEUE_DEPTH = 4
MAC_ALGORITHM = "hmac-sha256"

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class SealedArtifact:
    """What the manifest records of a sealed artifact."""

    plaintext_size: int
    plaintext_sha256: str
    stored_size: int
    mac: str
    iterations: int


class _Derivation:
    """The writer's keys, derived in threads started at once: PBKDF2 (hashlib releases the
    GIL) then runs while the producer starts up (a database's connection test, snapshot
    and pg_dump's catalog reads) instead of before it. Two threads: the AES key and IV,
    and the master secret the MAC key comes from, are independent derivations."""

    def __init__(self, key: Key, iterations: int) -> None:
        self._encryptor: Encryptor | None = None
        self._mac_key: bytes | None = None
        self._error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._run, args=(self._derive_cipher, key, iterations)),
            threading.Thread(target=self._run, args=(self._derive_mac, key, iterations)),
        ]
        for thread in self._threads:
            thread.daemon = True  # an aborted backup does not wait for them
            thread.start()

    def _run(self, step: Callable[[Key, int], None], key: Key, iterations: int) -> None:
        try:
            step(key, iterations)
        except BaseException as exc:  # handed to the writer's thread by result()
            self._error = exc

    def _derive_cipher(self, key: Key, iterations: int) -> None:
        self._encryptor = Encryptor(key.passphrase, iterations)

    def _derive_mac(self, key: Key, _iterations: int) -> None:
        self._mac_key = key.artifact_mac_key

    def result(self) -> tuple[Encryptor, bytes]:
        for thread in self._threads:
            thread.join()
        if self._error is not None:
            raise self._error
        assert self._encryptor is not None and self._mac_key is not None
        return self._encryptor, self._mac_key


class _SealingThread:
    """Runs the writer's gzip, AES, MAC and sink writes in a thread of its own.

    The producer (pg_dump's pipe, tar) then never waits for compression: while this
    thread compresses one chunk, the caller's thread reads the next and hashes it. isal,
    cryptography and hashlib release the GIL on large buffers, so the two overlap. The
    queue is short (QUEUE_DEPTH chunks), so memory stays bounded. An error here is kept
    and raised in the caller's thread by the next `put` or by `finish`.
    """

    _END = object()

    def __init__(self, work: Callable[[bytes | bytearray], None], *, threaded: bool) -> None:
        self._work = work
        self._threaded = threaded
        self._queue: queue.Queue[object] = queue.Queue(maxsize=QUEUE_DEPTH)
        self._error: BaseException | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="cosmic-sealing", daemon=True)
        if threaded:
            self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not self._END:
            if self._error is None and not self._stopping:
                try:
                    self._work(item)  # type: ignore[arg-type]
                except BaseException as exc:  # raised again in the caller's thread
                    self._error = exc

    def put(self, chunk: bytes | bytearray) -> None:
        self._raise_error()
        if self._threaded:
            self._queue.put(chunk)
        else:  # few cores: sealing here costs less than handing it on (see compression.py)
            self._work(chunk)

    def finish(self) -> None:
        """Wait until every chunk is sealed; raise what went wrong, if anything did."""
        self._end()
        self._raise_error()

    def stop(self) -> None:
        """Drop what is queued and end the thread (after an error upstream)."""
        self._stopping = True
        self._end()

    def _end(self) -> None:
        if self._thread.is_alive():
            self._queue.put(self._END)
            self._thread.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error


class SealingWriter(io.RawIOBase):
    """A writable stream: what is written is compressed, encrypted and MACed into `sink`.

    `close()` (or leaving the ``with`` block without an error) finishes the stream and
    sets `result`. After an error, call `abort()`: nothing more is written. Small writes
    are gathered into chunks of CHUNK_SIZE; a large `bytes` is handed on as it is (it
    cannot change), anything else is copied first, since its owner may reuse it. With
    `threaded` (by default when the machine has cores to spare: compression.threads_pay)
    gzip and the sealing run in threads of their own; otherwise in the caller's.
    """

    def __init__(
        self,
        sink: BinaryIO,
        key: Key,
        iterations: int,
        *,
        level: int = DEFAULT_LEVEL,
        on_progress: ProgressCallback | None = None,
        threaded: bool | None = None,
    ) -> None:
        super().__init__()
        threaded = threads_pay() if threaded is None else threaded
        self._sink = sink
        self._compressor = compressor(level, threaded=threaded)
        self._derivation: _Derivation | None = _Derivation(key, iterations)
        self._encryptor: Encryptor | None = None
        self._mac: hmac.HMAC | None = None
        self._sha256 = hashlib.sha256()
        self._plaintext_size = 0
        self._stored_size = 0
        self._iterations = iterations
        self._on_progress = on_progress
        self._aborted = False
        self._batch = bytearray()
        self._sealing = _SealingThread(self._seal, threaded=threaded)
        self.result: SealedArtifact | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self._aborted:  # a buffer flushing into an aborted stream: drop, do not raise
            return len(data)
        if self.closed:
            raise ValueError("write to a closed SealingWriter")
        view = memoryview(data).cast("B")
        size = len(view)
        if not size:
            return 0
        self._sha256.update(view)
        self._plaintext_size += size
        if isinstance(data, bytes) and size >= CHUNK_SIZE:
            self._hand_on_batch()
            self._sealing.put(data)
        else:
            self._batch += view
            if len(self._batch) >= CHUNK_SIZE:
                self._hand_on_batch()
        if self._on_progress is not None:
            self._on_progress(size)
        return size

    def _hand_on_batch(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, bytearray()
            self._sealing.put(batch)

    def _seal(self, chunk: bytes | bytearray) -> None:
        """In the sealing thread: one chunk through gzip, AES and the MAC into the sink."""
        encryptor = self._encryptor or self._keys_ready()
        self._store(encryptor.update(self._compressor.compress(chunk)))

    def _keys_ready(self) -> Encryptor:
        """The encryptor, once the derivations started in __init__ are done."""
        if self._encryptor is None:
            assert self._derivation is not None
            self._encryptor, mac_key = self._derivation.result()
            self._mac = hmac.new(mac_key, digestmod=hashlib.sha256)
            self._derivation = None
        return self._encryptor

    def _store(self, data: bytes) -> None:
        if data:
            assert self._mac is not None
            self._mac.update(data)
            self._sink.write(data)
            self._stored_size += len(data)

    def abort(self) -> None:
        """Close without finishing the stream (after an error upstream)."""
        self._aborted = True
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._aborted:
                self._sealing.stop()
            else:
                self._finish()
        finally:
            self._sealing.stop()  # already ended, unless _finish raised first
            super().close()

    def _finish(self) -> None:
        self._hand_on_batch()
        self._sealing.finish()
        encryptor = self._keys_ready()
        self._store(encryptor.update(self._compressor.flush()))
        self._store(encryptor.finalize())
        assert self._mac is not None
        self.result = SealedArtifact(
            plaintext_size=self._plaintext_size,
            plaintext_sha256=self._sha256.hexdigest(),
            stored_size=self._stored_size,
            mac=self._mac.hexdigest(),
            iterations=self._iterations,
        )

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


def compute_mac(
    source: BinaryIO,
    key: Key,
    chunk_size: int = CHUNK_SIZE,
    on_progress: ProgressCallback | None = None,
) -> tuple[str, int]:
    """The HMAC of every stored byte of `source`, and how many bytes there were."""
    mac = hmac.new(key.artifact_mac_key, digestmod=hashlib.sha256)
    size = 0
    while chunk := source.read(chunk_size):
        mac.update(chunk)
        size += len(chunk)
        if on_progress is not None:  # a whole artifact takes a while: the bar moves with it
            on_progress(len(chunk))
    return mac.hexdigest(), size


def check_mac(
    source: BinaryIO,
    key: Key,
    expected_mac: str,
    expected_size: int | None,
    on_progress: ProgressCallback | None = None,
) -> None:
    """Raise `IntegrityError` unless `source`, read to its end, has the expected MAC."""
    actual, size = compute_mac(source, key, on_progress=on_progress)
    if expected_size is not None and size != expected_size:
        raise IntegrityError(
            f"The backup file has {size} bytes where its manifest records {expected_size}: "
            "it is truncated or damaged. Use another backup."
        )
    if not hmac.compare_digest(actual, expected_mac):
        raise IntegrityError(
            "The backup file fails its integrity check (MAC mismatch): it was damaged or "
            "tampered with. Use another backup."
        )


class UnsealingReader(io.RawIOBase):
    """A readable stream of the plaintext of an artifact whose MAC has already been checked.

    Use `open_verified` to make one. At the end of the stream the plaintext's size and
    SHA-256 are compared with the manifest's, as a second line of defence.
    """

    def __init__(
        self,
        source: BinaryIO,
        key: Key,
        iterations: int,
        *,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
        on_progress: ProgressCallback | None = None,
        chunk_size: int = CHUNK_SIZE,
        derive: KeySource = derive_key_iv,
    ) -> None:
        super().__init__()
        self._source = source
        self._decryptor = Decryptor(key.passphrase, iterations, derive)
        self._decompressor = Decompressor()
        self._sha256 = hashlib.sha256()
        self._size = 0
        self._expected_sha256 = expected_sha256
        self._expected_size = expected_size
        self.on_progress = on_progress
        self._chunk_size = chunk_size
        # What is left of the last decompressed chunk: a view of it, not a copy into a
        # buffer of our own (appending to and deleting from a bytearray copied each byte
        # twice more).
        self._buffer = memoryview(b"")
        self._input_done = False
        self._eof = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        """Decrypt and decompress until some plaintext is buffered or the stream ends."""
        while not self._buffer and not self._eof:
            if self._decompressor.has_pending:
                out = self._decompressor.read(self._chunk_size)
            elif not self._input_done:
                stored = self._source.read(self._chunk_size)
                if stored:
                    self._decompressor.feed(self._decryptor.update(stored))
                else:
                    self._decompressor.feed(self._decryptor.finalize())
                    self._input_done = True
                continue
            else:
                self._decompressor.finish()
                self._eof = True
                out = b""
            self._account(out)
            self._buffer = memoryview(out)
        if self._eof and not self._buffer:
            self._check_totals()

    def _account(self, out: bytes) -> None:
        if out:
            self._sha256.update(out)
            self._size += len(out)
            if self.on_progress is not None:
                self.on_progress(len(out))

    def _check_totals(self) -> None:
        if self._expected_size is not None and self._size != self._expected_size:
            raise IntegrityError(
                f"The backup decrypted to {self._size} bytes where its manifest records "
                f"{self._expected_size}: it is damaged."
            )
        sha = self._sha256.hexdigest()
        if self._expected_sha256 is not None and not hmac.compare_digest(
            sha, self._expected_sha256
        ):
            raise IntegrityError(
                "The backup's content does not match the SHA-256 in its manifest: it is damaged."
            )

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        self._fill()
        count = min(len(target), len(self._buffer))
        target[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count


def open_verified(
    source: BinaryIO,
    key: Key,
    *,
    expected_mac: str,
    iterations: int,
    expected_stored_size: int | None = None,
    expected_sha256: str | None = None,
    expected_plaintext_size: int | None = None,
    on_progress: ProgressCallback | None = None,
    mac_progress: ProgressCallback | None = None,
) -> UnsealingReader:
    """Check the MAC of the whole (seekable) `source`, then return a plaintext reader on it.

    `mac_progress` is fed the bytes of the MAC pass; `on_progress`, the reader's plaintext.

    The AES key and IV (PBKDF2 of the file's own salt, ~0.3 s) are derived in a thread
    started before the MAC pass, so the derivation overlaps it and whatever the caller
    does before its first read (a restore's connection test and schema-reset trial). The
    salt is a stored byte, not a decrypted one: nothing is decrypted before the MAC check.
    """
    start = source.tell()
    derivation = _SaltDerivation.start(source.read(HEADER_LEN), key, iterations)
    source.seek(start)
    check_mac(source, key, expected_mac, expected_stored_size, mac_progress)
    source.seek(start)
    header = source.read(HEADER_LEN)
    read_salt(header)
    source.seek(start)
    return UnsealingReader(
        source,
        key,
        iterations,
        expected_sha256=expected_sha256,
        expected_size=expected_plaintext_size,
        on_progress=on_progress,
        derive=derivation.derive if derivation else derive_key_iv,
    )


class _SaltDerivation:
    """PBKDF2 of one artifact's salt in a daemon thread (hashlib releases the GIL)."""

    def __init__(self, salt: bytes, key: Key, iterations: int) -> None:
        self._salt = salt
        self._result: tuple[bytes, bytes] | None = None
        self._thread = threading.Thread(
            target=self._run, args=(key.passphrase, iterations), daemon=True
        )
        self._thread.start()

    @classmethod
    def start(cls, header: bytes, key: Key, iterations: int) -> _SaltDerivation | None:
        """None for a header that is not openssl's: the MAC check says what is wrong."""
        try:
            return cls(read_salt(header), key, iterations)
        except IntegrityError:
            return None

    def _run(self, passphrase: bytes, iterations: int) -> None:
        self._result = derive_key_iv(passphrase, self._salt, iterations)

    def derive(self, passphrase: bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
        """The result for the salt it was started with; anything else is derived now."""
        self._thread.join()
        if salt != self._salt or self._result is None:
            return derive_key_iv(passphrase, salt, iterations)
        return self._result
