"""ADD <url>: fetched from a stdlib HTTP server on 127.0.0.1, named by the URL path, dated by
Last-Modified, mode 0600 unless --chmod, pinned by --checksum, keyed by its content."""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import http.server
import os

import pytest

from tests.support.httpserver import LoopbackHTTPServer
from tests.support.images import build_image, step_lines, write_context


pytestmark = [pytest.mark.root, pytest.mark.overlay]

MODIFIED = 1_600_000_000


class Server(LoopbackHTTPServer):
    """Serves `files` (path -> bytes) with Last-Modified; counts GETs per path."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.gets: dict[str, int] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = server.files.get(self.path)
                server.gets[self.path] = server.gets.get(self.path, 0) + 1
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Last-Modified", email.utils.formatdate(MODIFIED, usegmt=True))
                self.send_header("Content-Disposition", 'attachment; filename="ignored.bin"')
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        super().__init__(Handler)


@pytest.fixture
def server():
    with Server() as s:
        yield s


def test_add_url_names_dates_and_modes(tmp_path, store_root, server):
    archive = gzip.compress(b"not unpacked")
    server.files.update({"/files/tool.sh": b"#!/bin/sh\n", "/": b"root", "/t.tar.gz": archive})
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM scratch
ADD {server.url}/files/tool.sh /dest/
ADD {server.url}/ /dest/
ADD --chmod=755 --chown=5:6 {server.url}/files/tool.sh /bin/tool
ADD {server.url}/t.tar.gz /
"""})
    out = str(tmp_path / "out")
    build_image("--root", store_root, context, "-o", f"type=local,dest={out}")
    st = os.stat(f"{out}/dest/tool.sh")
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime) == (0o600, 0, 0, MODIFIED)
    with open(f"{out}/dest/__unnamed__") as f:               # a URL path without a name
        assert f.read() == "root"
    st = os.stat(f"{out}/bin/tool")
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o755, 5, 6)
    with open(f"{out}/t.tar.gz", "rb") as f:                 # remote archives are not unpacked
        assert f.read() == archive


def test_add_url_cache_follows_content(tmp_path, store_root, server):
    server.files["/data.txt"] = b"one"
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM scratch\nADD {server.url}/data.txt /\n"})
    build_image("--root", store_root, context)
    again = build_image("--root", store_root, "--progress", "plain", context)
    assert any("ADD" in s for s in step_lines(again.stderr, "CACHED"))
    server.files["/data.txt"] = b"two"
    out = str(tmp_path / "out")
    changed = build_image("--root", store_root, "--progress", "plain", context, "-o", f"type=local,dest={out}")
    assert any("ADD" in s for s in step_lines(changed.stderr, "DONE"))
    with open(f"{out}/data.txt") as f:
        assert f.read() == "two"
    assert server.gets["/data.txt"] == 3                    # fetched once per build


def test_add_url_checksum(tmp_path, store_root, server):
    server.files["/pinned"] = b"pinned content"
    good = "sha256:" + hashlib.sha256(b"pinned content").hexdigest()
    bad = "sha256:" + "0" * 64
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM scratch\nADD --checksum={good} {server.url}/pinned /\n"})
    build_image("--root", store_root, context)

    write_context(tmp_path / "ctx", {"Dockerfile": f"FROM scratch\nADD --checksum={bad} {server.url}/pinned /\n"})
    proc = build_image("--root", store_root, context, check=False)
    assert proc.returncode == 1
    assert f"digest mismatch for {server.url}/pinned: {good} (expected: {bad})" in proc.stderr


@pytest.mark.parametrize("line, error", [
    ("ADD --checksum=md5:7e55db001d319a94b0b713529a756623 {url}/x /", "unsupported digest algorithm"),
    ("ADD --checksum=sha256:xyz {url}/x /", "invalid checksum digest format"),
    ("ADD --checksum=sha256:" + "a" * 64 + " local /", "checksum requires HTTP(S) or Git sources"),
    ("COPY {url}/x /", "source can't be a URL for COPY"),
])
def test_add_url_flag_errors_name_the_line(tmp_path, store_root, server, line, error):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\n" + line.format(url=server.url) + "\n",
                                               "local": "x"})
    proc = build_image("--root", store_root, context, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"ERROR: Dockerfile:2: {error}")


def test_add_url_not_found(tmp_path, store_root, server):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM scratch\nADD {server.url}/missing /\n"})
    proc = build_image("--root", store_root, context, check=False)
    assert proc.returncode == 1
    assert "invalid response status 404" in proc.stderr and "ADD" in proc.stderr
