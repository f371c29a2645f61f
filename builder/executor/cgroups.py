"""A child cgroup per RUN: which devices it may open, and its memory, pids and CPU limits.

Both cgroup layouts are handled; ``detect()`` picks the one this machine mounts:

    v1 (and hybrid: v1 controllers beside a cgroup2 mount with none of them)
        one directory per controller, each under this process's own cgroup of that controller
        (``/proc/self/cgroup``): devices.deny/devices.allow, memory.limit_in_bytes (and memsw, so
        swap does not stretch the limit), pids.max, cpu.shares; OOM kills counted in memory.oom_control
    v2 (unified)
        one directory under this process's cgroup: memory.max (memory.swap.max 0), pids.max, cpu.weight
        (from the shares, as runc converts them); the device rules are an eBPF program of type
        BPF_PROG_TYPE_CGROUP_DEVICE attached to the directory; OOM kills counted in memory.events

The devices allowed are runc's default set, as BuildKit uses it: mknod of any node, and read/write
of null, zero, full, random, urandom, tty, console, ptmx and the pts ptys. Any other device, a block
device above all, cannot be opened, even if a layer ships it with mode 0666.

Directories are named ``build-image-PID-N`` (PID of the build-image process that made them). The
parent creates and configures them before it forks; the container's supervisor moves init in by
writing init's pid into the prepared ``cgroup.procs`` paths (plain os calls, fork-safe) while init
mounts its root, and init then unshares its cgroup namespace, so the step sees its own cgroup as the
root. The supervisor itself stays out: only the step's processes count against its limits.
``remove()`` deletes them after the step; ``sweep_stale()`` deletes those of processes that no
longer exist (a SIGKILLed build-image cannot clean up; its containers die with it through
PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import struct
import time

from builder.errors import SolveError
from builder.executor.spec import ResourceLimits
from builder.plumbing import linux
from builder.plumbing.records import dataclass

PREFIX = "build-image-"
V1_CONTROLLERS = ("devices", "memory", "pids", "cpu")
V2_CONTROLLERS = ("memory", "pids", "cpu")

# (type, major, minor or None for any): runc's default allowed devices.
ALLOWED_DEVICES = (("c", 1, 3), ("c", 1, 5), ("c", 1, 7), ("c", 1, 8), ("c", 1, 9),   # null zero full random urandom
                   ("c", 5, 0), ("c", 5, 1), ("c", 5, 2),                              # tty console ptmx
                   ("c", 136, None))                                                   # /dev/pts/N
_STALE_NAME = re.compile(re.escape(PREFIX) + r"(\d+)-\d+$")


class OutOfMemory(SolveError):
    """A RUN whose processes hit its memory limit and were killed by the kernel."""

    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(f"RUN was killed: out of memory (limit {format_bytes(limit)})")


class CgroupError(SolveError):
    """A step's cgroup could not be made or configured."""


def format_bytes(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


@dataclass(frozen=True)
class Layout:
    version: int                            # 1 or 2
    parents: tuple[tuple[str, str], ...]    # (controller, this process's cgroup directory); v2: ("", dir)

    def parent(self, controller: str) -> str:
        return dict(self.parents)[controller]


def detect(mountinfo: str | None = None, own: str | None = None, parent: str | None = None) -> Layout | None:
    """This machine's layout from /proc/self/mountinfo and /proc/self/cgroup; None without cgroups.

    PARENT (--cgroup-parent, as docker's cgroupfs driver reads it): step cgroups go under that path,
    from each hierarchy's root if it is absolute, else under this process's own cgroup."""
    mountinfo = _read("/proc/self/mountinfo") if mountinfo is None else mountinfo
    own = _read("/proc/self/cgroup") if own is None else own
    v1_mounts: dict[str, str] = {}
    v2_mount = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line:
            continue
        post = line.split(" - ", 1)[1].split()
        fstype, options = post[0], post[2] if len(post) > 2 else ""
        if fstype == "cgroup2" and fields[4] == "/sys/fs/cgroup":
            v2_mount = fields[4]
        elif fstype == "cgroup":
            for option in options.split(","):
                v1_mounts.setdefault(option, fields[4])
    own_paths: dict[str, str] = {}
    for line in own.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else ("",):
            own_paths[controller] = path

    def under(mount: str, own_path: str) -> str:
        base = os.path.join(mount, own_path.lstrip("/"))
        if parent is None:
            return base
        return os.path.normpath(os.path.join(mount if parent.startswith("/") else base, parent.lstrip("/")))

    if v2_mount is not None:  # unified: /sys/fs/cgroup itself is cgroup2
        return Layout(2, (("", under(v2_mount, own_paths.get("", "/"))),))
    if all(c in v1_mounts and c in own_paths for c in V1_CONTROLLERS):
        return Layout(1, tuple((c, under(v1_mounts[c], own_paths[c])) for c in V1_CONTROLLERS))
    return None


def make_parents(layout: Layout) -> tuple[str, ...]:
    """Create LAYOUT's parent directories that are missing (a new --cgroup-parent); returns those
    made, outermost first, for ``remove_parents`` to take away again."""
    made: list[str] = []
    for _, parent in layout.parents:
        missing = []
        path = parent
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for path in reversed(missing):
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
            except OSError as exc:
                remove_parents(tuple(made))
                raise CgroupError(f"cannot create cgroup parent {path}: {os.strerror(exc.errno or errno.EIO).lower()}") from None
            made.append(path)
    return tuple(made)


def remove_parents(made: tuple[str, ...]) -> None:
    for path in reversed(made):
        _rmdir_when_empty(path, attempts=1)


_counter = itertools.count()


class StepCgroup:
    """The cgroup directories of one RUN, created and configured by the parent."""

    def __init__(self, layout: Layout, limits: ResourceLimits):
        self.layout = layout
        self.limits = limits
        self.name = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.dirs: tuple[str, ...] = ()
        try:
            if layout.version == 1:
                self._make_v1()
            else:
                self._make_v2()
        except OSError as exc:
            self.remove()
            raise CgroupError(f"cannot set up the step's cgroup: {os.strerror(exc.errno or errno.EIO).lower()}") from None
        except BaseException:
            self.remove()
            raise

    @property
    def procs_files(self) -> tuple[str, ...]:
        """What the supervisor writes init's pid into (prepared data for the child)."""
        return tuple(os.path.join(d, "cgroup.procs") for d in self.dirs)

    def _mkdir(self, parent: str) -> str:
        path = os.path.join(parent, self.name)
        os.mkdir(path)
        self.dirs += (path,)
        return path

    def _make_v1(self) -> None:
        limits = self.limits
        devices = self._mkdir(self.layout.parent("devices"))
        _write(devices, "devices.deny", "a")
        for rule in ("c *:* m", "b *:* m", *(_v1_rule(d) for d in ALLOWED_DEVICES)):
            _write(devices, "devices.allow", rule)
        memory = self._mkdir(self.layout.parent("memory"))
        if limits.memory is not None:
            _write(memory, "memory.limit_in_bytes", str(limits.memory))
            if os.path.exists(os.path.join(memory, "memory.memsw.limit_in_bytes")):
                _write(memory, "memory.memsw.limit_in_bytes", str(limits.memory))
        pids = self._mkdir(self.layout.parent("pids"))
        if limits.pids is not None:
            _write(pids, "pids.max", str(limits.pids))
        cpu = self._mkdir(self.layout.parent("cpu"))
        if limits.cpu_shares is not None:
            _write(cpu, "cpu.shares", str(limits.cpu_shares))

    def _make_v2(self) -> None:
        parent = self.layout.parent("")
        limits = self.limits
        needed = {"memory": limits.memory, "pids": limits.pids, "cpu": limits.cpu_shares}
        needed = [c for c, value in needed.items() if value is not None]
        available = set(_read(os.path.join(parent, "cgroup.controllers")).split())
        missing = [c for c in needed if c not in available]
        if missing:
            raise CgroupError(f"cannot limit the step: the {missing[0]} controller is not available "
                              f"in {parent}")
        enabled = set(_read(os.path.join(parent, "cgroup.subtree_control")).split())
        wanted = [c for c in needed if c not in enabled]
        if wanted:
            _write(parent, "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
        path = self._mkdir(parent)
        if limits.memory is not None:
            _write(path, "memory.max", str(limits.memory))
            if os.path.exists(os.path.join(path, "memory.swap.max")):
                _write(path, "memory.swap.max", "0")
        if limits.pids is not None:
            _write(path, "pids.max", str(limits.pids))
        if limits.cpu_shares is not None:
            _write(path, "cpu.weight", str(shares_to_weight(limits.cpu_shares)))
        attach_device_program(path)

    def oom_killed(self) -> bool:
        if self.layout.version == 1:
            memory = next(d for d in self.dirs if d.startswith(self.layout.parent("memory") + "/"))
            text = _read(os.path.join(memory, "memory.oom_control"))
        else:
            text = _read(os.path.join(self.dirs[0], "memory.events"))
        counts = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        return int(counts.get("oom_kill", "0")) > 0

    def remove(self) -> None:
        for path in reversed(self.dirs):
            _rmdir_when_empty(path)
        self.dirs = ()


def sweep_stale(layout: Layout) -> None:
    """Remove the step cgroups of build-image processes that are gone (a listdir per hierarchy)."""
    parents = {parent for _, parent in layout.parents}
    for parent in parents:
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            match = _STALE_NAME.match(name)
            if match and not _alive(int(match.group(1))):
                _rmdir_when_empty(os.path.join(parent, name), attempts=1)


def open_procs(procs_files: tuple[str, ...]) -> tuple[int, ...]:
    """Descriptors of the step's cgroup.procs files, to move a process in with ``move_into``.
    Child-safe: os calls on prepared paths."""
    fds: list[int] = []
    try:
        for path in procs_files:
            fds.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return tuple(fds)


def move_into(procs_fds: tuple[int, ...], pid: int) -> None:
    """Move process PID into the cgroups whose cgroup.procs files PROCS_FDS are. Child-safe."""
    for fd in procs_fds:
        os.write(fd, str(pid).encode())


def shares_to_weight(shares: int) -> int:
    """cpu.shares (2..262144) to cpu.weight (1..10000), runc's linear mapping."""
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142


def _v1_rule(device: tuple[str, int, int | None]) -> str:
    kind, major, minor = device
    return f"{kind} {major}:{'*' if minor is None else minor} rwm"


# ---- v2: the device rules as an eBPF program ----------------------------------------------

_BPF_DEVCG_DEV_BLOCK, _BPF_DEVCG_DEV_CHAR = 1, 2
_BPF_DEVCG_ACC_MKNOD = 1


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


_LDX_W = 0x61            # r_dst = *(u32 *)(r_src + off)
_ALU64_AND_K = 0x57
_ALU64_RSH_K = 0x77
_MOV64_K = 0xB7
_JNE_K = 0x55
_JEQ_K = 0x15
_JA = 0x05
_EXIT = 0x95


def device_program(allowed: tuple[tuple[str, int, int | None], ...] = ALLOWED_DEVICES) -> bytes:
    """A BPF_PROG_TYPE_CGROUP_DEVICE program: 1 (allow) for mknod of anything and for the ALLOWED
    devices, 0 (deny) otherwise. Its context is struct bpf_cgroup_dev_ctx {u32 access_type (access
    << 16 | type); u32 major; u32 minor}."""
    head = [
        _insn(_LDX_W, dst=2, src=1, off=0),          # r2 = access_type
        _insn(_LDX_W, dst=3, src=1, off=0),
        _insn(_ALU64_AND_K, dst=2, imm=0xFFFF),      # r2 = type
        _insn(_ALU64_RSH_K, dst=3, imm=16),          # r3 = access
        _insn(_LDX_W, dst=4, src=1, off=4),          # r4 = major
        _insn(_LDX_W, dst=5, src=1, off=8),          # r5 = minor
    ]
    rules = []
    for kind, major, minor in allowed:
        code = _BPF_DEVCG_DEV_CHAR if kind == "c" else _BPF_DEVCG_DEV_BLOCK
        checks = [(2, code), (4, major)] + ([(5, minor)] if minor is not None else [])
        block_len = len(checks) + 1
        rule = [_insn(_JNE_K, dst=reg, off=block_len - i - 1, imm=value) for i, (reg, value) in enumerate(checks)]
        rules.append(rule)
    # After the head: "mknod only" check, then each rule block jumps to allow; deny falls through.
    body: list[bytes] = []
    total_rules = sum(len(r) + 1 for r in rules)
    # if access == MKNOD goto allow (skip the rules and the two deny instructions)
    body.append(_insn(_JEQ_K, dst=3, off=total_rules + 2, imm=_BPF_DEVCG_ACC_MKNOD))
    remaining = total_rules
    for rule in rules:
        remaining -= len(rule) + 1
        body += rule
        body.append(_insn(_JA, off=remaining + 2))   # matched: jump over the rest and the deny
    deny = [_insn(_MOV64_K, dst=0, imm=0), _insn(_EXIT)]
    allow = [_insn(_MOV64_K, dst=0, imm=1), _insn(_EXIT)]
    return b"".join(head + body + deny + allow)


def attach_device_program(cgroup_dir: str) -> None:
    """Load the device program and attach it to CGROUP_DIR (the attachment keeps the program
    alive until the cgroup is removed, so its fd is closed at once)."""
    prog_fd = linux.bpf_load_program(linux.BPF_PROG_TYPE_CGROUP_DEVICE, device_program(), "Apache-2.0")
    try:
        dir_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            linux.bpf_prog_attach(prog_fd, dir_fd, linux.BPF_CGROUP_DEVICE)
        finally:
            os.close(dir_fd)
    finally:
        os.close(prog_fd)


# ---- files ---------------------------------------------------------------------------------

def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(directory: str, name: str, value: str) -> None:
    fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rmdir_when_empty(path: str, attempts: int = 50) -> None:
    """rmdir PATH; a cgroup whose last processes are still exiting is busy for a moment."""
    for attempt in range(attempts):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or attempt == attempts - 1:
                return
            time.sleep(0.01)
