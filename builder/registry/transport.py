"""HTTP for the registry client: pooled keep-alive connections, bounded retries, redirects.

Only the standard library (`http.client`). A connection goes back to its host's pool once its
response has been read to the end, so sequential requests reuse one socket and concurrent layer
downloads each get their own.
"""

from __future__ import annotations

import http.client
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


class Response:
    """A response whose body is read by the caller; `close` returns the connection to its pool."""

    def __init__(self, transport: "Transport", key: tuple[str, str], conn: http.client.HTTPConnection,
                 raw: http.client.HTTPResponse, url: str):
        self._transport = transport
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
        try:
            return self._raw.read()
        finally:
            self.close()

    def iter_chunks(self, size: int = _CHUNK) -> Iterator[bytes]:
        """The body in chunks; IncompleteRead if the connection drops before Content-Length bytes."""
        try:
            while chunk := self._raw.read(size):
                yield chunk
            if self._raw.length:  # http.client's read(n) returns b"" at a premature EOF instead of raising
                self._broken = True
                raise http.client.IncompleteRead(b"", self._raw.length)
        finally:
            self.close()

    def close(self) -> None:
        if self._conn is None:
            return
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
                 sleep: Callable[[float], None] = time.sleep):
        self.timeout = timeout
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
                if reused:
                    continue  # a pooled socket the server closed while idle: not a real attempt
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
        return Response(self, key, conn, raw, url)

    def _acquire(self, key: tuple[str, str], fresh: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        if not fresh:
            with self._lock:
                pool = self._idle.get(key)
                if pool:
                    return pool.pop(), True
        scheme, netloc = key
        if scheme == "https":
            return http.client.HTTPSConnection(netloc, timeout=self.timeout, context=self._ssl,
                                               blocksize=_SEND_BLOCK), False
        return http.client.HTTPConnection(netloc, timeout=self.timeout, blocksize=_SEND_BLOCK), False

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
