"""Git servers on 127.0.0.1 for the bare repositories under one directory, alive for a `with` block:

    GitDaemon(ROOT)        git://127.0.0.1:PORT/NAME.git   (`git daemon --inetd`, one per connection)
    GitHTTPBackend(ROOT)   http://127.0.0.1:PORT/NAME.git  (`git http-backend` as a CGI: smart HTTP)

Both listen on a port the kernel picks, so parallel tests never collide.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler

from tests.support.httpserver import LoopbackHTTPServer


class GitDaemon:
    def __init__(self, base_path: str):
        self.base_path = str(base_path)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"git://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._children: list[subprocess.Popen] = []
        self._lock = threading.Lock()

    def __enter__(self) -> "GitDaemon":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._listener.close()   # accept() fails: the loop ends
        self._thread.join(timeout=10)
        with self._lock:
            for child in self._children:
                child.kill()
                child.wait()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn, self._lock:
                self._children.append(subprocess.Popen(
                    ["git", "daemon", "--inetd", "--export-all", "--informative-errors",
                     f"--base-path={self.base_path}"], stdin=conn, stdout=conn, stderr=subprocess.DEVNULL))


class GitHTTPBackend(LoopbackHTTPServer):
    def __init__(self, base_path: str):
        root = str(base_path)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self._cgi()

            def do_POST(self):
                self._cgi()

            def _cgi(self):
                path, _, query = self.path.partition("?")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_PROJECT_ROOT": root,
                       "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": self.command, "PATH_INFO": path,
                       "QUERY_STRING": query, "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                       "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": self.client_address[0],
                       "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                       "GIT_PROTOCOL": self.headers.get("Git-Protocol", "")}
                proc = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True,
                                      timeout=120)
                head, _, payload = proc.stdout.partition(b"\r\n\r\n")
                if not _ and b"\n\n" in proc.stdout:
                    head, _, payload = proc.stdout.partition(b"\n\n")
                headers = [line.split(b":", 1) for line in head.splitlines() if b":" in line]
                status = next((v.strip() for k, v in headers if k.lower() == b"status"), b"200 OK")
                code, _, reason = status.decode().partition(" ")
                self.send_response(int(code), reason or None)
                for key, value in headers:
                    if key.lower() != b"status":
                        self.send_header(key.decode(), value.strip().decode())
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        super().__init__(Handler)
