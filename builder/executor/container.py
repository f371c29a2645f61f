"""NamespaceExecutor: run a build step in fresh namespaces over an overlay root.

Process tree of one ``run()``::

    caller thread --fork--> supervisor --fork--> init (PID 1 in the new namespaces; execs the step)

The supervisor unshares the mount, PID, UTS, IPC and (for network "none") network namespaces and
forks init into them; it is needed because ``unshare(CLONE_NEWPID)`` only moves the caller's
*children* into the new PID namespace. It then moves init into the step's cgroup while init mounts
its root; init waits for that before it unshares its cgroup namespace and goes on. The supervisor
waits for init, and kills it (which kills the whole PID namespace) when the caller closes the
"lifeline" pipe, so the caller never races init's exit to signal it. Both children set
``PR_SET_PDEATHSIG=SIGKILL``: if build-image dies, so does every container.

Every mount, the overlay included, is made by init inside its own mount namespace, after making
``/`` recursively private. Nothing is ever mounted on the host: when init exits the kernel tears
the mounts down, even if build-image was SIGKILLed. Host paths (layers, bind sources, the
generated /etc/hosts) are resolved into detached mounts *before* ``pivot_root``; all container
paths are resolved *after* it, so an image's symlinks can never point a mount or a stub at the
host.

Threads: ``run()`` is called from several scheduler threads at once, and it forks directly from
the calling thread rather than through a fork server. That is safe because of how little the
children do: every module they use is imported before the fork; they never log, print, import or
touch a lock another thread could hold (file objects, logging, queues); they use only ``os``,
``select``, ``socket``, ctypes calls and plain string parsing (/etc/passwd) on data prepared by
the parent, then ``execve`` or ``os._exit``. Signals are blocked at the C level until just before
``execve``, so no Python signal handler (KeyboardInterrupt) runs in a half-built container, and
the garbage collector is disabled so no finalizer of a foreign object runs there. The supervisor
first closes every descriptor it did not inherit on purpose, so a concurrent run's pipes do not
stay open in it. A small fork server would fork faster (a fork of a 40 MB parent costs about
4 ms here, and a run forks twice, for about 12 ms in all per RUN), but adds a process to manage,
a protocol and fd passing, for no gain in isolation.

``run_in_rootfs`` does not fork at all: it runs the caller's Python function on a short-lived
thread that unshares only its own mount namespace (Linux keeps mount namespaces per thread).
Arbitrary Python code in a forked child of a threaded process is exactly what is unsafe, and a
thread hands its exception back as-is, with no pickling. FN must do its work on that thread
(paths it opens resolve in that thread's namespace).
"""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import resource
import select
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import NoReturn

from builder.errors import BuildError, SolveError
from builder.executor import cgroups
from builder.executor import network as net
from builder.executor import seccomp
from builder.executor.container_mounts import (MountStub, layered_mount_fd, make_mountpoint, mount_dev, mount_proc,
                                               mount_sys, mount_tmpfs, remove_stubs, restrict_proc, secret_file_fds)
from builder.executor.spec import (DEFAULT_PATH, DEFAULT_TMPFS_SIZE, BindMount, LayeredMount, Mount,
                                   OutputCallback, ProcessSpec, RootFS, Sandbox, SecretFile, TmpfsMount)
from builder.executor.users import UserNotFound, resolve_user
from builder.plumbing import linux
from builder.plumbing.linux import clone_tree, move_mount
from builder.plumbing.records import dataclass

# Docker's default capability set for containers and build steps (see capabilities(7) numbers).
DEFAULT_CAPABILITIES = frozenset({
    0,   # CHOWN
    1,   # DAC_OVERRIDE
    3,   # FOWNER
    4,   # FSETID
    5,   # KILL
    6,   # SETGID
    7,   # SETUID
    8,   # SETPCAP
    10,  # NET_BIND_SERVICE
    13,  # NET_RAW
    18,  # SYS_CHROOT
    27,  # MKNOD
    29,  # AUDIT_WRITE
    31,  # SETFCAP
})

# The supervisor's unshare; init unshares its cgroup namespace itself, once in the step's cgroup.
_NAMESPACES = linux.CLONE_NEWNS | linux.CLONE_NEWPID | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC
_EXIT_SETUP_FAILED = 125
_EXIT_NOT_EXECUTABLE = 126
_EXIT_NOT_FOUND = 127
_READ_CHUNK = 65536
_SCRATCH_RELEASED = b"P"
_MAX_FD = os.sysconf("SC_OPEN_MAX")


def _read_cap_last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40


@dataclass(frozen=True)
class _Plan:
    """Everything the children need, computed by the parent before it forks."""

    rootfs: RootFS
    process: ProcessSpec
    mounts: tuple[tuple[Mount, bool], ...]      # (mount, a BindMount's source is a directory)
    runtime_dir: str                            # scratch: root/ (mount point), empty/, hosts, resolv.conf,
                                                # view-N/ (LayeredMount N), secrets/
    env: tuple[tuple[str, str], ...]            # the process env without HOME defaulted
    caller_pid: int
    cap_last: int
    netns_fd: int | None = None                 # network "default": the prepared namespace to join
    seccomp: linux.SeccompProgram | None = None  # installed right before execve; None: unconfined
    cgroup_procs: tuple[str, ...] = ()          # the step cgroup's cgroup.procs files; the supervisor moves init in
    etc_files: tuple[SecretFile, ...] = ()      # /etc/hosts and /etc/resolv.conf, served from a tmpfs

    @property
    def merged_dir(self) -> str:
        return os.path.join(self.runtime_dir, "root")

    @property
    def empty_dir(self) -> str:
        return os.path.join(self.runtime_dir, "empty")


class NamespaceExecutor:
    """Runs build steps in new mount, PID, UTS, IPC, cgroup and (optionally) network namespaces.

    NETWORK provides the "default" network's namespaces; without one, the executor makes its own
    on the first such RUN (and closes it in ``close()``).
    """

    def __init__(self, runtime_root: str | None = None, network: net.BridgeNetwork | None = None,
                 network_ready: int = 1, sandbox: Sandbox = Sandbox(),
                 cgroup_layout: cgroups.Layout | None | bool = True, cgroup_parent: str | None = None):
        """SANDBOX: seccomp and resource limits of every RUN. CGROUP_LAYOUT: True detects this
        machine's (every RUN then gets its own cgroup); tests may pass a Layout. CGROUP_PARENT
        (--cgroup-parent): the cgroup the steps' cgroups go under, made if missing (and then
        removed again by ``close()`` once empty)."""
        self.sandbox = sandbox
        self._seccomp: linux.SeccompProgram | None = None  # compiled on the first run (about 150 ms)
        self._cgroups = cgroups.detect(parent=cgroup_parent) if cgroup_layout is True else cgroup_layout or None
        self._made_cgroup_parents: tuple[str, ...] = ()
        if self._cgroups is not None:
            if cgroup_parent is not None:
                self._made_cgroup_parents = cgroups.make_parents(self._cgroups)
            cgroups.sweep_stale(self._cgroups)
        # Per-run scratch directories (overlay mount point, generated /etc/hosts) go here.
        self._runtime_root = runtime_root
        self._cap_last = _read_cap_last_cap()
        self._running = _RunningSupervisors()
        self._network = network
        self._owns_network = network is None
        self._network_ready = network_ready
        self._network_lock = threading.Lock()
        self._seccomp_lock = threading.Lock()
        self._seccomp_warmer: threading.Thread | None = None

    def _seccomp_program(self) -> linux.SeccompProgram | None:
        if self.sandbox.seccomp and self._seccomp is None:
            with self._seccomp_lock:
                if self._seccomp is None:
                    self._seccomp = linux.SeccompProgram(seccomp.default_program())
        return self._seccomp

    def kill_all(self) -> None:
        """Kills every container this executor is running (their run() calls then return)."""
        self._running.kill_all()

    def warm_sandbox(self) -> None:
        """Compile the seccomp filter now, on a thread of its own, so the first RUN need not wait
        for it (pyseccomp's import runs ldconfig twice; the compile itself is mostly C)."""
        def compile_quietly() -> None:
            try:
                self._seccomp_program()
            except Exception:
                pass  # the first RUN compiles it again, and reports what fails

        if self.sandbox.seccomp and self._seccomp is None and self._seccomp_warmer is None:
            self._seccomp_warmer = threading.Thread(target=compile_quietly, name="build-image-seccomp", daemon=True)
            self._seccomp_warmer.start()

    def warm_network(self) -> None:
        """Start preparing the default network now (a build that will need it calls this early)."""
        self._bridge().warm()

    def close(self) -> None:
        """Tear down the default network this executor made, if any, and the cgroup parents; wait
        for the seccomp compile warm_sandbox started (a build that fails before its first RUN must
        not exit while that thread is inside libseccomp: the interpreter's teardown would crash it)."""
        if self._seccomp_warmer is not None:
            self._seccomp_warmer.join()
        with self._network_lock:
            network, self._network = (self._network, None) if self._owns_network else (None, self._network)
            made, self._made_cgroup_parents = self._made_cgroup_parents, ()
        if network is not None:
            network.close()
        cgroups.remove_parents(made)

    def _bridge(self) -> net.BridgeNetwork:
        with self._network_lock:
            if self._network is None:
                self._network = net.BridgeNetwork(ready=self._network_ready)
            return self._network

    # ---- run ---------------------------------------------------------------------------------

    def run(self, rootfs: RootFS, process: ProcessSpec, mounts: Sequence[Mount] = (),
            output: OutputCallback | None = None) -> int:
        _validate(process, mounts)
        planned = tuple((m, isinstance(m, BindMount) and _bind_source_is_dir(m)) for m in mounts)
        lease = self._bridge().acquire() if process.network == "default" else None
        try:
            runtime_dir = self._make_runtime_dir(mounts)
            stubs: list[MountStub] = []
            step_cgroup = None
            try:
                step_cgroup = (cgroups.StepCgroup(self._cgroups, self.sandbox.limits)
                               if self._cgroups is not None else None)
                plan = _Plan(rootfs, process, planned, runtime_dir, _base_env(process.env),
                             os.getpid(), self._cap_last, lease.netns_fd if lease else None,
                             self._seccomp_program(), step_cgroup.procs_files if step_cgroup else (),
                             _etc_files(process, lease))
                code = _run_container(plan, output, stubs, self._running)
                limit = self.sandbox.limits.memory
                if code != 0 and limit is not None and step_cgroup is not None and step_cgroup.oom_killed():
                    raise cgroups.OutOfMemory(limit)
                return code
            finally:
                # Only reached once the container is reaped, so its mounts are gone.
                if step_cgroup is not None:
                    step_cgroup.remove()
                remove_stubs(rootfs.upperdir, stubs, rootfs.lowerdirs)
                shutil.rmtree(runtime_dir, ignore_errors=True)
        finally:
            if lease is not None:
                self._bridge().release(lease)

    def _make_runtime_dir(self, mounts: Sequence[Mount]) -> str:
        runtime_dir = tempfile.mkdtemp(prefix="build-image-run-", dir=self._runtime_root)
        try:
            os.mkdir(os.path.join(runtime_dir, "root"))
            os.mkdir(os.path.join(runtime_dir, "empty"))
            for i, mount in enumerate(mounts):
                if isinstance(mount, LayeredMount):
                    os.mkdir(os.path.join(runtime_dir, f"view-{i}"))
            os.mkdir(os.path.join(runtime_dir, "files"))  # the tmpfs that serves secrets and /etc files
        except BaseException:
            shutil.rmtree(runtime_dir, ignore_errors=True)
            raise
        return runtime_dir

    # ---- run_in_rootfs -----------------------------------------------------------------------

    def run_in_rootfs(self, rootfs: RootFS, fn: Callable[[str], None]) -> None:
        runtime_dir = tempfile.mkdtemp(prefix="build-image-fs-", dir=self._runtime_root)
        merged = os.path.join(runtime_dir, "root")
        empty = os.path.join(runtime_dir, "empty")
        outcome: list[BaseException] = []

        def in_private_namespace() -> None:
            try:
                linux.unshare(linux.CLONE_NEWNS)  # this thread only
                linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
                rootfs.attach(merged, empty)
            except BaseException as exc:
                outcome.append(SolveError(f"mounting the root file system failed: {exc}"))
                return
            try:
                fn(merged)
            except BaseException as exc:
                outcome.append(exc)
            finally:
                _unmount(merged)

        try:
            os.mkdir(merged)
            os.mkdir(empty)
            worker = threading.Thread(target=in_private_namespace, name="build-image-rootfs")
            worker.start()
            _join_uninterruptibly(worker)
        finally:
            shutil.rmtree(runtime_dir, ignore_errors=True)
        if outcome:
            exc = outcome[0]
            if isinstance(exc, BuildError):
                raise exc
            raise SolveError(str(exc) or type(exc).__name__) from exc


# ---- parent side ---------------------------------------------------------------------------

def _validate(process: ProcessSpec, mounts: Sequence[Mount]) -> None:
    if not process.args:
        raise SolveError("cannot run a process with an empty command")
    if process.network not in ("default", "none", "host"):
        raise SolveError(f'network mode "{process.network}" is not supported (use default, none or host)')
    if not process.cwd.startswith("/"):
        raise SolveError(f'working directory "{process.cwd}" must be absolute')
    for mount in mounts:
        if not mount.target.startswith("/") or mount.target.strip("/") == "":
            raise SolveError(f'invalid mount target "{mount.target}"')


def _bind_source_is_dir(mount: BindMount) -> bool:
    try:
        return stat.S_ISDIR(os.stat(mount.source).st_mode)
    except OSError as exc:
        raise SolveError(f"bind mount source {mount.source} for {mount.target}: "
                         f"{exc.strerror}") from None


def _base_env(env: Sequence[str]) -> tuple[tuple[str, str], ...]:
    merged: dict[str, str] = {}
    for item in env:
        key, _, value = item.partition("=")
        merged[key] = value
    merged.setdefault("PATH", DEFAULT_PATH)
    return tuple(merged.items())


def _etc_files(process: ProcessSpec, lease: net.NetworkLease | None) -> tuple[SecretFile, ...]:
    """/etc/hosts and /etc/resolv.conf, kept in memory like secrets: a bind of a host file would
    show its host path in the container's /proc/self/mountinfo."""
    gateway = lease.gateway if lease is not None else "127.0.0.1"
    extra = tuple((name, gateway if ip == "host-gateway" else ip) for name, ip in process.extra_hosts)
    return (SecretFile("/etc/hosts", net.hosts_file(process.hostname, extra).encode(), 0o644),
            SecretFile("/etc/resolv.conf", net.resolv_conf(process.network).encode(), 0o644))


def _pipe() -> tuple[int, int]:
    """A close-on-exec pipe whose ends are above 0-2, so dup2 onto the child's stdio is safe."""
    r, w = (fd if fd > 2 else _move_above_stdio(fd) for fd in os.pipe())
    return r, w


def _move_above_stdio(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return moved


class _RunningSupervisors:
    """Supervisor pids of the runs in progress, so that another thread can cancel them all.

    Killing a supervisor kills its container: init has PR_SET_PDEATHSIG=SIGKILL, and the PID
    namespace dies with its init. A pid leaves the set (under the lock) before it is reaped, so
    kill_all never signals a recycled pid.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._pids: set[int] = set()
        self.cancelled = False

    def add(self, pid: int) -> None:
        with self._lock:
            self._pids.add(pid)
            if self.cancelled:
                os.kill(pid, signal.SIGKILL)

    def discard(self, pid: int) -> None:
        with self._lock:
            self._pids.discard(pid)

    def kill_all(self) -> None:
        with self._lock:
            self.cancelled = True
            for pid in self._pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _run_container(plan: _Plan, output: OutputCallback | None, stubs: list[MountStub],
                   running: _RunningSupervisors) -> int:
    """Fork the supervisor, stream output, reap. STUBS receives the mount points init created."""
    opened: list[int] = []
    status = bytearray()
    try:
        out_r, out_w = _pipe()
        opened += (out_r, out_w)
        err_r, err_w = _pipe()
        opened += (err_r, err_w)
        status_r, status_w = _pipe()
        opened += (status_r, status_w)
        life_r, life_w = _pipe()
        opened += (life_r, life_w)

        pid = os.fork()
        if pid == 0:
            _supervisor(plan, out_w, err_w, status_w, life_r)
        running.add(pid)
        for fd in (out_w, err_w, status_w, life_r):
            os.close(fd)
            opened.remove(fd)
        try:
            _pump(out_r, err_r, status_r, output, status,
                  lambda: shutil.rmtree(plan.runtime_dir, ignore_errors=True))
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
            running.discard(pid)
            _, wait_status = os.waitpid(pid, 0)
        except BaseException:
            os.close(life_w)  # the supervisor kills the container and exits
            opened.remove(life_w)
            running.discard(pid)
            _reap_uninterruptibly(pid)
            _read_status(bytes(status), stubs)
            raise
    finally:
        for fd in opened:
            os.close(fd)

    error = _read_status(bytes(status), stubs)
    if error is not None:
        kind, message = error
        if kind == "user":
            raise UserNotFound(message)
        raise SolveError(f"container setup failed: {message}")
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def _pump(out_r: int, err_r: int, status_r: int, output: OutputCallback | None,
          status: bytearray, on_scratch_released: Callable[[], None] | None) -> None:
    """Stream the container's output to OUTPUT until every writer is gone; collect STATUS records.

    ON_SCRATCH_RELEASED is called once init no longer needs the host-side scratch directory.
    """
    # Status first: poll reports ready fds in registration order, so init's records (written before
    # execve) are always handled before the output the process writes after it.
    streams = {status_r: 0, out_r: 1, err_r: 2}
    poller = select.poll()
    for fd in streams:
        poller.register(fd, select.POLLIN)
    while streams:
        for fd, _ in poller.poll():
            chunk = os.read(fd, _READ_CHUNK)
            if not chunk:
                poller.unregister(fd)
                del streams[fd]
            elif fd == status_r:
                status += chunk
                if on_scratch_released is not None and _SCRATCH_RELEASED in status.split(b"\0")[:-1]:
                    on_scratch_released()
                    on_scratch_released = None
            elif output is not None:
                output(streams[fd], chunk)


def _read_status(status: bytes, stubs: list[MountStub]) -> tuple[str, str] | None:
    error = None
    for record in status.split(b"\0")[:-1]:  # complete records only
        if record.startswith(b"S"):
            stubs.append(MountStub.decode(record[1:]))
        elif record.startswith(b"E"):
            kind, _, message = record[1:].decode(errors="replace").partition("\t")
            error = (kind, message)
    return error


def _reap_uninterruptibly(pid: int) -> None:
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except KeyboardInterrupt:
            continue  # a second Ctrl-C: the container is already being killed, finish reaping
        except ChildProcessError:
            return


def _join_uninterruptibly(thread: threading.Thread) -> None:
    interrupted: BaseException | None = None
    while thread.is_alive():
        try:
            thread.join()
        except KeyboardInterrupt as exc:
            interrupted = exc  # fn cannot be stopped from outside; wait, then re-raise
    if interrupted is not None:
        raise interrupted


def _unmount(path: str) -> None:
    try:
        linux.umount2(path)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        linux.umount2(path, linux.MNT_DETACH)  # fn left a file open in it; the thread's exit ends it


# ---- child side: only os, select, socket and ctypes from here on -----------------------------

def _send(fd: int, record: bytes) -> None:
    try:
        os.write(fd, record + b"\0")
    except OSError:
        pass


def _report_error(fd: int, exc: BaseException) -> None:
    kind = "user" if isinstance(exc, UserNotFound) else "setup"
    _send(fd, f"E{kind}\t{exc}".encode(errors="replace"))


def _close_other_fds(keep: Sequence[int]) -> None:
    low = 3
    for fd in sorted(keep):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, _MAX_FD)


def _supervisor(plan: _Plan, out_w: int, err_w: int, status_w: int, life_r: int) -> NoReturn:
    code = _EXIT_SETUP_FAILED
    init_pid = None
    try:
        gc.disable()
        linux.set_signal_mask(block_all=True)
        os.setsid()  # out of the terminal's process group: Ctrl-C is for build-image to handle
        linux.set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != plan.caller_pid:
            os._exit(code)  # the caller died before the death signal was armed
        keep = (out_w, err_w, status_w, life_r)
        _close_other_fds(keep if plan.netns_fd is None else (*keep, plan.netns_fd))
        if plan.netns_fd is not None:
            linux.setns(plan.netns_fd, linux.CLONE_NEWNET)  # "default": the namespace made for this RUN
            os.close(plan.netns_fd)
        # Opened now: init's pivot_root moves this process's root too (they share the namespace).
        procs_fds = cgroups.open_procs(plan.cgroup_procs)
        flags = _NAMESPACES | (linux.CLONE_NEWNET if plan.process.network == "none" else 0)
        linux.unshare(flags)
        joined_r, joined_w = os.pipe()
        init_pid = os.fork()
        if init_pid == 0:
            for fd in (life_r, joined_w, *procs_fds):
                os.close(fd)
            _container_init(plan, out_w, err_w, status_w, joined_r)
        os.close(joined_r)
        os.close(out_w)
        os.close(err_w)
        # Moving a process between v1 cgroups waits for an RCU grace period (5-15 ms here): done
        # here, while init mounts its root, rather than before init is forked. Init unshares its
        # cgroup namespace, and goes on to the step's command, only once it is in.
        try:
            cgroups.move_into(procs_fds, init_pid)
            os.write(joined_w, b"j")
        except (ProcessLookupError, BrokenPipeError):
            pass  # init failed and exited already; its own report says why
        finally:
            os.close(joined_w)
            for fd in procs_fds:
                os.close(fd)
        os.close(status_w)
        code = _supervise(init_pid, life_r)
    except BaseException as exc:
        if init_pid is not None and init_pid > 0:
            _kill_and_reap(init_pid)
        _report_error(status_w, exc)
    os._exit(code)


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except OSError:
        pass


def _supervise(init_pid: int, life_r: int) -> int:
    """Wait for init; kill it if the caller closes the lifeline. Return init's exit code."""
    pidfd = os.pidfd_open(init_pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(life_r, select.POLLIN)
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if pidfd in ready:
            break
        if life_r in ready:
            os.kill(init_pid, signal.SIGKILL)  # still our unreaped child: the pid cannot be reused
            break
    _, wait_status = os.waitpid(init_pid, 0)
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def _container_init(plan: _Plan, out_w: int, err_w: int, status_w: int, joined_r: int) -> NoReturn:
    stubs: list[MountStub] = []
    try:
        linux.set_parent_death_signal(signal.SIGKILL)
        os.umask(0o022)
        _enter_root(plan, stubs, status_w)
        if os.read(joined_r, 1) != b"j":
            raise _NotJoined()
        os.close(joined_r)
        linux.unshare(linux.CLONE_NEWCGROUP)  # in the step's cgroup now: it becomes the namespace's root
        process = plan.process
        linux.sethostname(process.hostname)
        if process.network == "none":
            linux.bring_up_loopback()
        user = resolve_user(process.user, _read_text("/etc/passwd"), _read_text("/etc/group"))
        env = dict(plan.env)
        env.setdefault("HOME", user.home)
        if not os.path.isdir(process.cwd):
            os.makedirs(process.cwd, 0o755, exist_ok=True)
        _set_ulimits(process.ulimits)
        linux.limit_capabilities(DEFAULT_CAPABILITIES, plan.cap_last)
        linux.set_no_new_privs()
        os.setgroups(list(user.groups))
        os.setgid(user.gid)
        os.setuid(user.uid)
        os.chdir(process.cwd)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        for stub in stubs:
            _send(status_w, b"S" + stub.encode())
    except BaseException as exc:
        for stub in stubs:
            _send(status_w, b"S" + stub.encode())  # the caller removes them, whatever failed
        if not isinstance(exc, _NotJoined):
            _report_error(status_w, exc)
        os._exit(_EXIT_SETUP_FAILED)
    _exec(process.args, env, plan.seccomp, status_w)


class _NotJoined(Exception):
    """The supervisor could not move init into the step's cgroup; it reports why itself."""


def _set_ulimits(ulimits) -> None:
    """--ulimit, before privileges drop. A hard limit above the current one fails with EPERM (root
    here has no CAP_SYS_RESOURCE): the step fails with that message rather than running unlimited.
    `resource` is imported with the module: after pivot_root the host's Python library is gone."""
    for name, soft, hard in ulimits:
        kind = getattr(resource, f"RLIMIT_{name.upper()}")
        limits = tuple(resource.RLIM_INFINITY if v == -1 else v for v in (soft, hard))
        try:
            resource.setrlimit(kind, limits)
        except (OSError, ValueError) as e:
            raise RuntimeError(f"cannot set ulimit {name}={soft}:{hard}: {e}") from None


def _enter_root(plan: _Plan, stubs: list[MountStub], status_w: int) -> None:
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    # The empty lower dir of FROM scratch and single-layer mounts: a tmpfs of this namespace, since
    # the parent deletes the scratch dir early, and a merged directory over a deleted one reads empty.
    linux.mount("tmpfs", plan.empty_dir, "tmpfs", linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV,
                "size=4k,mode=755")
    plan.rootfs.attach(plan.merged_dir, plan.empty_dir)
    # Host paths, resolved while the host is still visible; attached after pivot_root.
    attachments = _detached_mounts(plan)

    os.chdir(plan.merged_dir)
    linux.pivot_root(".", ".")
    linux.umount2(".", linux.MNT_DETACH)  # the old root, stacked on "/" by pivot_root(".", ".")
    os.chdir("/")

    mount_proc(stubs)
    mount_dev(stubs, plan.process.shm_size)
    restrict_proc()
    mount_sys(stubs)
    etc, attachments = attachments[:len(plan.etc_files)], attachments[len(plan.etc_files):]
    # /etc files first, then by target, as BuildKit does, so that a mount can sit inside another one.
    for target, fd, is_dir, tmpfs_size in etc + sorted(attachments, key=lambda a: a[0]):
        mountpoint = make_mountpoint(target, is_dir, stubs)
        if fd is None:
            mount_tmpfs(mountpoint, tmpfs_size)
        else:
            move_mount(fd, mountpoint)
            os.close(fd)
    # Everything taken from the scratch dir is attached now (a detached clone of a file that is
    # unlinked can no longer be attached): the parent may delete it.
    _send(status_w, _SCRATCH_RELEASED)


def _detached_mounts(plan: _Plan) -> list[tuple[str, int | None, bool, int]]:
    """(target, detached mount fd or None for a tmpfs, is a directory, tmpfs size) per mount,
    made while host paths are still visible (before pivot_root)."""
    attachments: list[tuple[str, int | None, bool, int]] = []
    in_memory = [*plan.etc_files, *(m for m, _ in plan.mounts if isinstance(m, SecretFile))]
    if in_memory:
        fds = secret_file_fds(in_memory, os.path.join(plan.runtime_dir, "files"))
        attachments += [(s.target, fd, False, 0) for s, fd in zip(in_memory, fds)]
    for i, (mount, is_dir) in enumerate(plan.mounts):
        if isinstance(mount, BindMount):
            attachments.append((mount.target, clone_tree(mount.source, readonly=mount.readonly), is_dir, 0))
        elif isinstance(mount, LayeredMount):
            view = os.path.join(plan.runtime_dir, f"view-{i}")
            fd, is_dir = layered_mount_fd(mount, view, plan.empty_dir)
            attachments.append((mount.target, fd, is_dir, 0))
        elif isinstance(mount, TmpfsMount):
            attachments.append((mount.target, None, True, mount.size or DEFAULT_TMPFS_SIZE))
    return attachments


def _read_text(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, _READ_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")
    finally:
        os.close(fd)


def _exec(args: tuple[str, ...], env: dict[str, str], program: linux.SeccompProgram | None,
          status_w: int) -> NoReturn:
    name = args[0]
    if "/" in name:
        candidates = [name]
    else:
        candidates = [os.path.join(d or ".", name) for d in env["PATH"].split(":")]
    linux.reset_signal_dispositions()
    if program is not None:
        try:
            program.install()  # last: from here on only the profile's calls work (execve among them)
        except OSError as exc:
            _report_error(status_w, exc)
            os._exit(_EXIT_SETUP_FAILED)
    linux.set_signal_mask(block_all=False)
    error: OSError | None = None
    for path in candidates:
        try:
            os.execve(path, args, env)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                error = error or exc  # like execvp: remember "permission denied", keep looking
    if error is None:
        reason = ("executable file not found in $PATH" if "/" not in name
                  else "no such file or directory")
        code = _EXIT_NOT_FOUND
    else:
        reason, code = os.strerror(error.errno).lower(), _EXIT_NOT_EXECUTABLE
    _send_raw(2, f'exec: "{name}": {reason}\n'.encode(errors="replace"))
    os._exit(code)


def _send_raw(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:
        pass
