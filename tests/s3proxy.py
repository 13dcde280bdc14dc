"""A fault-injecting HTTP proxy in front of the real S3 server (SeaweedFS), for the tests.

Requests pass through to the real server unchanged (SigV4 signatures stay valid) unless a
rule matches. A rule says which requests (method, path, nth match, fraction) and what
happens to them (a `Fault`)::

    proxy.add(Fault.status(503), method="GET")              # every GET and LIST: 503
    proxy.add(Fault.corrupt(), path=".manifest.json", nth=1) # the first manifest read
    proxy.add(Fault.full_body_for_range(), method="GET")     # 200 to a Range request
    proxy.add(Fault.status(403), method="DELETE")            # read-only credentials
    proxy.add(Fault.reset(after=1024), path=re.compile(r"\\.enc$"), fraction=0.2)
    proxy.clear()                                            # rules change while a test runs

The `s3_proxy` fixture (tests/conftest.py) gives a test the session's proxy with no rules,
and clears them again after the test; `proxy.env()` is what a CLI run needs to go through
it. Each rule counts the requests it matched and the faults it caused (`matched`, `fired`).

The proxy listens on loopback only, serves each connection in a daemon thread (at most
`MAX_CONNECTIONS` at once), streams bodies in 64 KiB chunks (never a whole object in
memory), and is stopped by the session fixture (its threads die with the process anyway).
"""

from __future__ import annotations

import random
import re
import socket
import struct
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPResponse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHUNK = 64 * 1024
MAX_CONNECTIONS = 32
UPSTREAM_TIMEOUT = 60
_REASONS = {
    403: ("AccessDenied", "Access Denied"),
    404: ("NoSuchKey", "The specified key does not exist."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("ServiceUnavailable", "Please reduce your request rate."),
}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


@dataclass(frozen=True)
class Fault:
    """What happens to a matched request. Build one with the class methods."""

    kind: str  # status, reset, drop, truncate, corrupt, range200, delay
    code: int = 0  # status: the HTTP status answered
    after: int | None = None  # reset/truncate: body bytes sent first (None: half the body)
    at: int | None = None  # corrupt: the body byte flipped (None: the middle one)
    seconds: float = 0.0  # delay

    @classmethod
    def status(cls, code: int) -> Fault:
        """Answer `code` (503, 500, 403, 404...) with an S3 error body, without forwarding."""
        return cls("status", code=code)

    @classmethod
    def reset(cls, after: int | None = None) -> Fault:
        """Forward, send the headers and `after` body bytes, then reset the connection (RST)."""
        return cls("reset", after=after)

    @classmethod
    def drop(cls) -> Fault:
        """Reset the connection at once, without forwarding the request or answering."""
        return cls("drop")

    @classmethod
    def truncate(cls, after: int | None = None) -> Fault:
        """Forward, send the headers (full Content-Length) and `after` body bytes, then close."""
        return cls("truncate", after=after)

    @classmethod
    def corrupt(cls, at: int | None = None) -> Fault:
        """Forward, and flip one byte of the answer's body (same length, same headers)."""
        return cls("corrupt", at=at)

    @classmethod
    def full_body_for_range(cls) -> Fault:
        """Answer a GET that has a Range header with 200 and the whole object, as a server
        or a middlebox that ignores Range does (other requests pass through)."""
        return cls("range200")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Wait `seconds`, then forward normally."""
        return cls("delay", seconds=seconds)


@dataclass
class Rule:
    """Which requests a fault applies to: all given conditions must hold.

    `method`: one method or several ("GET" also covers LIST, which is a GET on the bucket);
    `path`: a substring of the request target (path and query, URL-decoded) or a compiled
    regex searched in it; `nth`: only the nth matching request (1-based), or a set of them;
    `fraction`: the chance that a matching request is hit (seeded, so runs repeat);
    `limit`: at most that many faults in all.
    """

    fault: Fault
    method: str | frozenset[str] | None = None
    path: str | re.Pattern[str] | None = None
    nth: int | frozenset[int] | None = None
    fraction: float = 1.0
    limit: int | None = None
    matched: int = 0
    fired: int = 0
    _random: random.Random = field(default_factory=lambda: random.Random(17), repr=False)

    def _matches(self, method: str, target: str) -> bool:
        if self.method is not None:
            methods = {self.method} if isinstance(self.method, str) else self.method
            if method not in methods:
                return False
        if isinstance(self.path, str) and self.path not in target:
            return False
        return not isinstance(self.path, re.Pattern) or bool(self.path.search(target))

    def take(self, method: str, target: str, ranged: bool) -> bool:
        """Count a request; True if this rule's fault applies to it."""
        if not self._matches(method, target):
            return False
        if self.fault.kind == "range200" and not ranged:
            return False
        self.matched += 1
        if self.nth is not None:
            wanted = {self.nth} if isinstance(self.nth, int) else self.nth
            if self.matched not in wanted:
                return False
        if self.limit is not None and self.fired >= self.limit:
            return False
        if self.fraction < 1.0 and self._random.random() >= self.fraction:
            return False
        self.fired += 1
        return True


@dataclass(frozen=True)
class Seen:
    """One request that went through, for assertions: what was asked and what was done."""

    method: str
    target: str
    fault: str  # the fault's kind, or "" when forwarded untouched
    status: int  # the status the client was sent (0: none, the connection was cut)
    ranged: bool = False  # the request had a Range header


class S3Proxy:
    """The proxy: `start()` it on loopback in front of `upstream` (an http:// endpoint).

    `backend` is a boto3 client of the real server, used only to fetch a whole object for
    `Fault.full_body_for_range` (a Range header is signed, so it cannot be stripped)."""

    def __init__(self, upstream: str, backend: Any, base_env: dict[str, str]) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.backend = backend
        self._base_env = base_env
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self.seen: deque[Seen] = deque(maxlen=2000)
        self._server: ThreadingHTTPServer | None = None
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    # -- the API ------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        assert self._server is not None, "the proxy is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        """The environment of a CLI run that goes through the proxy."""
        return {**self._base_env, "AWS_ENDPOINT_URL": self.endpoint}

    def add(
        self,
        fault: Fault,
        *,
        method: str | set[str] | None = None,
        path: str | re.Pattern[str] | None = None,
        nth: int | set[int] | None = None,
        fraction: float = 1.0,
        limit: int | None = None,
    ) -> Rule:
        """Add a rule (the first matching rule of a request wins); returns it, to read its
        counts or to `remove` it."""
        rule = Rule(
            fault,
            method=method if method is None or isinstance(method, str) else frozenset(method),
            path=path,
            nth=nth if nth is None or isinstance(nth, int) else frozenset(nth),
            fraction=fraction,
            limit=limit,
        )
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove(self, rule: Rule) -> None:
        with self._lock:
            self._rules = [r for r in self._rules if r is not rule]

    def clear(self) -> None:
        """No rules: every request passes through. Also forgets what was seen."""
        with self._lock:
            self._rules = []
            self.seen.clear()

    def requests(self, method: str | None = None, path: str = "") -> list[Seen]:
        return [s for s in self.seen if method in (None, s.method) and path in s.target]

    # -- running ------------------------------------------------------------------------
    def start(self) -> None:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="s3proxy", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _fault_for(self, method: str, target: str, ranged: bool) -> Fault | None:
        with self._lock:
            for rule in self._rules:
                if rule.take(method, target, ranged):
                    return rule.fault
        return None


class _Handler(BaseHTTPRequestHandler):
    owner: S3Proxy
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects
    timeout = UPSTREAM_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the tests read `seen` instead

    def handle(self) -> None:
        with self.owner._slots:
            super().handle()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):  # every method goes through the same path
            return self._serve
        raise AttributeError(name)

    # -- one request ----------------------------------------------------------------------
    def _serve(self) -> None:
        method, target = self.command, urllib.parse.unquote(self.path)
        ranged = "Range" in self.headers
        fault = self.owner._fault_for(method, target, ranged)
        kind = fault.kind if fault else ""
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.seconds)
        body = self._request_body()
        if fault is not None and fault.kind == "drop":
            self._record(method, target, kind, 0, ranged)
            self._cut(reset=True)
            return
        if fault is not None and fault.kind == "status":
            _drain(body)  # the connection stays usable for the next request
            self._record(method, target, kind, fault.code, ranged)
            self._answer_error(fault.code, method)
            return
        if fault is not None and fault.kind == "range200":
            _drain(body)
            self._answer_whole_object(target)
            self._record(method, target, kind, 200, ranged)
            return
        answer, connection = self._forward(method, body)
        try:
            self._record(method, target, kind, answer.status, ranged)
            self._relay(answer, method, fault)
        finally:
            connection.close()

    def _record(self, method: str, target: str, kind: str, status: int, ranged: bool) -> None:
        self.owner.seen.append(Seen(method, target, kind, status, ranged))

    def _request_body(self) -> Iterator[bytes]:
        """The request body as it came (chunked or not), read lazily in bounded chunks."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._chunked_body()
        return self._sized_body(int(self.headers.get("Content-Length") or 0))

    def _sized_body(self, left: int) -> Iterator[bytes]:
        while left > 0:
            data = self.rfile.read(min(CHUNK, left))
            if not data:
                return
            left -= len(data)
            yield data

    def _chunked_body(self) -> Iterator[bytes]:
        """Relays the chunked framing itself (the upstream request is chunked too)."""
        while True:
            line = self.rfile.readline(1024)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            yield line
            if size == 0:
                while True:  # trailers, up to the empty line
                    trailer = self.rfile.readline(8192)
                    yield trailer
                    if trailer in (b"\r\n", b"\n", b""):
                        return
            yield from self._sized_body(size + 2)  # the data and its CRLF

    def _forward(self, method: str, body: Iterator[bytes]) -> tuple[HTTPResponse, HTTPConnection]:
        connection = HTTPConnection(*self.owner.upstream, timeout=UPSTREAM_TIMEOUT)
        connection.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            # Expect: 100-continue was answered here already (and is never signed)
            if name.lower() not in ("connection", "keep-alive", "proxy-connection", "expect"):
                connection.putheader(name, value)
        connection.endheaders()
        for data in body:
            connection.send(data)
        return connection.getresponse(), connection

    # -- answers ------------------------------------------------------------------------
    def _relay(self, answer: HTTPResponse, method: str, fault: Fault | None) -> None:
        length_header = answer.getheader("Content-Length")
        has_body = method != "HEAD" and answer.status not in (204, 304)
        if has_body and length_header is None:  # chunked upstream: small (listings, errors)
            data = answer.read()
            length_header = str(len(data))
            chunks: Iterator[bytes] = iter([data])
        else:
            chunks = _read_chunks(answer) if has_body else iter(())
        length = int(length_header or 0)
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        if length_header is not None:
            self.send_header("Content-Length", length_header)
        self.end_headers()
        if fault is not None and fault.kind in ("reset", "truncate"):
            self._send_part(chunks, length // 2 if fault.after is None else fault.after)
            self._cut(reset=fault.kind == "reset")
            return
        flip = None
        if fault is not None and fault.kind == "corrupt" and length:
            flip = length // 2 if fault.at is None else min(fault.at, length - 1)
        self._send_all(chunks, flip)

    def _send_part(self, chunks: Iterator[bytes], budget: int) -> None:
        for data in chunks:
            if budget <= 0:
                break
            self.wfile.write(data[:budget])
            budget -= len(data)
        self.wfile.flush()

    def _send_all(self, chunks: Iterator[bytes], flip: int | None) -> None:
        sent = 0
        for data in chunks:
            if flip is not None and sent <= flip < sent + len(data):
                index = flip - sent
                data = data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1 :]
            self.wfile.write(data)
            sent += len(data)
        self.wfile.flush()

    def _cut(self, *, reset: bool) -> None:
        """End the connection: with RST (`reset`) or an orderly close, mid-answer."""
        self.wfile.flush()
        if reset:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _answer_error(self, status: int, method: str) -> None:
        code, text = _REASONS.get(status, ("InternalError", "Injected failure."))
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{text}</Message><Resource>{self.path}</Resource></Error>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _answer_whole_object(self, target: str) -> None:
        """200 and the whole object, whatever Range asked for (path-style addressing)."""
        bucket, _, key = target.split("?")[0].lstrip("/").partition("/")
        whole = self.owner.backend.get_object(Bucket=bucket, Key=key)
        self.send_response(200)
        self.send_header("Content-Length", str(whole["ContentLength"]))
        self.send_header("Content-Type", whole.get("ContentType", "application/octet-stream"))
        self.send_header("ETag", whole["ETag"])
        self.end_headers()
        for data in whole["Body"].iter_chunks(CHUNK):
            self.wfile.write(data)
        self.wfile.flush()


def _read_chunks(answer: HTTPResponse) -> Iterator[bytes]:
    while data := answer.read(CHUNK):
        yield data


def _drain(body: Iterator[bytes]) -> None:
    for _ in body:
        pass
