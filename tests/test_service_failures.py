"""`build-image serve` when things break: a client killed mid-build, the server SIGKILLed
mid-build, a context upload cut off halfway; and --max-builds holding builds back."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time

import pytest

from tests.support.buildserver import BuildServer
from tests.support.images import build_image, write_context
from tests.test_service import _running

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry]


def _slow_build(server, base: str, seconds: int, name: str):
    context = write_context(server.workdir(name), {"Dockerfile": f"FROM {base}\nRUN echo started && sleep {seconds}\n"})
    proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "--server", server.address, "build",
                             "--progress", "plain", context], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    return proc, f"sleep {seconds}"


def _wait_for(condition, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _children(pid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, IndexError, ValueError):
            pass
    return found


def _store_is_clean(root: str) -> None:
    tmp = os.path.join(root, "service", "tmp")   # gone once the server stopped
    assert (os.listdir(tmp) if os.path.isdir(tmp) else []) == []
    assert os.listdir(os.path.join(root, "run")) == []
    fsck = build_image("fsck", "--root", root, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_a_client_killed_mid_build_cancels_it_and_nothing_leaks(store_root, busybox_registry):
    with BuildServer(store_root) as server:
        proc, sleeper = _slow_build(server, busybox_registry.reference, 731, "killed-client")
        assert _wait_for(lambda: _running(sleeper))
        workers = _children(server.proc.pid)
        assert workers                        # the build's worker process
        proc.kill()
        proc.wait()
        assert _wait_for(lambda: not _running(sleeper), 10)
        assert _wait_for(lambda: not _children(server.proc.pid), 10)
        assert _wait_for(lambda: "POST /v1/build" in server.log(), 10)
        _store_is_clean(store_root)
        assert server.client("images").returncode == 0


def test_a_server_killed_mid_build_leaves_a_store_a_restart_finds_consistent(store_root, busybox_registry):
    with BuildServer(store_root) as server:
        proc, sleeper = _slow_build(server, busybox_registry.reference, 732, "killed-server")
        assert _wait_for(lambda: _running(sleeper))
        server.stop(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1 and err.decode().splitlines()[-1].startswith("ERROR: ")
        assert _wait_for(lambda: not _running(sleeper), 20)   # the worker died with its server, cleanly
        server.start()                                         # the same root, a new server
        assert os.listdir(os.path.join(store_root, "service", "tmp")) == []
        context = write_context(server.workdir("after"), {"Dockerfile": f"FROM {busybox_registry.reference}\n"
                                                                          "RUN echo after > /after\n"})
        assert server.client("build", "-q", "-t", "after", context).returncode == 0
    _store_is_clean(store_root)


def test_a_context_upload_cut_off_halfway_is_a_clear_error_and_stores_nothing(store_root, busybox_registry):
    with BuildServer(store_root) as server:
        blobs = os.path.join(store_root, "blobs", "sha256")
        blobs_before = sorted(os.listdir(blobs)) if os.path.isdir(blobs) else []
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(server.address.removeprefix("unix://"))
        request = json.dumps({"tags": ["half"]}).encode() + b"\n"
        whole = io.BytesIO()
        with tarfile.open(fileobj=whole, mode="w") as tf:
            for name, data in (("Dockerfile", b"FROM scratch\nCOPY big /\n"), ("big", os.urandom(200_000))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        half_tar = whole.getvalue()[:len(whole.getvalue()) // 2]   # then the client goes quiet
        sock.sendall(b"POST /v1/build HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n" % len(request + half_tar) + request + half_tar + b"\r\n")
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        sock.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split()[1] == b"400"
        message = json.loads(body)["message"]
        assert message.startswith("context upload failed:") and "cut off" in message, message
        assert (sorted(os.listdir(blobs)) if os.path.isdir(blobs) else []) == blobs_before
        assert os.listdir(os.path.join(store_root, "service", "tmp")) == []
        assert "half" not in server.client("images").stdout.decode()


def test_max_builds_runs_one_at_a_time_and_the_second_waits(store_root, busybox_registry):
    with BuildServer(store_root, extra=("--max-builds", "1")) as server:
        first, first_sleeper = _slow_build(server, busybox_registry.reference, 3, "first")
        assert _wait_for(lambda: _running(first_sleeper))
        second, second_sleeper = _slow_build(server, busybox_registry.reference, 2, "second")
        overlap = False
        while first.poll() is None:
            overlap = overlap or bool(_running(second_sleeper))
            time.sleep(0.05)
        assert second.wait(120) == 0 and first.returncode == 0
        assert not overlap


def test_the_servers_limits_are_every_builds_defaults_and_caps(store_root, busybox_registry):
    with BuildServer(store_root, extra=("--memory", "32m", "--pids-limit", "64")) as server:
        hungry = write_context(server.workdir("hungry"), {"Dockerfile": (
            f"FROM {busybox_registry.reference}\nRUN dd if=/dev/zero of=/dev/null bs=96M count=1\n")})
        killed = server.client("build", "--progress", "plain", hungry)
        assert killed.returncode == 1
        assert b"RUN was killed: out of memory (limit 32 MiB)" in killed.stderr
        over = server.client("build", "--memory", "1g", hungry)
        assert over.returncode == 1
        assert over.stderr.decode().strip().splitlines()[-1] == \
            "ERROR: --memory 1g: over the server's limit of 32 MiB"
