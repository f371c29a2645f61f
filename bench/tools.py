"""One way to run a build (and a push, and a save) per tool, timed from the outside as a user
would run it.

Both tools are timed as whole commands (client start-up included): build-image's CLI process,
and `docker build|push|save` (client + daemon round trip).

Peak RSS is the largest resident set of any one process that did the work: for build-image the
kernel's ru_maxrss of the command and the children it waited for (wait4); for docker the larger
of the client's and dockerd's (its VmHWM, reset through /proc/PID/clear_refs before each command).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from typing import Protocol, Sequence

from bench.dockerd import PrivateDockerd
from bench.signals import interrupts_held, restore_mask

BUILD_TIMEOUT = 300.0
STOP_GRACE = 10.0
ERROR_LINES = 20


@dataclass(frozen=True)
class BuildOutcome:
    seconds: float
    ok: bool
    error: str = ""       # the last lines of stderr when not ok
    peak_rss: int | None = None   # bytes, the largest process (see the module docstring)
    afterwards: float = 0.0   # untimed seconds the tool's own work went on after the command returned


class BuildTool(Protocol):
    name: str

    def prepare(self, base: str, context: str) -> BuildOutcome:
        """Untimed: fetch BASE and warm the tool up with one build of CONTEXT."""

    def build(self, context: str, *, no_cache: bool, network: str = "default",
              tag: str | None = None) -> BuildOutcome:
        """One timed build of CONTEXT/Dockerfile (NETWORK: build-image's --network; TAG: -t)."""

    def tag(self, image: str, name: str) -> BuildOutcome:
        """Untimed: name IMAGE also NAME."""

    def push(self, name: str) -> BuildOutcome:
        """One timed push of NAME (compressing and uploading its layers)."""

    def save(self, image: str, dest: str) -> BuildOutcome:
        """One timed export of IMAGE to the archive DEST (build-image: OCI; docker: `docker save`)."""


def wait_until_unused(root: str, timeout: float = 300) -> float:
    """Seconds until nobody holds ROOT/lock any more (polled, as `prune` would find it)."""
    import fcntl

    start = time.monotonic()
    try:
        lock = open(os.path.join(root, "lock"), "a")
    except OSError:
        return 0.0
    with lock:
        while time.monotonic() - start < timeout:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                time.sleep(0.01)
            else:
                break
    return time.monotonic() - start


def run_timed(argv: Sequence[str], *, env: dict[str, str] | None = None,
              timeout: float = BUILD_TIMEOUT, daemon_pid: int | None = None) -> BuildOutcome:
    """Run ARGV; wall time, success, peak RSS, and the tail of stderr on failure. Never raises for
    the command. DAEMON_PID: a server doing the work for ARGV, whose peak RSS counts too.

    On timeout or interruption the command gets SIGTERM and a grace period before SIGKILL, so a
    build tool can take its own mounts and sandboxes down.
    """
    proc = None
    timed_out = threading.Event()
    with tempfile.TemporaryFile() as stderr:
        if daemon_pid is not None:
            reset_peak_rss(daemon_pid)
        start = time.perf_counter()
        try:
            with interrupts_held() as mask:
                try:
                    proc = subprocess.Popen(list(argv), env=env, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=stderr,
                                            preexec_fn=restore_mask(mask))
                except OSError as error:
                    return BuildOutcome(0.0, False, f"cannot run {argv[0]}: {error}")
            timer = _Deadline(proc, timeout, timed_out)
            try:
                status, rusage = _wait4(proc)
            finally:
                timer.cancel()
        except BaseException:
            if proc is not None and proc.returncode is None:
                _stop(proc)
            raise
        seconds = time.perf_counter() - start
        peak = rusage.ru_maxrss * 1024
        if daemon_pid is not None:
            peak = max(peak, daemon_peak_rss(daemon_pid) or 0)
        stderr.seek(0)
        text = stderr.read()
    if timed_out.is_set():
        return BuildOutcome(seconds, False, _tail(text) + f"\n(timed out after {timeout:.0f}s)", peak)
    if status != 0:
        return BuildOutcome(seconds, False, _tail(text) + f"\n(exit status {status})", peak)
    return BuildOutcome(seconds, True, "", peak)


def _wait4(proc: subprocess.Popen) -> tuple[int, object]:
    """Reap PROC ourselves (Popen.wait would not give the rusage); its exit code and rusage."""
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, rusage


class _Deadline:
    """After TIMEOUT, SIGTERM the process, then SIGKILL it STOP_GRACE later; only signals, since
    the thread blocked in wait4 is the one that reaps it."""

    def __init__(self, proc: subprocess.Popen, timeout: float, fired: threading.Event):
        self.proc = proc
        self.fired = fired
        self._timers = [threading.Timer(timeout, self._term), threading.Timer(timeout + STOP_GRACE, self._kill)]
        for timer in self._timers:
            timer.daemon = True
            timer.start()

    def _term(self) -> None:
        self.fired.set()
        if self.proc.returncode is None:
            self.proc.terminate()

    def _kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()

    def cancel(self) -> None:
        for timer in self._timers:
            timer.cancel()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, a grace period, then SIGKILL, and reap it."""
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def reset_peak_rss(pid: int) -> None:
    """Start PID's VmHWM afresh (Linux 4.0+: writing 5 to clear_refs). Best effort."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def daemon_peak_rss(pid: int) -> int | None:
    """PID's peak resident set (VmHWM) in bytes, or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _tail(data: bytes, lines: int = ERROR_LINES) -> str:
    return "\n".join(data.decode(errors="replace").rstrip().splitlines()[-lines:])


class BuildImage:
    """build-image's command line, with one store root for the whole run."""

    name = "build-image"

    def __init__(self, command: Sequence[str], store_root: str):
        self.command = list(command)
        self.store_root = store_root

    def argv(self, context: str, *, no_cache: bool, network: str = "default", tag: str | None = None) -> list[str]:
        return [*self.command, "--root", self.store_root, "--progress", "quiet",
                *(["--no-cache"] if no_cache else []), *(["--network", network] if network != "default" else []),
                *(["-t", tag] if tag else []), context]

    def _command(self, *args: str) -> list[str]:
        return [*self.command, *args[:1], "--root", self.store_root, *args[1:]]

    def prepare(self, base: str, context: str) -> BuildOutcome:
        # build-image has no pull command: the first build of a FROM BASE file fetches it.
        return run_timed(self.argv(context, no_cache=False))

    def build(self, context: str, *, no_cache: bool, network: str = "default",
              tag: str | None = None) -> BuildOutcome:
        outcome = run_timed(self.argv(context, no_cache=no_cache, network=network, tag=tag))
        # A build leaves its discarded scratch dirs to a detached deleter that holds the root
        # shared until they are gone (builder/snapshot/snapshots.py). Waited for here, untimed
        # but reported, so that its disk work never runs into the next timed build of either tool.
        return replace(outcome, afterwards=wait_until_unused(self.store_root))

    def tag(self, image: str, name: str) -> BuildOutcome:
        return run_timed(self._command("tag", image, name))

    def push(self, name: str) -> BuildOutcome:
        return run_timed(self._command("push", "-q", name))

    def save(self, image: str, dest: str) -> BuildOutcome:
        return run_timed(self._command("save", "--format", "oci", "-o", dest, image))


class BuildKit:
    """`DOCKER_BUILDKIT=1 docker build --network=none` (and docker push, docker save) against a
    private dockerd."""

    name = "buildkit"

    def __init__(self, daemon: PrivateDockerd):
        self.daemon = daemon

    def argv(self, context: str, *, no_cache: bool, tag: str | None = None) -> list[str]:
        return self.daemon.command("build", "--network=none", "-q",
                                   *(["--no-cache"] if no_cache else []), *(["-t", tag] if tag else []), context)

    def _run(self, argv: list[str]) -> BuildOutcome:
        return run_timed(argv, env=self.daemon.env, daemon_pid=self.daemon.pid)

    def prepare(self, base: str, context: str) -> BuildOutcome:
        pulled = self._run(self.daemon.command("pull", "-q", base))
        if not pulled.ok:
            return pulled
        return self._run(self.argv(context, no_cache=False))

    def build(self, context: str, *, no_cache: bool, network: str = "default",
              tag: str | None = None) -> BuildOutcome:
        # Always --network=none: this dockerd has no bridge (MACHINE.md), so BuildKit's RUNs have none.
        return self._run(self.argv(context, no_cache=no_cache, tag=tag))

    def tag(self, image: str, name: str) -> BuildOutcome:
        return self._run(self.daemon.command("tag", image, name))

    def push(self, name: str) -> BuildOutcome:
        # 127.0.0.0/8 registries are plain HTTP for dockerd without configuration.
        return self._run(self.daemon.command("push", "-q", name))

    def save(self, image: str, dest: str) -> BuildOutcome:
        return self._run(self.daemon.command("save", "-o", dest, image))
