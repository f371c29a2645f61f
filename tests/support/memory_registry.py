"""A distribution-spec registry kept in dicts, reached through the registry `Transport`
interface (`base_url`, `request`, `close`) instead of a socket: inject it into RegistryClient.

It serves manifests and blobs, takes monolithic uploads (POST, then PUT with ?digest=) and
checks the digest of what it is sent. `requests` logs every (method, path); `serve_instead`
maps a digest to other bytes to serve for it (a registry that lies)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from typing import Iterator
from urllib.parse import parse_qs, urlsplit


_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad Request", 404: "Not Found"}


class MemoryResponse:
    def __init__(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None):
        self.status = status
        self.reason = _REASONS.get(status, "")
        self.headers = {"Content-Length": str(len(body)), **(headers or {})}
        self._body = body

    def header(self, name: str, default: str = "") -> str:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), default)

    def read(self) -> bytes:
        return self._body

    def iter_chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        for start in range(0, len(self._body), size):
            yield self._body[start:start + size]

    def close(self) -> None:
        pass

    def __enter__(self) -> "MemoryResponse":
        return self

    def __exit__(self, *exc) -> None:
        pass


_MANIFEST = re.compile(r"^/v2/(?P<repo>.+)/manifests/(?P<ref>[^/]+)$")
_BLOB = re.compile(r"^/v2/(?P<repo>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
_UPLOAD = re.compile(r"^/v2/(?P<repo>.+)/blobs/uploads/(?P<id>[^/]*)$")


def _error(status: int, code: str) -> MemoryResponse:
    return MemoryResponse(status, json.dumps({"errors": [{"code": code, "message": code.lower()}]}).encode())


class MemoryRegistryTransport:
    def __init__(self) -> None:
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}   # (repo, tag or digest) -> (type, bytes)
        self.blobs: dict[str, bytes] = {}
        self.serve_instead: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def base_url(self, host: str) -> str:
        return f"memory://{host}"

    def close(self) -> None:
        pass

    def request(self, method: str, url: str, headers: dict[str, str] | None = None, body=None,
                *, follow_redirects: bool = True) -> MemoryResponse:
        parts = urlsplit(url)
        with self._lock:
            self.requests.append((method, parts.path))
        if parts.path == "/v2/":
            return MemoryResponse(200, b"{}")
        if m := _MANIFEST.match(parts.path):
            return self._manifest(method, m["repo"], m["ref"], headers or {}, _read(body))
        if m := _BLOB.match(parts.path):
            data = self.serve_instead.get(m["digest"], self.blobs.get(m["digest"]))
            if data is None:
                return _error(404, "BLOB_UNKNOWN")
            return MemoryResponse(200, b"" if method == "HEAD" else data, {"Docker-Content-Digest": m["digest"]})
        if m := _UPLOAD.match(parts.path):
            if method == "POST":
                location = f"/v2/{m['repo']}/blobs/uploads/{uuid.uuid4().hex}"
                return MemoryResponse(202, headers={"Location": location})
            if method == "PUT":
                digest = parse_qs(parts.query).get("digest", [""])[0]
                data = _read(body)
                if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                    return _error(400, "DIGEST_INVALID")
                with self._lock:
                    self.blobs[digest] = data
                return MemoryResponse(201, headers={"Docker-Content-Digest": digest})
        return _error(404, "NAME_UNKNOWN")

    def _manifest(self, method: str, repo: str, ref: str, headers: dict[str, str], data: bytes) -> MemoryResponse:
        if method == "PUT":
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            entry = (headers.get("Content-Type", ""), data)
            with self._lock:
                self.manifests[(repo, ref)] = self.manifests[(repo, digest)] = entry
            return MemoryResponse(201, headers={"Docker-Content-Digest": digest})
        entry = self.manifests.get((repo, ref))
        if entry is None:
            return _error(404, "MANIFEST_UNKNOWN")
        media_type, data = entry
        return MemoryResponse(200, b"" if method == "HEAD" else data,
                              {"Content-Type": media_type,
                               "Docker-Content-Digest": "sha256:" + hashlib.sha256(data).hexdigest()})


def _read(body) -> bytes:
    """A request body as bytes: bytes, None, or a function that opens a stream (see transport.Body)."""
    if body is None:
        return b""
    if callable(body):
        with body() as stream:
            return stream.read()
    return bytes(body)
