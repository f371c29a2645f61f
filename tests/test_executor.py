"""NamespaceExecutor: a RUN step's process in fresh namespaces over an overlay root."""

import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from builder.errors import SolveError, SourceNotFound
from builder.executor import (BindMount, NamespaceExecutor, ProcessSpec, RootFS, UserNotFound)
from builder.executor.network import HOST_IFNAME_PREFIX
from tests.support.rootfs import make_busybox_rootfs

pytestmark = [pytest.mark.root, pytest.mark.overlay]


# ---- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def busybox_layer(tmp_path_factory):
    return make_busybox_rootfs(str(tmp_path_factory.mktemp("busybox") / "layer"))


def _children() -> set[int]:
    kids = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                kids.update(int(p) for p in f.read().split())
        except FileNotFoundError:
            continue  # a thread that just ended
    return kids


@pytest.fixture(autouse=True)
def nothing_left_behind(tmp_path):
    """Every test: no new mounts in this process's namespace and no processes left over.

    Other software on the machine may mount things meanwhile, so only mounts that mention this
    test's directories or the executor's scratch dirs count.
    """
    mounts_before = set(open("/proc/self/mountinfo").read().splitlines())
    children_before = _children()
    yield
    new_mounts = set(open("/proc/self/mountinfo").read().splitlines()) - mounts_before
    assert [m for m in new_mounts if str(tmp_path) in m or "build-image-" in m] == []
    assert _children() <= children_before


class Container:
    """One step's directories and an executor whose scratch dirs live in the test's tmp_path."""

    def __init__(self, tmp_path, lowers):
        self.tmp = tmp_path
        self.runtime = tmp_path / "runtime"
        self.upper = tmp_path / "upper"
        for d in (self.runtime, self.upper, tmp_path / "work"):
            d.mkdir(exist_ok=True)
        self.rootfs = RootFS(tuple(str(p) for p in lowers), str(self.upper), str(tmp_path / "work"))
        self.executor = NamespaceExecutor(runtime_root=str(self.runtime))

    def run(self, *args, mounts=(), **process):
        chunks = []
        code = self.executor.run(self.rootfs, ProcessSpec(tuple(args), **process), mounts,
                                 output=lambda fd, data: chunks.append((fd, data)))
        out = b"".join(d for fd, d in chunks if fd == 1).decode()
        err = b"".join(d for fd, d in chunks if fd == 2).decode()
        assert os.listdir(self.runtime) == []  # per-run scratch dirs are gone
        return code, out, err

    def sh(self, script, **kw):
        return self.run("/bin/sh", "-c", script, **kw)

    def upper_entries(self):
        return sorted(os.path.relpath(os.path.join(d, n), self.upper)
                      for d, dirs, files in os.walk(self.upper) for n in dirs + files)


@pytest.fixture
def box(tmp_path, busybox_layer):
    return Container(tmp_path, [busybox_layer])


def make_layer(path, files):
    path.mkdir(parents=True)
    for name, content in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(content)
    return path


# ---- process, output, exit codes -------------------------------------------------------------

def test_output_goes_to_the_right_fd_and_exit_code_is_returned(box):
    code, out, err = box.sh("echo to-out; echo to-err >&2; exit 3")
    assert (code, out, err) == (3, "to-out\n", "to-err\n")


def test_output_is_streamed_while_the_process_runs(box, tmp_path):
    # The process waits until the caller has seen its first line; buffering to the end would
    # leave it waiting until it gives up.
    signal_dir = tmp_path / "signal"
    signal_dir.mkdir()
    seen = []

    def output(fd, data):
        seen.append(data)
        if b"first" in data:
            (signal_dir / "go").write_text("")

    script = "echo first; for i in $(seq 300); do [ -e /sig/go ] && echo second && exit 0; sleep 0.1; done; echo gave-up"
    code = box.executor.run(box.rootfs, ProcessSpec(("/bin/sh", "-c", script)),
                            [BindMount(str(signal_dir), "/sig")], output)
    assert code == 0
    assert b"".join(seen) == b"first\nsecond\n"


def test_signal_death_gives_128_plus_signal(box):
    # The step is PID 1 of its namespace, which only a signal from outside can kill.
    token = f"sleep-token-{os.getpid()}-{time.monotonic_ns()}"

    def output(fd, data):
        for pid in _processes_with(token):  # init's command line holds the token too
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    script = f"sleep 1000 & echo up; wait; : {token}"
    code = box.executor.run(box.rootfs, ProcessSpec(("/bin/sh", "-c", script)), output=output)
    assert code == 128 + signal.SIGKILL


def test_missing_executable_exits_127_with_message(box):
    code, out, err = box.run("no-such-tool", "arg")
    assert code == 127 and out == ""
    assert err == 'exec: "no-such-tool": executable file not found in $PATH\n'
    code, _, err = box.run("/bin/nope")
    assert code == 127 and err == 'exec: "/bin/nope": no such file or directory\n'


def test_non_executable_file_exits_126(box):
    code, _, err = box.sh("printf 'x' > /tmp/data; chmod 644 /tmp/data; exec /tmp/data")
    assert code == 126
    code, _, err = box.run("/etc/passwd")
    assert code == 126 and "permission denied" in err


def test_command_is_looked_up_in_the_containers_path(box):
    code, out, _ = box.run("readlink", "/bin/sh", env=("PATH=/bin",))
    assert (code, out) == (0, "/bin/busybox\n")


# ---- environment, working directory, user ----------------------------------------------------

def test_env_default_path_and_home(box):
    code, out, _ = box.sh('echo "$FOO|$PATH|$HOME"', env=("FOO=bar baz",))
    assert out == "bar baz|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|/root\n"


def test_given_path_and_home_are_kept(box):
    code, out, _ = box.sh('echo "$PATH|$HOME"', env=("PATH=/bin:/sbin", "HOME=/custom"))
    assert out == "/bin:/sbin|/custom\n"


def test_missing_cwd_is_created_and_used(box):
    code, out, _ = box.run("pwd", cwd="/work/dir")
    assert (code, out) == (0, "/work/dir\n")
    assert stat.S_ISDIR(os.lstat(box.upper / "work" / "dir").st_mode)


def test_user_by_name_gets_groups_and_home(box):
    code, out, _ = box.sh('id; echo "$HOME"; pwd', user="app", cwd="/home/app")
    assert out == "uid=1000(app) gid=1000(app) groups=100(users)\n/home/app\n/home/app\n"


@pytest.mark.parametrize("user, expected", [
    # As BuildKit (measured in tests/conformance/cases/user-groups): only /etc/group memberships.
    ("1000:100", "uid=1000(app) gid=100(users)"),
    ("nobody:nogroup", "uid=65534(nobody) gid=65534(nogroup)"),
    ("4242", "uid=4242 gid=0(root)"),
    ("root", "uid=0(root) gid=0(root)"),
])
def test_user_forms(box, user, expected):
    code, out, _ = box.run("id", user=user)
    assert (code, out) == (0, expected + "\n")


def test_unknown_uid_has_home_slash(box):
    assert box.sh('echo "$HOME"', user="4242")[1] == "/\n"


def test_unknown_user_name_raises(box):
    with pytest.raises(UserNotFound, match="unable to find user ghost: no matching entries in passwd file"):
        box.run("true", user="ghost")
    assert box.upper_entries() in ([], ["etc"])  # only the copied-up /etc that held /etc/hosts


def test_non_root_user_cannot_write_root_owned_dirs(box):
    code, _, err = box.sh("touch /etc/forbidden", user="app")
    assert code != 0 and "Permission denied" in err


# ---- isolation -------------------------------------------------------------------------------

def test_hostname_and_etc_hosts(box):
    code, out, _ = box.sh("hostname; cat /etc/hosts", hostname="step7")
    assert out.splitlines()[0] == "step7"
    assert "127.0.0.1\tlocalhost step7" in out


def test_default_hostname_is_buildkitsandbox(box):
    assert box.run("hostname")[1] == "buildkitsandbox\n"


def test_process_is_pid_1_and_sees_only_its_own_processes(box):
    code, out, _ = box.sh("echo $$; sleep 0 & ps -o pid,comm")
    lines = out.splitlines()
    assert lines[0] == "1"
    pids = [int(line.split()[0]) for line in lines[2:]]
    assert 1 in pids and max(pids) < 10 and len(pids) <= 3


def test_network_none_has_only_loopback_and_it_is_up(box):
    code, out, _ = box.run("cat", "/proc/net/dev")
    assert [line.split(":")[0].strip() for line in out.splitlines()[2:]] == ["lo"]
    code, out, _ = box.run("ip", "link")
    assert "1: lo: <LOOPBACK,UP,LOWER_UP>" in out
    assert box.run("ping", "-c", "1", "-W", "2", "127.0.0.1")[0] == 0


def test_network_host_shares_the_hosts_interfaces(box):
    def names(lines):
        # Leave out the host ends of default-network RUNs: parallel builds add and remove them meanwhile.
        found = (line.split(":")[0].strip() for line in lines[2:])
        return sorted(n for n in found if not n.startswith(HOST_IFNAME_PREFIX))
    host = names(open("/proc/net/dev").readlines())
    code, out, _ = box.run("cat", "/proc/net/dev", network="host")
    assert names(out.splitlines()) == host


def test_host_file_system_is_not_visible(box, tmp_path):
    marker = tmp_path / "host-marker"
    marker.write_text("secret")
    code, out, _ = box.sh(f"test -e {marker} && echo VISIBLE; cat /proc/1/root/{marker} 2>&1; ls -a /")
    assert "VISIBLE" not in out and "secret" not in out
    root_listing = out.split()[out.split().index(".."):]
    assert sorted(root_listing[1:]) == sorted(os.listdir(box.rootfs.lowerdirs[0]))


def test_capabilities_are_dockers_defaults(box):
    code, out, err = box.sh("grep CapBnd /proc/self/status; mount -t tmpfs none /mnt")
    assert "CapBnd:\t00000000a80425fb" in out
    assert code != 0  # CAP_SYS_ADMIN is gone, so no mounting


def test_proc_and_sys_kernel_interfaces_are_read_only(box):
    code, _, err = box.sh("echo 1 > /proc/sys/kernel/domainname")
    assert code != 0
    assert box.sh("touch /sys/x")[0] != 0
    assert box.run("cat", "/proc/kcore")[1] == ""


def test_dev_has_the_standard_nodes(box):
    code, out, _ = box.sh("ls /dev; echo hi > /dev/null; head -c 4 /dev/zero | wc -c; ls /dev/pts")
    for name in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "fd", "stdin",
                 "stdout", "stderr", "ptmx"):
        assert name in out.split()
    assert "4\n" in out


# ---- the upper dir is the layer --------------------------------------------------------------

def test_writes_land_in_upperdir_and_deletions_become_whiteouts(box):
    code, _, _ = box.sh("echo new > /created; rm /bin/cat; mkdir -p /a/b")
    assert code == 0
    assert (box.upper / "created").read_text() == "new\n"
    whiteout = os.lstat(box.upper / "bin" / "cat")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == os.makedev(0, 0)
    assert box.upper_entries() == ["a", "a/b", "bin", "bin/cat", "created"]


def test_no_mount_stubs_left_in_the_layer(tmp_path):
    bare = tmp_path / "bare"  # no /proc, /dev, /sys, /etc or /mnt: every mount point is a stub
    (bare / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", bare / "bin" / "busybox")
    box = Container(tmp_path, [bare])
    src = tmp_path / "src"
    src.mkdir()
    code, _, _ = box.run("/bin/busybox", "true", mounts=[BindMount(str(src), "/mnt/deep/src")])
    assert code == 0
    assert box.upper_entries() == []


def test_parent_copied_up_only_for_a_stub_is_not_in_the_layer(box):
    # busybox has /etc but no /etc/hosts: the hosts stub makes overlay copy /etc up.
    code, _, err = box.sh("echo hi > /tmp/x")
    assert code == 0, err
    assert box.upper_entries() == ["tmp", "tmp/x"]
    code, _, err = box.sh("chmod 700 /etc")  # a real change to the parent is kept
    assert code == 0, err
    assert "etc" in box.upper_entries()


def test_stubs_the_process_wrote_into_are_kept(tmp_path):
    bare = tmp_path / "bare"
    (bare / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", bare / "bin" / "busybox")
    box = Container(tmp_path, [bare])
    code, _, err = box.run("/bin/busybox", "sh", "-c", "echo mine > /etc/motd")
    assert code == 0, err
    assert box.upper_entries() == ["etc", "etc/motd"]


def test_from_scratch_rootfs(tmp_path):
    box = Container(tmp_path, [])
    code, _, err = box.run("/bin/sh")
    assert code == 127 and 'exec: "/bin/sh"' in err
    assert box.upper_entries() == []


def test_150_layers_are_all_visible_and_writable(tmp_path, busybox_layer):
    layers = [busybox_layer] + [str(make_layer(tmp_path / "layers" / f"layer-with-a-long-name-{i:03d}",
                                               {f"files/f{i:03d}": str(i)})) for i in range(150)]
    box = Container(tmp_path, layers)
    code, out, err = box.sh("ls /files | wc -l; cat /files/f000; echo; cat /files/f149; echo w > /files/new")
    assert (code, out.split()) == (0, ["150", "0", "149"]), err
    assert (box.upper / "files" / "new").read_text() == "w\n"


def test_later_layer_wins(tmp_path, busybox_layer):
    base = make_layer(tmp_path / "base", {"etc/version": "base", "etc/only-base": "b"})
    top = make_layer(tmp_path / "top", {"etc/version": "top"})
    box = Container(tmp_path, [busybox_layer, base, top])
    assert box.run("cat", "/etc/version", "/etc/only-base")[1] == "topb"


# ---- bind mounts -----------------------------------------------------------------------------

def test_bind_mounts_are_read_only_by_default(box, tmp_path):
    src = make_layer(tmp_path / "ctx", {"input.txt": "hello"})
    code, out, err = box.sh("cat /ctx/input.txt; touch /ctx/x", mounts=[BindMount(str(src), "/ctx")])
    assert out == "hello" and code != 0 and "Read-only" in err
    assert box.upper_entries() == []  # /ctx was a stub and is gone


def test_writable_bind_mount_and_file_bind(box, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    single = tmp_path / "single.txt"
    single.write_text("one file")
    code, out, _ = box.sh("echo cached > /var/cache/x; cat /opt/single.txt",
                          mounts=[BindMount(str(cache), "/var/cache", readonly=False),
                                  BindMount(str(single), "/opt/single.txt")])
    assert (code, out) == (0, "one file")
    assert (cache / "x").read_text() == "cached\n"


def test_missing_bind_source_is_a_solve_error(box, tmp_path):
    with pytest.raises(SolveError, match="bind mount source"):
        box.run("true", mounts=[BindMount(str(tmp_path / "missing"), "/m")])


def test_image_symlinks_cannot_redirect_mounts_to_the_host(tmp_path, busybox_layer):
    evil = tmp_path / "evil"
    evil.mkdir()
    os.symlink("/../../../../" + str(tmp_path / "host-target"), evil / "mnt")
    (tmp_path / "host-target").mkdir()
    src = make_layer(tmp_path / "src", {"f": "x"})
    box = Container(tmp_path, [busybox_layer, evil])
    code, out, _ = box.run("cat", "/mnt/f", mounts=[BindMount(str(src), "/mnt")])
    assert (code, out) == (0, "x")
    assert os.listdir(tmp_path / "host-target") == []  # the stub was made inside the container


# ---- run_in_rootfs ---------------------------------------------------------------------------

def test_run_in_rootfs_copies_into_upperdir_without_host_mounts(box, tmp_path):
    seen = {}

    def copy_in(merged):
        seen["merged"] = merged
        seen["lower"] = os.path.exists(f"{merged}/bin/busybox")
        seen["host_mounts"] = open("/proc/self/mountinfo").read()
        seen["own_mounts"] = open("/proc/thread-self/mountinfo").read()
        with open(f"{merged}/copied.txt", "w") as f:
            f.write("copied")

    box.executor.run_in_rootfs(box.rootfs, copy_in)
    assert seen["lower"]
    assert box.upper_entries() == ["copied.txt"]
    assert (box.upper / "copied.txt").read_text() == "copied"
    merged = seen["merged"]
    assert f" {merged} " in seen["own_mounts"] and f" {merged} " not in seen["host_mounts"]
    assert os.listdir(box.runtime) == []
    # the next step sees it
    assert box.run("cat", "/copied.txt")[1] == "copied"


def test_run_in_rootfs_reraises_as_solve_error(box):
    def broken(merged):
        raise ValueError("cannot copy /src/x: no such file")

    with pytest.raises(SolveError, match="cannot copy /src/x: no such file") as info:
        box.executor.run_in_rootfs(box.rootfs, broken)
    assert isinstance(info.value.__cause__, ValueError)
    assert os.listdir(box.runtime) == []


def test_run_in_rootfs_passes_build_errors_through(box):
    def missing(merged):
        raise SourceNotFound('"/app/missing" not found')

    with pytest.raises(SourceNotFound):
        box.executor.run_in_rootfs(box.rootfs, missing)


def test_run_in_rootfs_from_scratch(tmp_path):
    box = Container(tmp_path, [])
    box.executor.run_in_rootfs(box.rootfs, lambda m: os.makedirs(f"{m}/app/bin"))
    assert box.upper_entries() == ["app", "app/bin"]


# ---- interrupts, failures, concurrency -------------------------------------------------------

def test_exception_in_output_callback_kills_the_container(box):
    def output(fd, data):
        raise RuntimeError("consumer failed")

    with pytest.raises(RuntimeError, match="consumer failed"):
        box.executor.run(box.rootfs, ProcessSpec(("/bin/sh", "-c", "echo start; sleep 1000")),
                         output=output)
    assert os.listdir(box.runtime) == []
    # nothing_left_behind checks mounts and processes


def test_keyboard_interrupt_kills_the_container(box):
    def output(fd, data):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        box.executor.run(box.rootfs, ProcessSpec(("/bin/sh", "-c", "echo start; sleep 1000 & wait")),
                         output=output)


def test_concurrent_runs_from_threads(tmp_path, busybox_layer):
    results = {}

    def worker(i):
        box = Container(tmp_path / f"c{i}", [busybox_layer])
        results[i] = box.sh(f"echo {i}; sleep 0.2; echo {i} > /mine", hostname=f"h{i}")[:2], \
            (box.upper / "mine").read_text()

    for d in range(4):
        (tmp_path / f"c{d}").mkdir()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: ((0, f"{i}\n"), f"{i}\n") for i in range(4)}


def test_sigkilled_builder_takes_its_containers_with_it(tmp_path, busybox_layer):
    token = f"sleep-token-{os.getpid()}-{time.monotonic_ns()}"
    script = textwrap.dedent(f"""
        import os, sys
        from builder.executor import NamespaceExecutor, ProcessSpec, RootFS
        os.makedirs({str(tmp_path)!r} + "/u"); os.makedirs({str(tmp_path)!r} + "/w")
        rootfs = RootFS(({busybox_layer!r},), {str(tmp_path)!r} + "/u", {str(tmp_path)!r} + "/w")
        def out(fd, data):
            sys.stdout.write("started\\n"); sys.stdout.flush()
        NamespaceExecutor({str(tmp_path / "rt")!r}).run(rootfs, ProcessSpec(("/bin/sh", "-c", "sleep 1000 & echo go; wait; : {token}")), output=out)
    """)
    (tmp_path / "rt").mkdir()
    builder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert builder.stdout.readline() == b"started\n"
        host_ns = os.readlink("/proc/self/ns/pid")  # the builder's command line holds the token too
        [pid_ns] = {os.readlink(f"/proc/{p}/ns/pid") for p in _processes_with(token)} - {host_ns}
        assert len(_processes_in(pid_ns)) == 2  # the shell and its sleep
        builder.kill()
        builder.wait()
        deadline = time.monotonic() + 10
        while _processes_in(pid_ns) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_in(pid_ns) == []
        # The scratch dir is removed as soon as the container has pivoted, so none is left.
        assert os.listdir(tmp_path / "rt") == []
    finally:
        builder.kill()
        builder.wait()
        builder.stdout.close()


def _processes_with(token: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if token.encode() in f.read():
                    with open(f"/proc/{pid}/stat") as s:
                        if s.read().rsplit(")", 1)[1].split()[0] != "Z":
                            found.append(int(pid))
        except OSError:
            continue
    return found


def _processes_in(pid_ns: str) -> list[int]:
    """Live (non-zombie) processes whose PID namespace is PID_NS."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") != pid_ns:
                continue
            with open(f"/proc/{pid}/stat") as s:
                if s.read().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(pid))
        except OSError:
            continue
    return found


def test_close_waits_for_the_seccomp_compile_warm_sandbox_started(tmp_path):
    """A build that fails before its first RUN closes the executor at once; exiting while the
    compile thread is inside libseccomp crashed the interpreter's teardown (SIGSEGV, seen under load)."""
    executor = NamespaceExecutor(str(tmp_path), cgroup_layout=False)
    executor.warm_sandbox()
    executor.close()
    assert not any(t.name == "build-image-seccomp" and t.is_alive() for t in threading.enumerate())
