"""A private dockerd for one benchmark run, gone without a trace afterwards.

    with PrivateDockerd() as daemon:
        subprocess.run(daemon.command("build", "--network=none", CONTEXT), env=daemon.env)

It gets its own data-root, exec-root, socket and client config, so it shares nothing with any
other daemon on the machine. Stopping it always terminates (then kills) the daemon and the
containerd it started, unmounts whatever is still mounted under its directories and removes them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

from bench.mounts import unmount_under
from bench.signals import interrupts_held, restore_mask

DOCKERD = "/usr/sbin/dockerd"
# Debian's 20.10 client; /usr/local/bin/docker is a newer client that comes first on PATH.
DOCKER_CLIENT = "/usr/bin/docker"

_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0
_MAX_EXEC_PARENT = 40


class DockerdUnavailable(RuntimeError):
    """dockerd could not be started; the message says why (with the end of its log)."""


class PrivateDockerd:
    def __init__(self, *, dockerd: str = DOCKERD, client: str = DOCKER_CLIENT,
                 start_timeout: float = _START_TIMEOUT):
        self.dockerd = dockerd
        self.client = client
        self.start_timeout = start_timeout
        self.data_root = ""
        self.exec_root = ""
        self.host = ""
        self._dir = ""
        self._proc: subprocess.Popen | None = None
        self._log = None

    # -- what callers use ---------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self, *args: str) -> list[str]:
        """A docker client command line talking to this daemon."""
        return [self.client, "-H", self.host, *args]

    @property
    def env(self) -> dict[str, str]:
        """The client's environment: BuildKit on, and no user config, context or host leaking in."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_BUILDKIT"] = "1"
        env["DOCKER_CONFIG"] = os.path.join(self._dir, "client-config")
        return env

    def server_version(self) -> str:
        result = subprocess.run(self.command("version", "--format", "{{.Server.Version}}"),
                                env=self.env, capture_output=True, text=True, timeout=30)
        return result.stdout.strip() or "unknown"

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(os.path.join(self._dir, "dockerd.log"), "rb") as f:
                text = f.read()[-64 * 1024:].decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> "PrivateDockerd":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if not os.access(self.dockerd, os.X_OK):
            raise DockerdUnavailable(f"{self.dockerd} not found (install Debian's docker.io)")
        if not os.access(self.client, os.X_OK):
            raise DockerdUnavailable(f"{self.client} not found (install Debian's docker.io)")
        if os.geteuid() != 0:
            raise DockerdUnavailable("dockerd needs root")
        self._dir = tempfile.mkdtemp(prefix="bench-dockerd-")
        self.exec_root = tempfile.mkdtemp(prefix="bx-", dir=_short_temp_dir())
        self.data_root = os.path.join(self._dir, "data")
        os.makedirs(os.path.join(self._dir, "client-config"))
        self.host = f"unix://{os.path.join(self._dir, 'docker.sock')}"
        self._log = open(os.path.join(self._dir, "dockerd.log"), "wb")
        with interrupts_held() as mask:
            self._proc = subprocess.Popen(
                [self.dockerd, "--iptables=false", "--bridge=none", "--data-root", self.data_root,
                 "--exec-root", self.exec_root, "-H", self.host,
                 "--pidfile", os.path.join(self._dir, "dockerd.pid")],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                # Its own session: Ctrl-C reaches us, and we stop the daemon in order.
                start_new_session=True, preexec_fn=restore_mask(mask))
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise DockerdUnavailable(
                    f"dockerd exited with status {self._proc.returncode}:\n{self.log_tail()}")
            try:
                ready = subprocess.run(self.command("info"), env=self.env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, timeout=10).returncode == 0
            except subprocess.TimeoutExpired:
                ready = False
            if ready:
                return
            time.sleep(0.2)
        raise DockerdUnavailable(f"dockerd did not answer `docker info` within {self.start_timeout:.0f}s:\n"
                                 f"{self.log_tail()}")

    def stop(self) -> None:
        """Idempotent, and safe to call whatever state start() left things in."""
        containerd_pid = self._managed_containerd_pid()
        if self._proc is not None:
            _terminate(self._proc, _STOP_TIMEOUT)
            self._proc = None
        if containerd_pid is not None:
            _stop_pid(containerd_pid, _STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None
        for root in (self.data_root, self.exec_root):
            if root:
                unmount_under(root)
        for path in (self._dir, self.exec_root):
            if path:
                shutil.rmtree(path, ignore_errors=True)
        self._dir = self.exec_root = self.data_root = ""

    def _managed_containerd_pid(self) -> int | None:
        """The containerd that this dockerd started (it records its pid under our exec-root)."""
        if not self.exec_root:
            return None
        try:
            with open(os.path.join(self.exec_root, "containerd", "containerd.pid")) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except (OSError, ValueError):
            return None
        # Only ever signal a process that is provably ours: its command line names our exec-root.
        return pid if self.exec_root in cmdline else None


def _short_temp_dir() -> str:
    """Where the exec-root goes: containerd and libnetwork put sockets in it, and a socket path must
    fit in 108 bytes, so a long $TMPDIR gives way to /tmp."""
    tmp = tempfile.gettempdir()
    return tmp if len(tmp) <= _MAX_EXEC_PARENT else "/tmp"


def _terminate(proc: subprocess.Popen, timeout: float) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stop_pid(pid: int, timeout: float) -> None:
    """SIGTERM a process that is not our child, then SIGKILL it if it outlives TIMEOUT."""
    deadline = time.monotonic() + timeout
    sig = signal.SIGTERM
    while True:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)
        if sig == signal.SIGKILL:
            return
        sig, deadline = signal.SIGKILL, time.monotonic() + 5


def _alive(pid: int) -> bool:
    """True while PID runs; a zombie (which PID 1 here may leave for a while) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
