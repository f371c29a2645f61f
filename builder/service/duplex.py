"""One TLS connection read by one thread and written by others at once (`--ssh` over TCP: the
build's frames come down while the agents' bytes go up).

OpenSSL's SSL object must not be used by two threads at a time, and a blocking SSL_read would
hold it for as long as the peer is silent. So the socket is made non-blocking, every SSL call
holds one lock and returns at once, and the waiting (select) happens outside the lock. A plain
socket needs none of this: the kernel lets one thread recv while another sends.
"""

from __future__ import annotations

import select
import ssl
import threading

_WAIT = 1.0   # seconds per select; a wakeup is never missed (each loop tries the SSL call first)


class DuplexTLS:
    def __init__(self, sock: ssl.SSLSocket):
        self.sock = sock
        self.lock = threading.Lock()
        sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, size: int) -> bytes:
        while True:
            with self.lock:
                try:
                    return self.sock.recv(size)
                except (ssl.SSLWantReadError, BlockingIOError):
                    readable = True
                except ssl.SSLWantWriteError:
                    readable = False
                except ssl.SSLZeroReturnError:   # the peer's close_notify: the end of the stream
                    return b""
            self._wait(readable)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            with self.lock:
                try:
                    view = view[self.sock.send(view):]
                    continue
                except (ssl.SSLWantWriteError, BlockingIOError):
                    readable = False
                except ssl.SSLWantReadError:
                    readable = True
            self._wait(readable)

    def _wait(self, readable: bool) -> None:
        if readable:
            select.select([self.sock], [], [], _WAIT)
        else:
            select.select([], [self.sock], [], _WAIT)

    def blocking(self) -> None:
        """Back to a plain blocking socket (for the connection's ordinary shutdown)."""
        with self.lock:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()


class DuplexReader:
    """A request body's source (read, readline) over a DuplexTLS, for server.Body."""

    def __init__(self, duplex: DuplexTLS):
        self.duplex = duplex
        self._buffer = b""

    def read(self, size: int) -> bytes:
        if not self._buffer:
            return self.duplex.recv(size)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def readline(self, limit: int) -> bytes:
        line = b""
        while len(line) < limit:
            data = self.read(limit - len(line))
            if not data:
                break
            newline = data.find(b"\n")
            if newline >= 0:
                self._buffer = data[newline + 1:] + self._buffer
                return line + data[:newline + 1]
            line += data
        return line


class DuplexWriter:
    """The handler's wfile over a DuplexTLS."""

    closed = False

    def __init__(self, duplex: DuplexTLS):
        self.duplex = duplex

    def write(self, data: bytes) -> int:
        self.duplex.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
