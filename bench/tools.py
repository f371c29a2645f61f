"""One way to run a build per tool, timed from the outside as a user would run it.

Both tools are timed as whole commands (client start-up included): build-image's CLI process,
and `docker build` (client + daemon round trip).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
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


class BuildTool(Protocol):
    name: str

    def prepare(self, base: str, context: str) -> BuildOutcome:
        """Untimed: fetch BASE and warm the tool up with one build of CONTEXT."""

    def build(self, context: str, *, no_cache: bool, network: str = "default") -> BuildOutcome:
        """One timed build of CONTEXT/Dockerfile (NETWORK: build-image's --network)."""


def run_timed(argv: Sequence[str], *, env: dict[str, str] | None = None,
              timeout: float = BUILD_TIMEOUT) -> BuildOutcome:
    """Run ARGV; wall time, success, and the tail of stderr on failure. Never raises for the command.

    On timeout or interruption the command gets SIGTERM and a grace period before SIGKILL, so a
    build tool can take its own mounts and sandboxes down.
    """
    proc = None
    start = time.perf_counter()
    try:
        with interrupts_held() as mask:
            try:
                proc = subprocess.Popen(list(argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, preexec_fn=restore_mask(mask))
            except OSError as error:
                return BuildOutcome(0.0, False, f"cannot run {argv[0]}: {error}")
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stderr = _stop(proc)
        return BuildOutcome(time.perf_counter() - start, False,
                            _tail(stderr) + f"\n(timed out after {timeout:.0f}s)")
    except BaseException:
        if proc is not None:
            _stop(proc)
        raise
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return BuildOutcome(seconds, False, _tail(stderr) + f"\n(exit status {proc.returncode})")
    return BuildOutcome(seconds, True)


def _stop(proc: subprocess.Popen) -> bytes:
    """SIGTERM, a grace period, then SIGKILL; returns what was left of stderr."""
    proc.terminate()
    try:
        _, stderr = proc.communicate(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
    return stderr or b""


def _tail(data: bytes, lines: int = ERROR_LINES) -> str:
    return "\n".join(data.decode(errors="replace").rstrip().splitlines()[-lines:])


class BuildImage:
    """build-image's command line, with one store root for the whole run."""

    name = "build-image"

    def __init__(self, command: Sequence[str], store_root: str):
        self.command = list(command)
        self.store_root = store_root

    def argv(self, context: str, *, no_cache: bool, network: str = "default") -> list[str]:
        return [*self.command, "--root", self.store_root, "--progress", "quiet",
                *(["--no-cache"] if no_cache else []), *(["--network", network] if network != "default" else []),
                context]

    def prepare(self, base: str, context: str) -> BuildOutcome:
        # build-image has no pull command: the first build of a FROM BASE file fetches it.
        return run_timed(self.argv(context, no_cache=False))

    def build(self, context: str, *, no_cache: bool, network: str = "default") -> BuildOutcome:
        return run_timed(self.argv(context, no_cache=no_cache, network=network))


class BuildKit:
    """`DOCKER_BUILDKIT=1 docker build --network=none` against a private dockerd."""

    name = "buildkit"

    def __init__(self, daemon: PrivateDockerd):
        self.daemon = daemon

    def argv(self, context: str, *, no_cache: bool) -> list[str]:
        return self.daemon.command("build", "--network=none", "-q",
                                   *(["--no-cache"] if no_cache else []), context)

    def prepare(self, base: str, context: str) -> BuildOutcome:
        pulled = run_timed(self.daemon.command("pull", "-q", base), env=self.daemon.env)
        if not pulled.ok:
            return pulled
        return run_timed(self.argv(context, no_cache=False), env=self.daemon.env)

    def build(self, context: str, *, no_cache: bool, network: str = "default") -> BuildOutcome:
        # Always --network=none: this dockerd has no bridge (MACHINE.md), so BuildKit's RUNs have none.
        return run_timed(self.argv(context, no_cache=no_cache), env=self.daemon.env)
