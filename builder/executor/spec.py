"""What the solver hands an executor: a root filesystem, a process, extra mounts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from builder.plumbing.records import dataclass, field
from builder.snapshot.snapshotter import SnapshotMount

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

OutputCallback = Callable[[int, bytes], None]


# The root a step runs over: an active snapshot's mount, as the snapshotter gives it (overlay:
# lowerdirs base first, changes in upperdir, workdir beside it; naive: one tree, bound).
RootFS = SnapshotMount


@dataclass(frozen=True)
class ProcessSpec:
    args: tuple[str, ...]        # argv; args[0] is looked up in the container's PATH if it has no '/'
    env: tuple[str, ...] = ()    # "KEY=value"; PATH defaults to DEFAULT_PATH
    cwd: str = "/"               # created if missing
    user: str = ""               # "", "root", "name", "uid", "name:group", "uid:gid", ...
    hostname: str = "buildkitsandbox"
    network: str = "none"        # "none" (new netns, loopback only), "host", or "default" (own netns,
                                 # a veth to the host, NAT: see executor/network.py)
    extra_hosts: tuple[tuple[str, str], ...] = ()   # (name, ip) lines for /etc/hosts (--add-host);
                                                    # ip "host-gateway" is the host's side of the link
    shm_size: int = 0            # bytes of /dev/shm; 0 = 64 MiB, Docker's default
    ulimits: tuple[tuple[str, int, int], ...] = ()  # (name, soft, hard) rlimits; -1 = unlimited


@dataclass(frozen=True)
class ResourceLimits:
    """Limits of every RUN (its own cgroup): BuildKit's defaults, pids 4096 and no memory limit."""

    memory: int | None = None        # bytes; None: unlimited
    pids: int | None = 4096          # None: unlimited
    cpu_shares: int | None = None    # relative CPU weight, 1024 = one share; None: the kernel's default


@dataclass(frozen=True)
class Sandbox:
    """How tightly every RUN is confined, beyond namespaces (which are always on)."""

    seccomp: bool = True             # Docker's default seccomp profile; off: --security-opt seccomp=unconfined
    limits: ResourceLimits = ResourceLimits()


@dataclass(frozen=True)
class BindMount:
    """A host path at TARGET; the caller trusts SOURCE (it is never resolved in a container)."""

    source: str                  # host path
    target: str                  # path inside the container
    readonly: bool = True


@dataclass(frozen=True)
class LayeredMount:
    """A stack of layer directories (a stage, an image, the context) at TARGET, or only the
    part of it at SUBPATH, resolved as if the stack were the root: its symlinks cannot reach
    the host. Read-only unless UPPERDIR (with WORKDIR on its filesystem) is given: writes then
    land there, and the caller throws them away."""

    lowerdirs: tuple[str, ...]   # base first; may be empty (an empty directory)
    target: str
    subpath: str = "/"
    upperdir: str | None = None
    workdir: str | None = None
    kind: str = "overlay"        # the snapshotter's: "overlay", or "bind" for a naive snapshot's tree

    @property
    def snapshot(self) -> SnapshotMount:
        return SnapshotMount(self.lowerdirs, self.upperdir, self.workdir, self.kind)


DEFAULT_TMPFS_SIZE = 512 << 20   # a RUN --mount=type=tmpfs without size= (the kernel's default is half the RAM)


@dataclass(frozen=True)
class TmpfsMount:
    target: str
    size: int = 0                # bytes; 0 = DEFAULT_TMPFS_SIZE


@dataclass(frozen=True)
class SecretFile:
    """DATA as a read-only file at TARGET, kept in memory (a tmpfs), never on disk."""

    target: str
    data: bytes = field(repr=False)
    mode: int = 0o400
    uid: int = 0
    gid: int = 0


Mount = BindMount | LayeredMount | TmpfsMount | SecretFile


class Executor(Protocol):
    def run(self, rootfs: RootFS, process: ProcessSpec, mounts: Sequence[Mount] = (),
            output: OutputCallback | None = None) -> int:
        """Run PROCESS to completion over ROOTFS and return its exit code (128+signal if killed).

        MOUNTS are attached in order of their targets, so a mount may sit inside another.
        OUTPUT(fd, chunk) receives the process's stdout (fd 1) and stderr (fd 2) as it writes.
        """
        ...

    def run_in_rootfs(self, rootfs: RootFS, fn: Callable[[str], None]) -> None:
        """Mount ROOTFS privately, call FN(merged_dir), unmount; FN's changes land in the upperdir.

        An exception from FN is re-raised as a SolveError (BuildErrors pass through unchanged).
        """
        ...
