"""A RUN is a sandbox: escape attempts a build step could make, each asserted blocked.

Most attempts run straight in the NamespaceExecutor over a busybox root with a static probe
(tests/support/escape_probe.c) for the system calls busybox has no applet for; the ones that need a
real build (a device node in an ADDed tar, the security.insecure entitlement) go through the CLI.
The run's figure is printed at the end ("escape attempts: N/N blocked").
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import stat
import subprocess
import tarfile
import threading

import pytest

from builder.executor import NamespaceExecutor, ProcessSpec, RootFS, Sandbox
from tests.support.escape_probe import build_probe
from tests.support.images import build_image, write_context
from tests.support.rootfs import make_busybox_rootfs

pytestmark = [pytest.mark.root, pytest.mark.overlay]

LOOP_DEVICE = (7, 0)   # a block device every Linux host has a node for


@pytest.fixture(scope="module")
def base_layer(tmp_path_factory):
    """busybox, the probe at /probe, and a 0666 block device node at /dev-in-layer, as a layer
    from a base image or an ADDed tar would ship it."""
    layer = make_busybox_rootfs(str(tmp_path_factory.mktemp("escape") / "layer"))
    build_probe(os.path.join(layer, "probe"))
    node = os.path.join(layer, "dev-in-layer")
    os.mknod(node, stat.S_IFBLK | 0o666, os.makedev(*LOOP_DEVICE))
    os.chmod(node, 0o666)
    return layer


class Sandboxed:
    def __init__(self, tmp_path, layer, sandbox=Sandbox()):
        self.store = tmp_path / "store"
        self.upper, work, runtime = self.store / "upper", self.store / "work", self.store / "run"
        for d in (self.upper, work, runtime):
            d.mkdir(parents=True)
        self.layer = layer
        self.rootfs = RootFS((layer,), str(self.upper), str(work))
        self.executor = NamespaceExecutor(runtime_root=str(runtime), sandbox=sandbox)

    def sh(self, script, **process):
        chunks = []
        code = self.executor.run(self.rootfs, ProcessSpec(("/bin/sh", "-c", script), **process),
                                 output=lambda fd, data: chunks.append(data))
        return code, b"".join(chunks).decode(errors="replace")

    def close(self):
        self.executor.close()


@pytest.fixture
def box(tmp_path, base_layer):
    sandboxed = Sandboxed(tmp_path, base_layer)
    yield sandboxed
    sandboxed.close()


def _loopback_server():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return server, accepted


# (name, script, extra ProcessSpec fields): each script exits 0 only if the attempt got through.
ATTEMPTS = [
    ("mknod a block device and read it",
     "mknod /tmp/loop b 7 0 && dd if=/tmp/loop of=/dev/null bs=512 count=1", {}),
    ("open a block device node shipped in a layer as USER 1000",
     "dd if=/dev-in-layer of=/dev/null bs=512 count=1", {"user": "1000"}),
    ("open a block device node shipped in a layer as root",
     "dd if=/dev-in-layer of=/dev/null bs=512 count=1", {}),
    ("unshare -U -r", "unshare -U -r true", {}),
    ("unshare(CLONE_NEWUSER)", "/probe unshare-user", {}),
    ("clone(CLONE_NEWUSER)", "/probe clone-newuser", {}),
    ("unshare(CLONE_NEWNS)", "/probe unshare-mount", {}),
    ("mount -t proc", "mkdir -p /mnt && mount -t proc proc /mnt", {}),
    ("mount(2) of proc", "mkdir -p /mnt && /probe mount-proc", {}),
    ("read /proc/kcore", "test -n \"$(head -c 64 /proc/kcore 2>/dev/null)\"", {}),
    ("write /proc/sysrq-trigger", "echo h > /proc/sysrq-trigger", {}),
    ("write a kernel tunable in /proc/sys", "echo 1 > /proc/sys/kernel/sysrq", {}),
    ("read /proc/keys", "test -n \"$(cat /proc/keys 2>/dev/null)\"", {}),
    ("read /proc/timer_list", "test -n \"$(head -c 64 /proc/timer_list 2>/dev/null)\"", {}),
    ("list /sys/firmware", "test -n \"$(ls /sys/firmware 2>/dev/null)\"", {}),
    ("keyctl", "/probe keyctl", {}),
    ("bpf", "/probe bpf", {}),
    ("load a kernel module (init_module)", "/probe init-module", {}),
    ("load a kernel module (insmod)", "echo junk > /tmp/evil.ko && insmod /tmp/evil.ko", {}),
    ("change the hostname", "hostname evil-host", {}),
    ("sethostname(2)", "/probe sethostname evil-host", {}),
]


def test_every_escape_attempt_is_blocked(box, record_property):
    host_name = socket.gethostname()
    server, accepted = _loopback_server()
    port = server.getsockname()[1]
    outsider = subprocess.Popen(["sleep", "60"])
    attempts = list(ATTEMPTS) + [
        # Processes outside (the host's init, this test process) are not even visible: PID 1 in a
        # RUN is its own first process.
        ("see the host's init as PID 1", "[ \"$(tr '\\0' ' ' < /proc/1/cmdline | cut -d' ' -f1)\" != /bin/sh ]", {}),
        (f"ptrace the build process (host pid {os.getpid()})", f"/probe ptrace {os.getpid()}", {}),
        (f"ptrace a host process (pid {outsider.pid})", f"/probe ptrace {outsider.pid}", {}),
        ("reach a host loopback service (network none)", f"nc -w 2 127.0.0.1 {port} </dev/null", {}),
    ]
    results = []
    try:
        for name, script, process in attempts:
            code, output = box.sh(script, **process)
            results.append((name, code != 0, output.strip()))
    finally:
        server.close()
        outsider.terminate()
        outsider.wait()
    mountinfo_code, mountinfo = box.sh("cat /proc/self/mountinfo")
    store_paths = [str(box.store), box.layer]
    leaked = [line for line in mountinfo.splitlines() if any(p in line for p in store_paths)]
    results.append(("mountinfo shows no store paths", mountinfo_code == 0 and not leaked, "\n".join(leaked)))
    results.append(("the host's hostname is unchanged", socket.gethostname() == host_name, socket.gethostname()))
    results.append(("no host loopback connection was accepted", not accepted, str(len(accepted))))

    blocked = sum(1 for _, ok, _ in results if ok)
    figure = f"escape attempts: {blocked}/{len(results)} blocked"
    record_property("figure", figure)
    print(figure)
    assert [(name, output) for name, ok, output in results if not ok] == []


def test_the_sandbox_is_on_in_the_process_status(box):
    code, output = box.sh("grep -E '^(Seccomp|NoNewPrivs|CapBnd):' /proc/self/status")
    fields = dict(line.split(":\t") for line in output.strip().splitlines())
    assert code == 0
    assert fields["Seccomp"] == "2" and fields["NoNewPrivs"] == "1"
    assert int(fields["CapBnd"], 16) == sum(1 << c for c in (0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31))


def test_the_standard_devices_stay_usable(box):
    script = ("head -c 4 /dev/zero | wc -c && head -c 4 /dev/urandom | wc -c && head -c 4 /dev/random | wc -c"
              " && echo x > /dev/null && ! echo x 2>/dev/null > /dev/full && test -c /dev/ptmx")
    code, output = box.sh(script)
    assert (code, output.split()) == (0, ["4", "4", "4"])


def test_a_normal_step_still_works_under_the_profile(box):
    # fork, pipes, chroot (CAP_SYS_CHROOT), a 32-bit personality query.
    code, output = box.sh("mkdir -p /tmp/a && echo hi | tr a-z A-Z > /tmp/a/x && cat /tmp/a/x "
                          "&& chroot / /bin/true && linux32 uname -m")
    assert code == 0
    assert output.split() == ["HI", "i686"]


def test_unconfined_seccomp_lets_the_calls_through_but_keeps_the_rest(tmp_path, base_layer):
    unconfined = Sandboxed(tmp_path, base_layer, Sandbox(seccomp=False))
    try:
        code, output = unconfined.sh("grep '^Seccomp:' /proc/self/status; /probe keyctl")
        assert (code, output.split()) == (0, ["Seccomp:", "0", "ok"])
        # Devices and capabilities do not depend on seccomp.
        assert unconfined.sh("dd if=/dev-in-layer of=/dev/null bs=512 count=1")[0] != 0
    finally:
        unconfined.close()


def test_mountinfo_hides_the_store_also_for_layered_mounts(box, tmp_path, base_layer):
    from builder.executor import LayeredMount

    chunks = []
    mount = LayeredMount((base_layer,), "/stage", "/bin")
    code = box.executor.run(box.rootfs, ProcessSpec(("/bin/sh", "-c", "test -x /stage/busybox && cat /proc/self/mountinfo")),
                            [mount], output=lambda fd, data: chunks.append(data))
    mountinfo = b"".join(chunks).decode()
    assert code == 0
    assert base_layer not in mountinfo and str(box.store) not in mountinfo
    assert " /stage " in mountinfo


# ---- through a build ------------------------------------------------------------------------------

def _tar_with_block_device() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("evil/disk")
        info.type, info.mode = tarfile.BLKTYPE, 0o666
        info.devmajor, info.devminor = LOOP_DEVICE
        tf.addfile(info)
    return buf.getvalue()


@pytest.mark.registry
def test_a_device_node_in_an_added_tar_cannot_be_opened_after_user_1000(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
ADD evil.tar /
USER 1000
RUN ls -l /evil/disk && dd if=/evil/disk of=/dev/null bs=512 count=1
"""})
    with open(os.path.join(context, "evil.tar"), "wb") as f:
        f.write(_tar_with_block_device())
    result = build_image("--root", store_root, "--progress", "plain", context, check=False)
    assert result.returncode == 1
    assert "Operation not permitted" in result.stderr
    assert "brw-rw-rw-" in result.stderr  # the node is there, mode 0666: only the cgroup stops it


@pytest.mark.registry
def test_seccomp_unconfined_needs_the_security_insecure_entitlement(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN grep '^Seccomp:' /proc/self/status
"""})
    refused = build_image("--root", store_root, "--security-opt", "seccomp=unconfined", context, check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "ERROR: security.insecure is not allowed: --security-opt seccomp=unconfined needs --allow security.insecure")
    allowed = build_image("--root", store_root, "--progress", "plain", "--no-cache", "--security-opt",
                          "seccomp=unconfined", "--allow", "security.insecure", context)
    assert "Seccomp:\t0" in allowed.stderr
    confined = build_image("--root", store_root, "--progress", "plain", "--no-cache", context)
    assert "Seccomp:\t2" in confined.stderr


def test_unknown_security_opt_is_one_error_line(store_root, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\n"})
    result = build_image("--root", store_root, "--security-opt", "apparmor=unconfined", context, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == 'ERROR: invalid --security-opt "apparmor=unconfined" (supported: seccomp=unconfined)'


# ---- cgroup v2: the same device rules as an eBPF program --------------------------------------

def _unified_own_cgroup() -> str | None:
    """This process's directory in a cgroup2 mount (the unified one beside v1 on a hybrid host)."""
    for line in open("/proc/self/mountinfo"):
        fields = line.split()
        if line.split(" - ", 1)[1].startswith("cgroup2 "):
            own = next(l for l in open("/proc/self/cgroup") if l.startswith("0::")).strip()[3:]
            return os.path.join(fields[4], own.lstrip("/"))
    return None


def test_cgroup_v2_device_program_blocks_what_the_v1_rules_block(tmp_path, base_layer):
    from builder.executor import ResourceLimits
    from builder.executor import cgroups

    unified = _unified_own_cgroup()
    if unified is None:
        pytest.skip("no cgroup2 mount on this machine")
    # No limits: on a hybrid host the v2 tree has no controllers; devices need none (cgroup-bpf).
    layout = cgroups.Layout(2, (("", unified),))
    executor_dirs = Sandboxed(tmp_path, base_layer, Sandbox(limits=ResourceLimits(pids=None)))
    executor_dirs.executor = NamespaceExecutor(runtime_root=str(executor_dirs.store / "run"),
                                               sandbox=executor_dirs.executor.sandbox, cgroup_layout=layout)
    try:
        assert executor_dirs.sh("dd if=/dev-in-layer of=/dev/null bs=512 count=1")[0] != 0
        assert executor_dirs.sh("mknod /tmp/l b 7 0 && dd if=/tmp/l of=/dev/null bs=512 count=1")[0] != 0
        code, output = executor_dirs.sh("head -c 3 /dev/zero | wc -c && echo ok > /dev/null && cat /proc/self/cgroup")
        assert code == 0 and output.split()[0] == "3"
    finally:
        executor_dirs.close()
    assert [n for n in os.listdir(unified) if n.startswith(f"build-image-{os.getpid()}-")] == []
