"""A registry on loopback that misbehaves on purpose: it serves one image (a manifest, a config
and one layer blob) and, per request path, a fault:

    drip            headers, then one byte every DRIP_EVERY seconds
    hang            accepts the request and never answers
    cut             half the body, then the connection is closed (later requests are served whole,
                    honouring `Range: bytes=N-` with a 206)
    cut-no-range    the same, but Range is ignored: the whole body again with a 200
    stall           half the body, then silence (later requests as `cut`)
    500             HTTP 500 for the first FAILURES requests, then the real answer
    bad-digest      other bytes than the digest in the path names
    wrong-manifest  for the manifest by digest: another manifest's bytes

`requests` logs (path, Range header) of every request; `stop` wakes every sleeping handler so
that the server shuts down at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler

from tests.support.httpserver import LoopbackHTTPServer

DRIP_EVERY = 0.05


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FaultRegistry(LoopbackHTTPServer):
    def __init__(self, layer_size: int = 256 << 10):
        self.layer = os.urandom(layer_size)
        self.config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                                  "rootfs": {"type": "layers", "diff_ids": [_digest(self.layer)]}}).encode()
        self.manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": _digest(self.config), "size": len(self.config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": _digest(self.layer), "size": len(self.layer)}]}).encode()
        self.layer_digest, self.manifest_digest = _digest(self.layer), _digest(self.manifest)
        self.faults: dict[str, str] = {}        # path -> fault
        self.failures = 2                       # for "500"
        self.requests: list[tuple[str, str]] = []
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        super().__init__(_handler(self))

    def blob_path(self, digest: str) -> str:
        return f"/v2/test/image/blobs/{digest}"

    def manifest_path(self, ref: str) -> str:
        return f"/v2/test/image/manifests/{ref}"

    @property
    def reference(self) -> str:
        return f"{self.host}/test/image:latest"

    def content(self, path: str) -> tuple[bytes, str] | None:
        if path in (self.manifest_path("latest"), self.manifest_path(self.manifest_digest)):
            return self.manifest, "application/vnd.oci.image.manifest.v1+json"
        blobs = {self.blob_path(_digest(self.config)): self.config, self.blob_path(self.layer_digest): self.layer}
        return (blobs[path], "application/octet-stream") if path in blobs else None

    def count(self, path: str) -> int:
        with self._lock:
            self._counts[path] = self._counts.get(path, 0) + 1
            return self._counts[path]

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        super().__exit__(*exc)


def _handler(registry: FaultRegistry):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            registry.requests.append((path, self.headers.get("Range", "")))
            if path == "/v2/":
                return self._send(200, b"{}", "application/json")
            found = registry.content(path)
            if found is None:
                return self._send(404, b'{"errors":[{"code":"NOT_FOUND","message":"unknown"}]}', "application/json")
            body, media_type = found
            fault = registry.faults.get(path, "")
            attempt = registry.count(path)
            if fault == "hang":
                registry.stopping.wait()
                return self._close()
            if fault == "500" and attempt <= registry.failures:
                return self._send(500, b'{"errors":[{"code":"UNKNOWN","message":"try later"}]}', "application/json")
            if fault == "bad-digest":
                body = bytes(b ^ 0xFF for b in body)
            if fault == "wrong-manifest" and "sha256:" in path:
                body = body.replace(b'"schemaVersion": 2', b'"schemaVersion":  2')
            if fault in ("cut", "cut-no-range", "stall") and attempt == 1:
                self._head(200, len(body), media_type)
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                if fault == "stall":
                    registry.stopping.wait()
                return self._close()
            if fault == "drip":
                self._head(200, len(body), media_type)
                for i in range(len(body)):
                    if registry.stopping.wait(DRIP_EVERY):
                        break
                    try:
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                    except OSError:
                        break
                return self._close()
            wanted = self.headers.get("Range", "")
            if wanted.startswith("bytes=") and fault != "cut-no-range":
                start = int(wanted[len("bytes="):].rstrip("-"))
                self._head(206, len(body) - start, media_type,
                           {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})
                self.wfile.write(body[start:])
                return
            self._send(200, body, media_type)

        def _head(self, status: int, length: int, media_type: str, extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()

        def _send(self, status: int, body: bytes, media_type: str) -> None:
            self._head(status, len(body), media_type)
            self.wfile.write(body)

        def _close(self) -> None:
            self.close_connection = True

    return Handler
