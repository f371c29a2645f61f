"""HTTP for the registry client: pooled keep-alive connections, bounded retries, redirects.

Only the standard library (`http.client`). A connection goes back to its host's pool once its
response has been read to the end, so sequential requests reuse one socket and concurrent layer
downloads each get their own.

A server that drips or hangs cannot hold a request forever. Each has three bounds, set by the
constructor or else the environment:

    min_rate, rate_window   the body must arrive at MIN_RATE bytes/s over every RATE_WINDOW
                            seconds (BUILD_IMAGE_REGISTRY_MIN_RATE, default 1024;
                            BUILD_IMAGE_REGISTRY_RATE_WINDOW, default 30); no byte at all for a
                            window (no answer, or a stalled body) fails the same way
    deadline                the whole request, answer and body, within DEADLINE seconds
                            (BUILD_IMAGE_REGISTRY_DEADLINE, default 3600)

A stalled transfer is a dropped connection for the caller: blob downloads resume it with a Range
request (client.py). A server that never answers is not asked again.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import threading
import time
from typing import BinaryIO, Callable, Iterator, Union
from urllib.parse import urljoin, urlsplit

from builder.errors import RegistryError

ATTEMPTS = 3
_BACKOFF = 0.25  # seconds before the second try; doubles after
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_MAX_IDLE_PER_HOST = 4
_CHUNK = 1 << 20
_DRAIN_LIMIT = 64 << 10
_SEND_BLOCK = 1 << 20  # a file body is sent in reads of this size (http.client's default is 8 KiB)

# A request body: bytes, or a function that opens the body afresh (so a retry can resend it).
Body = Union[bytes, Callable[[], BinaryIO], None]

_CONNECTION_ERRORS = (ConnectionError, http.client.HTTPException, socket.timeout, OSError)

MIN_RATE_ENV = "BUILD_IMAGE_REGISTRY_MIN_RATE"
RATE_WINDOW_ENV = "BUILD_IMAGE_REGISTRY_RATE_WINDOW"
DEADLINE_ENV = "BUILD_IMAGE_REGISTRY_DEADLINE"


class TransferStalled(OSError):
    """A body that came in slower than the minimum rate, or a request past its deadline: a dropped
    connection as far as retries go."""


def _setting(value: float | None, env: str, default: float) -> float:
    if value is not None:
        return value
    text = os.environ.get(env, "").strip()
    if not text:
        return default
    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if number <= 0:
        raise RegistryError(f"{env}={text!r}: expected a positive number")
    return number


def _rate(bytes_per_second: float) -> str:
    return f"{bytes_per_second / 1024:g} KiB/s" if bytes_per_second >= 1024 else f"{bytes_per_second:g} B/s"


class _Pace:
    """The bounds of one request in flight: the rate over each window and the deadline. A timer
    shuts the socket at the deadline, so even a read that trickles in forever ends."""

    def __init__(self, transport: "Transport", conn: http.client.HTTPConnection):
        self._transport = transport
        self._conn = conn
        self.started = time.monotonic()
        self._window_start = self.started
        self._window_bytes = 0
        self.expired = False
        self._timer = threading.Timer(transport.deadline, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.expired = True
        sock = self._conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def check_deadline(self) -> None:
        if self.expired:
            raise TransferStalled(f"not done within the deadline of {self._transport.deadline:g} s")

    def received(self, size: int) -> None:
        self.check_deadline()  # also after the last read: the timer's shutdown looks like an EOF
        if not size:
            return
        self._window_bytes += size
        now = time.monotonic()
        window = self._transport.rate_window
        if now - self._window_start >= window:
            if self._window_bytes < self._transport.min_rate * window:
                raise TransferStalled(f"stalled: under {_rate(self._transport.min_rate)} for {window:g} s")
            self._window_start, self._window_bytes = now, 0

    def stop(self) -> None:
        self._timer.cancel()


class Response:
    """A response whose body is read by the caller; `close` returns the connection to its pool."""

    def __init__(self, transport: "Transport", key: tuple[str, str], conn: http.client.HTTPConnection,
                 raw: http.client.HTTPResponse, url: str, pace: _Pace | None = None):
        self._transport = transport
        self._pace = pace
        self._key = key
        self._conn: http.client.HTTPConnection | None = conn
        self._raw = raw
        self.url = url
        self.status = raw.status
        self.reason = raw.reason
        self.headers = raw.headers
        self._broken = False

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)

    def read(self) -> bytes:
        return b"".join(self.iter_chunks())

    def iter_chunks(self, size: int = _CHUNK) -> Iterator[bytes]:
        """The body in chunks as they arrive; IncompleteRead if the connection drops before
        Content-Length bytes, TransferStalled under the minimum rate or past the deadline."""
        try:
            while True:
                try:
                    chunk = self._raw.read1(size)  # what has arrived: a drip is seen byte by byte
                    if self._pace is not None:
                        self._pace.received(len(chunk))
                except _CONNECTION_ERRORS as e:
                    self._broken = True
                    if self._pace is not None:
                        self._pace.check_deadline()
                    if isinstance(e, socket.timeout):
                        raise TransferStalled(f"stalled: no data for {self._transport.read_timeout:g} s") from None
                    raise
                if not chunk:
                    break
                yield chunk
            if self._raw.length:  # http.client's read(n) returns b"" at a premature EOF instead of raising
                self._broken = True
                raise http.client.IncompleteRead(b"", self._raw.length)
        finally:
            self.close()

    def close(self) -> None:
        if self._conn is None:
            return
        if self._pace is not None:
            self._pace.stop()
        conn, self._conn = self._conn, None
        raw = self._raw
        if not raw.isclosed() and not raw.will_close and raw.length is not None and raw.length <= _DRAIN_LIMIT:
            try:
                raw.read()  # a short unread body (201 Created, an error JSON): drain it, keep the socket
            except _CONNECTION_ERRORS:
                pass
        if raw.isclosed() and not raw.will_close and not self._broken:
            self._transport._release(self._key, conn)
        else:
            # Unread body or server asked to close: the socket cannot carry another request.
            self._raw.close()
            conn.close()

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Transport:
    def __init__(self, *, timeout: float = 30.0, plain_http: Callable[[str], bool] = lambda host: False,
                 sleep: Callable[[float], None] = time.sleep, min_rate: float | None = None,
                 rate_window: float | None = None, deadline: float | None = None):
        self.timeout = timeout
        self.min_rate = _setting(min_rate, MIN_RATE_ENV, 1024.0)
        self.rate_window = _setting(rate_window, RATE_WINDOW_ENV, 30.0)
        self.deadline = _setting(deadline, DEADLINE_ENV, 3600.0)
        # no byte for a whole window is under any rate: the socket waits that long at most
        self.read_timeout = min(timeout, self.rate_window)
        self.plain_http = plain_http
        self._sleep = sleep
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._ssl_context: ssl.SSLContext | None = None

    @property
    def _ssl(self) -> ssl.SSLContext:
        # Loading the system's CA certificates takes ~30 ms: only for registries spoken to over TLS.
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def base_url(self, host: str) -> str:
        return f"{'http' if self.plain_http(host) else 'https'}://{host}"

    def request(self, method: str, url: str, headers: dict[str, str] | None = None, body: Body = None,
                *, follow_redirects: bool = True) -> Response:
        """Send one request, retrying 5xx answers and dropped connections (ATTEMPTS in all)."""
        headers = dict(headers or {})
        for _ in range(_MAX_REDIRECTS + 1):
            response = self._with_retries(method, url, headers, body)
            if not (follow_redirects and response.status in _REDIRECTS and method in ("GET", "HEAD")):
                return response
            location = response.header("Location")
            response.close()
            if not location:
                raise RegistryError(f"{urlsplit(url).netloc}: redirect without a Location for {url}")
            target = urljoin(url, location)
            if urlsplit(target).netloc != urlsplit(url).netloc:
                # Blob storage behind a redirect must not see the registry's credentials.
                headers.pop("Authorization", None)
            url = target
        raise RegistryError(f"{urlsplit(url).netloc}: too many redirects for {url}")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def _with_retries(self, method: str, url: str, headers: dict[str, str], body: Body) -> Response:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        last_error = ""
        attempt = 0
        while True:
            conn, reused = self._acquire(key)
            try:
                response = self._send(conn, key, method, target, headers, body, url)
            except _CONNECTION_ERRORS as e:
                conn.close()
                if reused and not isinstance(e, (socket.timeout, TransferStalled)):
                    continue  # a pooled socket the server closed while idle: not a real attempt
                if isinstance(e, (socket.timeout, TransferStalled)):
                    # a server that does not answer will not answer the next time either
                    reason = str(e) if isinstance(e, TransferStalled) else (
                        f"no answer within {self.read_timeout:g} s")
                    raise RegistryError(f"registry {parts.netloc} did not answer {method} {url}: {reason}") from None
                last_error = _describe(e)
            else:
                if response.status not in _RETRY_STATUSES or attempt == ATTEMPTS - 1:
                    return response
                last_error = f"HTTP {response.status} {response.reason}"
                response.close()
            attempt += 1
            if attempt == ATTEMPTS:
                raise RegistryError(
                    f"cannot reach registry {parts.netloc}: {last_error} ({method} {url}, {ATTEMPTS} attempts)")
            self._sleep(_BACKOFF * 2 ** (attempt - 1))

    def _send(self, conn: http.client.HTTPConnection, key: tuple[str, str], method: str, target: str,
              headers: dict[str, str], body: Body, url: str) -> Response:
        if conn.sock is None:
            conn.connect()
        pace = _Pace(self, conn)
        try:
            if callable(body):
                with body() as stream:
                    conn.request(method, target, body=stream, headers=headers, encode_chunked=False)
                    raw = conn.getresponse()
            else:
                if body is None and method in ("POST", "PUT", "PATCH"):
                    body = b""
                conn.request(method, target, body=body, headers=headers)
                raw = conn.getresponse()
            if method == "HEAD":
                raw.read()  # no body, but marks the response finished so the socket can be reused
        except _CONNECTION_ERRORS:
            pace.stop()
            pace.check_deadline()
            raise
        return Response(self, key, conn, raw, url, pace)

    def _acquire(self, key: tuple[str, str], fresh: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        if not fresh:
            with self._lock:
                pool = self._idle.get(key)
                if pool:
                    return pool.pop(), True
        scheme, netloc = key
        if scheme == "https":
            return http.client.HTTPSConnection(netloc, timeout=self.read_timeout, context=self._ssl,
                                               blocksize=_SEND_BLOCK), False
        return http.client.HTTPConnection(netloc, timeout=self.read_timeout, blocksize=_SEND_BLOCK), False

    def _release(self, key: tuple[str, str], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            pool = self._idle.setdefault(key, [])
            if len(pool) < _MAX_IDLE_PER_HOST:
                pool.append(conn)
                return
        conn.close()


def _describe(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError):
        return f"TLS error: {error.reason or error}"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve host ({error.strerror})"
    if isinstance(error, socket.timeout):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
