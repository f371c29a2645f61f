"""Discarded scratch dirs are deleted off the build's critical path (builder/snapshot/snapshots.py):
renamed to snapshots.tmp/trash-* at once, then removed by one detached deleter per build that
holds their flocks and the root's shared lock. So a `--no-cache` rebuild's duplicate upper dir and
a failed step's scratch end up deleted, `prune` waits for a running deleter, a build runs beside
one, a killed deleter's trash goes with the next build's crash cleanup, and fsck stays clean."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time

import pytest

from builder.snapshot.snapshotter import make_snapshotter
from builder.store import Store
from tests.support.images import build_image, write_context
from tests.support.storelock import wait_until_unused

pytestmark = [pytest.mark.root]

CHAIN = "sha256:" + "ab" * 32


@pytest.fixture(params=["overlay", "naive"])
def kind(request):
    if request.param == "overlay":
        request.applymarker(pytest.mark.overlay)
    return request.param


def tmp_entries(root: str, kind: str = "overlay") -> list[str]:
    name = "snapshots" if kind == "overlay" else f"snapshots.{kind}"
    return sorted(os.listdir(os.path.join(root, name + ".tmp")))


def is_locked(path: str) -> bool:
    """Whether someone holds a flock on PATH (a directory or a lock file)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def children_mentioning(text: str) -> list[int]:
    """This process's live children whose command line mentions TEXT (a deleter names its dirs)."""
    found = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids = [int(p) for p in f.read().split()]
        except FileNotFoundError:
            continue
        found += [pid for pid in pids if text.encode() in _command_line(pid)]
    return found


def _command_line(pid: int) -> bytes:
    """PID's command line; b"" once it has ended. Read again while it is empty: a process that
    has just been started may not show it yet."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                line = f.read()
            with open(f"/proc/{pid}/stat") as f:
                ended = f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except FileNotFoundError:
            return b""
        if line or ended or time.monotonic() > deadline:
            return line
        time.sleep(0.001)


def wait_ended(pid: int, timeout: float = 30) -> None:
    """Until PID has ended (a zombie nobody reaped yet counts as ended)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except FileNotFoundError:
            return
        assert time.monotonic() < deadline, f"process {pid} did not end"
        time.sleep(0.02)


def blocked_on_lock(pid: int, path: str) -> bool:
    """Whether PID waits for a flock on PATH (a '->' line of /proc/locks)."""
    inode = os.stat(path).st_ino
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if "->" in fields and fields[fields.index("->") + 1] == "FLOCK":
                rest = fields[fields.index("->") + 1:]
                if int(rest[3]) == pid and int(rest[4].rsplit(":", 1)[1]) == inode:
                    return True
    return False


def make_duplicate(store: Store, kind: str) -> str:
    """Inside `with store`: commit CHAIN twice, as a --no-cache rebuild does; the second upper dir
    is the trash this returns (its path under snapshots.tmp)."""
    snapshotter = store.snapshotter
    for content in ("first", "second"):
        with snapshotter.prepare(()) as active:
            for i in range(300):
                with open(os.path.join(active.mount.upperdir, f"f{i}"), "w") as f:
                    f.write(content)
            active.diff_dir()
            snapshotter.commit(active, CHAIN)
            scratch = os.path.dirname(active.mount.upperdir)
        assert not os.path.exists(scratch)
    trash = os.path.join(os.path.dirname(scratch), "trash-" + os.path.basename(scratch).partition("-")[2])
    assert os.path.isdir(os.path.join(trash, "upper"))  # the second upper dir, not committed
    return trash


def stopped_deleter(store: Store, kind: str) -> tuple[int, str]:
    """A store whose deleter is SIGSTOP-ed with its trash still there: (its pid, the trash)."""
    with store:
        trash = make_duplicate(store, kind)
    [pid] = children_mentioning(trash)
    os.kill(pid, signal.SIGSTOP)  # it spends far longer starting its interpreter than this takes
    assert os.path.isdir(trash), "the deleter was done before it could be stopped"
    return pid, trash


# ---- the store level ---------------------------------------------------------------------------

def test_a_duplicate_is_trash_at_once_and_gone_after_the_store_is_released(tmp_path, kind):
    store = Store(str(tmp_path / "root"), snapshotter=kind)
    with store:
        trash = make_duplicate(store, kind)
        with open(os.path.join(store.snapshotter.store.path(CHAIN), "f0")) as f:
            assert f.read() == "first"       # the first commit stays
        assert is_locked(trash)              # owned: no crash cleanup may take it
        store.snapshots.clean_stale()
        assert os.path.isdir(trash)
    wait_until_unused(store.root)
    assert tmp_entries(store.root, kind) == []
    assert store.snapshotter.store.keys() == [os.path.basename(store.snapshotter.store.path(CHAIN))]


def test_without_the_roots_lock_discarded_scratch_is_deleted_at_once(tmp_path):
    snapshotter = make_snapshotter("overlay", str(tmp_path / "root"))
    with snapshotter.prepare(()) as active:
        with open(os.path.join(active.mount.upperdir, "f"), "w") as f:
            f.write("thrown away")
    assert tmp_entries(str(tmp_path / "root")) == []


def test_prune_waits_for_a_running_deleter_and_a_build_runs_beside_it(tmp_path, kind):
    store = Store(str(tmp_path / "root"), snapshotter=kind)
    pid, trash = stopped_deleter(store, kind)
    env = {**os.environ, "BUILD_IMAGE_SNAPSHOTTER": kind}
    try:
        assert is_locked(os.path.join(store.root, "lock")) and is_locked(trash)
        # Shared with the deleter: a build runs, and its crash cleanup leaves the trash alone.
        context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY a.txt /\n", "a.txt": "a\n"})
        subprocess.run([sys.executable, "-m", "builder.cli", "--root", store.root, "-q", context],
                       check=True, capture_output=True, env=env, timeout=120)
        assert os.path.isdir(trash)
        prune = subprocess.Popen([sys.executable, "-m", "builder.cli", "prune", "-a", "-f", "--root", store.root],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + 60
        while not blocked_on_lock(prune.pid, os.path.join(store.root, "lock")):
            assert prune.poll() is None, prune.communicate()
            assert time.monotonic() < deadline, "prune never asked for the root"
            time.sleep(0.02)
        assert os.path.isdir(trash)          # prune is waiting for the deleter
    finally:
        os.kill(pid, signal.SIGCONT)
    out, err = prune.communicate(timeout=120)
    assert prune.returncode == 0, err
    wait_ended(pid)
    assert tmp_entries(store.root, kind) == []
    fsck = subprocess.run([sys.executable, "-m", "builder.cli", "fsck", "--root", store.root],
                          capture_output=True, text=True, env=env, timeout=120)
    assert fsck.returncode == 0 and "no problems found" in fsck.stdout, fsck.stdout + fsck.stderr


def test_a_killed_deleters_trash_goes_with_the_next_builds_cleanup(tmp_path, kind):
    store = Store(str(tmp_path / "root"), snapshotter=kind)
    pid, trash = stopped_deleter(store, kind)
    os.kill(pid, signal.SIGKILL)
    wait_ended(pid)
    assert os.path.isdir(trash) and not is_locked(trash)   # now a dead process's work dir
    env = {**os.environ, "BUILD_IMAGE_SNAPSHOTTER": kind}
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY a.txt /\n", "a.txt": "a\n"})
    subprocess.run([sys.executable, "-m", "builder.cli", "--root", store.root, "-q", context],
                   check=True, capture_output=True, env=env, timeout=120)
    wait_until_unused(store.root)
    assert tmp_entries(store.root, kind) == []
    fsck = subprocess.run([sys.executable, "-m", "builder.cli", "fsck", "--root", store.root],
                          capture_output=True, text=True, env=env, timeout=120)
    assert fsck.returncode == 0 and "no problems found" in fsck.stdout, fsck.stdout + fsck.stderr


def test_fsck_ignores_trash_waiting_for_its_deleter(tmp_path):
    store = Store(str(tmp_path / "root"))
    pid, trash = stopped_deleter(store, "overlay")
    try:
        fsck = subprocess.run([sys.executable, "-m", "builder.cli", "fsck", "--root", store.root],
                              capture_output=True, text=True, timeout=120)
        assert fsck.returncode == 0 and "no problems found" in fsck.stdout, fsck.stdout + fsck.stderr
        assert os.path.isdir(trash)
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_ended(pid)
    assert tmp_entries(store.root) == []


# ---- whole builds ------------------------------------------------------------------------------

@pytest.mark.overlay
def test_a_no_cache_rebuilds_duplicate_upper_dir_ends_up_deleted(tmp_path, store_root):
    files = {f"src/{i}.txt": f"file {i}\n" for i in range(300)}
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY . /app\n", **files})
    epoch = ("--build-arg", "SOURCE_DATE_EPOCH=1700000000")
    first = build_image("--root", store_root, *epoch, "-q", "-t", "dup:1", context).stdout.strip()
    wait_until_unused(store_root)
    snapshots = sorted(os.listdir(os.path.join(store_root, "snapshots")))
    assert tmp_entries(store_root) == [] and len(snapshots) == 1
    for _ in range(2):
        again = build_image("--root", store_root, *epoch, "--no-cache", "-q", "-t", "dup:1", context).stdout.strip()
        assert again == first   # the same layer, so its snapshot was committed already
    wait_until_unused(store_root)
    assert tmp_entries(store_root) == []
    assert sorted(os.listdir(os.path.join(store_root, "snapshots"))) == snapshots  # the first one kept
    fsck = build_image("fsck", "--root", store_root)
    assert "no problems found" in fsck.stdout


@pytest.mark.overlay
def test_a_build_servers_worker_leaves_its_duplicate_to_a_deleter_too(tmp_path, store_root):
    from tests.support.buildserver import BuildServer

    with BuildServer(store_root) as server:
        context = write_context(server.workdir("ctx"), {
            "Dockerfile": "FROM scratch\nCOPY . /app\n", **{f"src/{i}.txt": f"{i}\n" for i in range(100)}})
        for extra in ((), ("--no-cache",)):
            proc = server.client("build", *extra, "--build-arg", "SOURCE_DATE_EPOCH=1700000000", "-q", "-t", "dup:1",
                                 context)
            assert proc.returncode == 0, proc.stderr
        wait_until_unused(store_root)   # the forked worker has ended; its deleter holds the root till done
        assert tmp_entries(store_root) == []
        assert len(os.listdir(os.path.join(store_root, "snapshots"))) == 1
        assert server.client("images", "-q").returncode == 0


def test_a_scratch_closed_twice_is_trash_once(tmp_path):
    store = Store(str(tmp_path / "root"))
    with store:
        active = store.snapshotter.prepare(())
        with open(os.path.join(active.mount.upperdir, "f"), "w") as f:
            f.write("thrown away")
        active.close()
        active.close()
        [trash] = tmp_entries(store.root)
        assert trash.startswith("trash-") and is_locked(os.path.join(store.snapshots.directory + ".tmp", trash))
    wait_until_unused(store.root)
    assert tmp_entries(store.root) == []
