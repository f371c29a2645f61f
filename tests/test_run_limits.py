"""Every RUN in its own cgroup: memory, pids and CPU limits, bounded tmpfs, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from builder.executor import (NamespaceExecutor, OutOfMemory, ProcessSpec, ResourceLimits, RootFS, Sandbox,
                              TmpfsMount)
from builder.executor import cgroups
from tests.support.escape_probe import build_probe
from tests.support.images import build_image, write_context
from tests.support.rootfs import make_busybox_rootfs

pytestmark = [pytest.mark.root, pytest.mark.overlay]

LAYOUT = cgroups.detect()
needs_cgroups = pytest.mark.skipif(LAYOUT is None, reason="no usable cgroup hierarchy")


@pytest.fixture(scope="module")
def layer(tmp_path_factory):
    path = make_busybox_rootfs(str(tmp_path_factory.mktemp("limits") / "layer"))
    build_probe(os.path.join(path, "probe"))
    return path


def _executor(tmp_path, layer, **limits):
    for d in ("upper", "work", "run"):
        (tmp_path / d).mkdir(exist_ok=True)
    rootfs = RootFS((layer,), str(tmp_path / "upper"), str(tmp_path / "work"))
    executor = NamespaceExecutor(runtime_root=str(tmp_path / "run"), sandbox=Sandbox(limits=ResourceLimits(**limits)))
    return executor, rootfs


def _sh(executor, rootfs, script, mounts=()):
    chunks = []
    code = executor.run(rootfs, ProcessSpec(("/bin/sh", "-c", script)), mounts, output=lambda fd, d: chunks.append(d))
    return code, b"".join(chunks).decode(errors="replace")


def _step_cgroups(pid: int = os.getpid()) -> list[str]:
    found = []
    for _, parent in LAYOUT.parents:
        found += [os.path.join(parent, n) for n in os.listdir(parent) if n.startswith(f"{cgroups.PREFIX}{pid}-")]
    return found


@needs_cgroups
def test_memory_exhaustion_fails_the_step_not_the_builder(tmp_path, layer):
    executor, rootfs = _executor(tmp_path, layer, memory=32 << 20)
    with pytest.raises(OutOfMemory) as caught:
        _sh(executor, rootfs, "/probe alloc 200")
    assert str(caught.value) == "RUN was killed: out of memory (limit 32 MiB)"
    # Under the limit the same executor runs fine, and this process was never touched.
    assert _sh(executor, rootfs, "/probe alloc 8") == (0, "ok\n")
    assert _step_cgroups() == []


@needs_cgroups
def test_pids_limit_stops_a_fork_bomb(tmp_path, layer):
    executor, rootfs = _executor(tmp_path, layer, pids=16)
    code, output = _sh(executor, rootfs, "for i in $(seq 40); do sleep 2 & done; wait")
    assert "can't fork" in output  # the shell's fork fails with EAGAIN at the 16th process
    assert _sh(executor, rootfs, "for i in $(seq 5); do true & done; wait; echo fine") == (0, "fine\n")


@needs_cgroups
def test_the_limits_are_written_to_the_steps_cgroup(tmp_path, layer):
    executor, rootfs = _executor(tmp_path, layer, memory=64 << 20, pids=123, cpu_shares=256)
    seen = {}

    def look():
        for path in _step_cgroups():
            for name in ("memory.limit_in_bytes", "pids.max", "cpu.shares", "memory.max", "cpu.weight"):
                if os.path.exists(os.path.join(path, name)):
                    seen[name] = open(os.path.join(path, name)).read().strip()

    code, _ = _run_looking_meanwhile(executor, rootfs, "echo up; sleep 1", look)
    assert code == 0
    if LAYOUT.version == 1:
        assert seen == {"memory.limit_in_bytes": str(64 << 20), "pids.max": "123", "cpu.shares": "256"}
    else:
        assert seen == {"memory.max": str(64 << 20), "pids.max": "123", "cpu.weight": str(cgroups.shares_to_weight(256))}
    assert _step_cgroups() == []


@needs_cgroups
def test_only_the_steps_processes_are_in_its_cgroup_which_is_its_namespaces_root(tmp_path, layer):
    """Init is moved in by the supervisor while it mounts its root, then unshares its cgroup
    namespace: the step sees its cgroup as "/", and the supervisor (in our PID namespace, outside
    the step's) is not in it, so it counts against none of the step's limits."""
    executor, rootfs = _executor(tmp_path, layer)
    seen: dict[str, list[bool]] = {}

    def look():
        for path in _step_cgroups():
            pids = open(os.path.join(path, "cgroup.procs")).read().split()
            seen[path] = [_in_a_child_pid_namespace(int(pid)) for pid in pids]

    code, printed = _run_looking_meanwhile(executor, rootfs, "cat /proc/self/cgroup; exec sleep 1", look)
    assert code == 0
    lines = printed.decode().split()
    assert lines and all(line.endswith(":/") for line in lines), lines
    assert seen and all(seen.values()) and all(all(inside) for inside in seen.values()), seen
    assert _step_cgroups() == []


def _run_looking_meanwhile(executor, rootfs, script: str, look) -> tuple[int, bytes]:
    """Run SCRIPT; LOOK is called on another thread once it has printed something, while it runs.
    Its exit code and what it printed."""
    started = threading.Event()
    chunks = []

    def watch():
        started.wait(10)
        look()

    watcher = threading.Thread(target=watch)
    watcher.start()

    def output(fd, data):
        chunks.append(data)
        started.set()

    code = executor.run(rootfs, ProcessSpec(("/bin/sh", "-c", script)), output=output)
    watcher.join()
    return code, b"".join(chunks)


def _in_a_child_pid_namespace(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            nspid = next(line for line in f if line.startswith("NSpid:")).split()[1:]
    except FileNotFoundError:
        return True  # exited since: a short-lived process of the step
    return len(nspid) > 1


@needs_cgroups
def test_default_limits_are_pids_4096_and_no_memory_limit(tmp_path, layer):
    executor = NamespaceExecutor(runtime_root=str(tmp_path))
    assert executor.sandbox.limits == ResourceLimits(memory=None, pids=4096, cpu_shares=None)


def test_tmpfs_is_bounded_by_default_and_size_is_honoured(tmp_path, layer):
    executor, rootfs = _executor(tmp_path, layer)
    code, output = _sh(executor, rootfs, "df -k /t /s | tail -n 2",
                       [TmpfsMount("/t"), TmpfsMount("/s", size=64 << 20)])
    sizes = {line.split()[-1]: int(line.split()[1]) for line in output.strip().splitlines()}
    assert code == 0
    assert sizes == {"/t": 512 * 1024, "/s": 64 * 1024}


@needs_cgroups
def test_a_sigkilled_builders_cgroups_are_removed_by_the_next_one(tmp_path, layer):
    # Under a cgroup parent of this test's own: any build-image sweeps a dead one's step cgroups
    # under its parent, and other tests' executors run beside this one.
    parent = f"sweep-test-{os.getpid()}-{time.monotonic_ns()}"
    layout = cgroups.detect(parent=parent)
    for d in ("u", "w", "rt"):
        (tmp_path / d).mkdir()
    script = textwrap.dedent(f"""
        import sys
        from builder.executor import NamespaceExecutor, ProcessSpec, RootFS
        rootfs = RootFS(({layer!r},), {str(tmp_path / "u")!r}, {str(tmp_path / "w")!r})
        def out(fd, data):
            sys.stdout.write("started\\n"); sys.stdout.flush()
        NamespaceExecutor({str(tmp_path / "rt")!r}, cgroup_parent={parent!r}).run(
            rootfs, ProcessSpec(("/bin/sh", "-c", "echo go; sleep 1000")), output=out)
    """)
    builder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               cwd=os.path.dirname(os.path.dirname(__file__)))

    def step_cgroups() -> list[str]:
        found = []
        for _, directory in layout.parents:
            if os.path.isdir(directory):
                found += [os.path.join(directory, n) for n in os.listdir(directory)
                          if n.startswith(f"{cgroups.PREFIX}{builder.pid}-")]
        return found

    try:
        assert builder.stdout.readline() == b"started\n"
        left = step_cgroups()
        assert len(left) == len(LAYOUT.parents)
        builder.send_signal(signal.SIGKILL)
        builder.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(open(os.path.join(p, "cgroup.procs")).read() for p in left):
            time.sleep(0.05)  # the container dies with its builder (PR_SET_PDEATHSIG)
        assert step_cgroups() == left  # nobody removed them
        NamespaceExecutor(runtime_root=str(tmp_path / "rt"), cgroup_parent=parent).close()  # the next one sweeps
        assert step_cgroups() == []
    finally:
        builder.kill()
        builder.wait()
        builder.stdout.close()
        for _, directory in layout.parents:
            if os.path.isdir(directory):
                os.rmdir(directory)


@pytest.mark.registry
@needs_cgroups
def test_build_with_memory_limit_reports_the_oom_in_one_line(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN --mount=type=tmpfs,target=/t,size=200m dd if=/dev/zero of=/t/fill bs=1M count=100
"""})
    result = build_image("--root", store_root, "--progress", "plain", "-m", "32m", context, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "ERROR: RUN was killed: out of memory (limit 32 MiB)"
    assert _step_cgroups() == []


@pytest.mark.registry
@needs_cgroups
def test_build_pids_limit_flag(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN for i in $(seq 30); do sleep 3 & done; wait
"""})
    limited = build_image("--root", store_root, "--progress", "plain", "--pids-limit", "10", context, check=False)
    assert limited.returncode == 1 and "can't fork" in limited.stderr


@needs_cgroups
@pytest.mark.parametrize("relative", [False, True])
def test_cgroup_parent_holds_the_steps_cgroups_and_is_removed_if_made(tmp_path, layer, relative):
    top = f"build-image-test-parent-{os.getpid()}-{int(relative)}"
    parent = f"{top}/inner" if relative else f"/{top}/inner"
    layout = cgroups.detect(parent=parent)
    for d in ("upper", "work", "run"):
        (tmp_path / d).mkdir()
    rootfs = RootFS((layer,), str(tmp_path / "upper"), str(tmp_path / "work"))
    executor = NamespaceExecutor(runtime_root=str(tmp_path / "run"), cgroup_parent=parent)
    seen: list[list[str]] = []
    running = threading.Thread(target=lambda: seen.append(list(_sh(executor, rootfs, "sleep 1"))))
    running.start()
    deadline = time.monotonic() + 10
    inside = []
    while running.is_alive() and not inside and time.monotonic() < deadline:
        inside = [os.path.join(dir, n) for _, dir in layout.parents for n in os.listdir(dir)
                  if n.startswith(cgroups.PREFIX)]
        time.sleep(0.02)
    running.join()
    executor.close()
    assert seen == [[0, ""]]
    assert len(inside) == len(layout.parents)       # one step cgroup in each hierarchy, under the parent
    for _, dir in layout.parents:
        assert dir.endswith(f"/{top}/inner") and not os.path.exists(os.path.dirname(dir))   # made, then removed
    own = dict(LAYOUT.parents)
    for controller, dir in layout.parents:
        above = os.path.dirname(os.path.dirname(dir))
        # Relative: under build-image's own cgroup; absolute: from the hierarchy's root (its mount).
        assert above == os.path.normpath(own[controller]) if relative else os.path.ismount(above)


@pytest.mark.parametrize("flags, message", [
    (("--cgroup-parent", "a/../b"), "ERROR: invalid --cgroup-parent 'a/../b': a cgroup path without '..'"),
    (("-m", "lots"), 'ERROR: invalid --memory "lots" (use bytes or a unit: 512m, 2g)'),
    (("--memory", "1m"), 'ERROR: invalid --memory "1m": the minimum is 6 MiB'),
    (("--cpu-shares", "1"), "ERROR: invalid --cpu-shares 1: must be between 2 and 262144"),
])
def test_bad_limit_flags_are_one_line_errors(tmp_path, store_root, flags, message):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\n"})
    result = build_image("--root", store_root, *flags, context, check=False)
    assert (result.returncode, result.stderr.strip()) == (1, message)


@needs_cgroups
def test_a_failed_move_into_the_cgroup_fails_the_step_with_the_reason_and_leaves_nothing(tmp_path, layer,
                                                                                       monkeypatch):
    """The supervisor (a fork of this process) finds the patched move_into; init, waiting to be
    moved in, stops without running the command; the error is the supervisor's, and nothing is left."""
    executor, rootfs = _executor(tmp_path, layer)

    def refuse(fds, pid):
        raise OSError(16, "Device or resource busy")

    monkeypatch.setattr(cgroups, "move_into", refuse)
    ran = []
    with pytest.raises(Exception, match="Device or resource busy"):
        executor.run(rootfs, ProcessSpec(("/bin/sh", "-c", "echo ran")), output=lambda fd, data: ran.append(data))
    assert ran == []
    assert _tree(tmp_path / "upper") == []
    assert _step_cgroups() == []


def _tree(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root) for n in dirs + files)
