"""`build-image serve` over its unix socket: builds and image commands through the server behave
as local ones (outputs, progress, exit codes, error lines), Ctrl-C and SIGTERM cancel for real,
and the client imports nothing heavy."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from tests.support.buildserver import BuildServer
from tests.support.images import build_image, write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry]

HEAVY = ("lark", "networkx", "pyroute2", "dill", "pam")


@pytest.fixture
def server(store_root):
    with BuildServer(store_root) as running:
        yield running


def _context(server, name: str, dockerfile: str, files: dict | None = None) -> str:
    return write_context(server.workdir(name), {"Dockerfile": dockerfile, **(files or {})})


def test_a_build_through_the_server_names_the_image_and_writes_outputs_here(server, busybox_registry, tmp_path):
    context = _context(server, "ctx", f"FROM {busybox_registry.reference}\nCOPY a.txt /\nRUN cat /a.txt > /b.txt\n",
                       {"a.txt": "hello\n", "secret.key": "no\n", ".dockerignore": "secret.key\n"})
    out = tmp_path / "out.tar"
    iid = tmp_path / "iid"
    epoch = ("--build-arg", "SOURCE_DATE_EPOCH=1700000000")
    proc = server.client("build", *epoch, "-t", "app:1", "--progress", "plain", "-o", f"type=oci,dest={out}",
                         "-o", f"type=local,dest={tmp_path / 'rootfs'}", "--iidfile", str(iid), context)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"RUN cat /a.txt > /b.txt" in proc.stderr and b"naming to docker.io/library/app:1 done" in proc.stderr
    assert (tmp_path / "rootfs" / "b.txt").read_text() == "hello\n"
    assert not (tmp_path / "rootfs" / "secret.key").exists()   # .dockerignore applied
    with tarfile.open(out) as tf:
        index = json.load(tf.extractfile("index.json"))
    assert index["manifests"][0]["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    image_id = iid.read_text()
    listed = server.client("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout.decode()
    assert f"app:1 {image_id.partition(':')[2][:12]}" in listed.splitlines()
    inspected = json.loads(server.client("inspect", "app:1").stdout)
    assert inspected[0]["Id"] == image_id
    # The same context built locally into another store gives the same image: one build, two roads.
    local = build_image("--root", str(tmp_path / "local"), *epoch, "-q", context).stdout.strip()
    assert local == image_id


def test_a_cached_rebuild_through_the_server_is_all_cached(server, busybox_registry):
    context = _context(server, "ctx", f"FROM {busybox_registry.reference}\nRUN echo one > /one\n")
    assert server.client("build", "-q", context).returncode == 0
    again = server.client("build", "--progress", "plain", context)
    assert again.returncode == 0
    assert b"CACHED" in again.stderr and b"DONE" not in again.stderr.split(b"exporting")[0].replace(
        b"load build definition", b"").split(b"CACHED")[-1]


def test_progress_streams_in_rawjson_and_tty_modes(server, busybox_registry):
    context = _context(server, "ctx", f"FROM {busybox_registry.reference}\nRUN echo streamed-line\n")
    raw = server.client("build", "--no-cache", "--progress", "rawjson", context)
    assert raw.returncode == 0
    statuses = [json.loads(line) for line in raw.stderr.decode().splitlines()]
    assert any("RUN echo streamed-line" in v.get("name", "") for s in statuses for v in s.get("vertexes", []))
    assert any("c3RyZWFtZWQtbGluZQ" in log["data"] for s in statuses for log in s.get("logs", []))
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "builder.cli", "--server", server.address, "build",
                               "--progress", "tty", context], stdout=subprocess.DEVNULL, stderr=follower,
                              stdin=subprocess.DEVNULL, timeout=300)
        os.close(follower)
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(leader)
    assert proc.returncode == 0
    assert b"[+] Building" in drawn and b"FINISHED" in drawn


def test_errors_and_exit_codes_are_the_local_ones(server, busybox_registry, tmp_path):
    failing = _context(server, "fail", f"FROM {busybox_registry.reference}\nRUN echo about-to-fail && exit 3\n")
    remote = server.client("build", "--progress", "plain", failing)
    local = build_image("--root", str(tmp_path / "local"), "--progress", "plain", failing, check=False)
    assert remote.returncode == local.returncode == 1
    remote_tail = remote.stderr.decode().split("------\n", 1)[1]
    local_tail = local.stderr.split("------\n", 1)[1]
    assert remote_tail == local_tail
    assert remote_tail.rstrip().endswith("did not complete successfully: exit code: 3")
    bad = _context(server, "bad", "FROBNICATE\n")
    remote_bad, local_bad = server.client("build", bad), build_image(bad, check=False)
    assert remote_bad.returncode == local_bad.returncode == 1
    assert remote_bad.stderr.decode().splitlines()[-1] == local_bad.stderr.splitlines()[-1]
    usage = server.client("build", "--frobnicate", bad)
    assert usage.returncode == 125 and usage.stderr.decode().startswith("ERROR: unknown flag: --frobnicate")
    missing = server.client("inspect", "no-such-image")
    local_missing = build_image("inspect", "--root", str(tmp_path / "local"), "no-such-image", check=False)
    assert missing.returncode == local_missing.returncode == 1
    assert (missing.stdout.decode(), missing.stderr.decode()) == (local_missing.stdout, local_missing.stderr)


def test_image_commands_through_the_server(server, busybox_registry, tmp_path, registry):
    context = _context(server, "ctx", f"FROM {busybox_registry.reference}\nRUN echo x > /x\n")
    assert server.client("build", "-q", "-t", "first", context).returncode == 0
    assert server.client("tag", "first", "second:2").returncode == 0
    history = server.client("history", "--format", "{{.CreatedBy}}", "second:2").stdout.decode()
    assert "RUN /bin/sh -c echo x > /x" in history
    saved = tmp_path / "saved.tar"
    assert server.client("save", "-o", str(saved), "second:2").returncode == 0
    with tarfile.open(saved) as tf:
        assert "manifest.json" in tf.getnames()
    assert server.client("rmi", "first", "second:2").returncode == 0
    assert "second" not in server.client("images").stdout.decode()
    loaded = server.client("load", "-i", str(saved))
    assert loaded.stdout.decode().strip() == "Loaded image: second:2"
    pushed_name = f"{registry.host}/pushed:1"
    assert server.client("tag", "second:2", pushed_name).returncode == 0
    assert server.client("push", pushed_name).returncode == 0
    assert server.client("rmi", pushed_name).returncode == 0
    pulled = server.client("pull", pushed_name)
    assert pulled.returncode == 0, pulled.stderr.decode()
    assert server.client("df").stdout.decode().startswith("TYPE")
    refused = server.client("images", "--root", "/")
    assert refused.returncode == 125 and b"--root cannot be used with --server" in refused.stderr


def _running(pattern: str) -> list[int]:
    """Pids whose command line is exactly PATTERN's words (the containers' processes)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[:-1] == pattern.encode().split():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def _start_slow_build(server, busybox_registry, marker: str):
    context = _context(server, marker, f"FROM {busybox_registry.reference}\nRUN echo started && sleep 7{marker[-2:]}\n")
    proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "--server", server.address, "build",
                             "--progress", "plain", context], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    seen = b""
    while b"started" not in seen:
        line = proc.stderr.readline()
        assert line, f"the build ended early: {seen.decode()}"
        seen += line
    sleeper = f"sleep 7{marker[-2:]}"
    deadline = time.monotonic() + 10
    while not _running(sleeper) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _running(sleeper)
    return proc, sleeper


def test_ctrl_c_on_the_client_cancels_the_build_on_the_server_within_a_second(server, busybox_registry):
    proc, sleeper = _start_slow_build(server, busybox_registry, "cancel11")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 130
    interrupted = time.monotonic()
    while _running(sleeper) and time.monotonic() - interrupted < 5:
        time.sleep(0.05)
    assert _running(sleeper) == []
    assert time.monotonic() - interrupted < 1.0
    # The server is still there, and its store works.
    assert server.client("images").returncode == 0
    assert os.listdir(os.path.join(server.root, "service", "tmp")) == []


def test_sigterm_cancels_builds_in_flight_and_the_server_exits_cleanly(server, busybox_registry):
    proc, sleeper = _start_slow_build(server, busybox_registry, "sigterm22")
    started = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    _, rest = proc.communicate(timeout=30)
    assert proc.returncode == 1 and b"cancelled" in rest
    assert _running(sleeper) == []
    assert not os.path.exists(server.address.removeprefix("unix://"))
    assert "stopped" in server.log()
    fsck = build_image("fsck", "--root", server.root)
    assert fsck.returncode == 0


def _imported(*args: str, env=None) -> set[str]:
    """What the client imports, beyond what this interpreter's own start-up imports (site's .pth
    files, such as a sandbox's certifi hook, may import typing before any code of ours runs)."""
    def modules(*argv: str) -> set[str]:
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1", **(env or {})})
        assert proc.returncode == 0, proc.stderr[-2000:]
        return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}

    return modules("-m", "builder.cli", *args) - modules("-c", "pass")


def test_the_client_imports_nothing_heavy(server, busybox_registry, tmp_path):
    context = _context(server, "ctx", f"FROM {busybox_registry.reference}\nRUN echo light > /l\n")
    built = _imported("build", "-q", context, env={"BUILD_IMAGE_HOST": server.address})
    listed = _imported("--server", server.address, "images")
    # Flags the thin path does not read itself: the local parser, still none of the build machinery.
    whole = _imported("--server", server.address, "build", "--progress", "plain", "-o", f"type=tar,dest={tmp_path / 'o'}",
                      "--secret", f"id=s,src={os.path.join(context, 'Dockerfile')}", context)
    for modules in (built, listed, whole):
        assert "builder.cli.remote" in modules
        assert sorted(m for m in modules if m.split(".")[0] in HEAVY) == []
        assert not any(m.startswith(("builder.solver", "builder.executor", "builder.convert", "builder.grammar",
                                     "builder.lifecycle", "builder.registry", "builder.pipeline", "builder.store",
                                     "builder.image", "builder.snapshot", "http.client")) for m in modules)
    # The thin path (the common flags, quiet): not even argparse, tarfile, the context's rules or typing.
    assert "builder.plumbing.tarwriter" in built
    assert not built & {"argparse", "tarfile", "typing", "dataclasses", "socket", "builder.cli.build_command",
                        "builder.context", "builder.events", "builder.session", "builder.cli.progress_view"}


def test_the_shipped_units_start_the_server_from_systemds_socket(tmp_path, busybox_registry):
    """build-image.socket's way: systemd-socket-activate binds the socket and starts the server
    with it (LISTEN_FDS), as build-image.service would be."""
    units = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "service")
    with open(os.path.join(units, "build-image.service")) as f:
        assert "build-image serve" in f.read()
    with open(os.path.join(units, "build-image.socket")) as f:
        assert "ListenStream=/run/build-image/build-image.sock" in f.read()
    sock = tmp_path / "activated.sock"
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(["systemd-socket-activate", "-l", str(sock), sys.executable, "-m", "builder.cli",
                             "serve", "--root", str(tmp_path / "root")], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        listed = subprocess.run([sys.executable, "-m", "builder.cli", "--server", f"unix://{sock}", "images"],
                                capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.decode().split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    assert f"listening on unix://{sock}" in (tmp_path / "server.log").read_text()


def test_stdin_and_url_contexts_through_the_server(server, busybox_registry, tmp_path):
    from http.server import BaseHTTPRequestHandler

    from tests.support.httpserver import LoopbackHTTPServer

    dockerfile = f"FROM {busybox_registry.reference}\nRUN echo from-stdin > /s\n".encode()
    piped = server.client("build", "-q", "-t", "piped", "-", input=dockerfile)
    assert piped.returncode == 0, piped.stderr
    context = _context(server, "dir", "FROM scratch\nCOPY a.txt /\n", {"a.txt": "a\n"})
    alt = tmp_path / "Other.Dockerfile"
    alt.write_text("FROM scratch\nCOPY a.txt /copied\n")
    named = server.client("build", "-q", "-f", str(alt), "-t", "other-file", context)
    assert named.returncode == 0, named.stderr
    history = server.client("history", "--format", "{{.CreatedBy}}", "other-file").stdout.decode()
    assert "COPY a.txt /copied" in history
    with tarfile.open(tmp_path / "ctx.tar", "w") as tf:
        tf.add(os.path.join(context, "Dockerfile"), arcname="Dockerfile")
        tf.add(os.path.join(context, "a.txt"), arcname="a.txt")
    body = (tmp_path / "ctx.tar").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with LoopbackHTTPServer(Handler) as http:
        fetched = server.client("build", "-q", "-t", "fetched", f"{http.url}/ctx.tar")
    assert fetched.returncode == 0, fetched.stderr
    refused = server.client("build", "git@example.invalid:repo.git")
    assert refused.returncode == 1 and b"the server fetches only" in refused.stderr


def test_a_build_that_waits_for_a_slot_shows_it(store_root, busybox_registry):
    with BuildServer(store_root, extra=("--max-builds", "1")) as server:
        slow = _context(server, "slow", f"FROM {busybox_registry.reference}\nRUN echo started && sleep 3\n")
        first = subprocess.Popen([sys.executable, "-m", "builder.cli", "--server", server.address, "build",
                                  "--progress", "plain", slow], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for line in iter(first.stderr.readline, b""):   # until the first build is running (or ends)
            if b"started" in line:
                break
        else:
            raise AssertionError(f"the first build never started: exit {first.wait()}")
        quick = _context(server, "quick", "FROM scratch\n")
        waited = server.client("build", "--progress", "plain", quick)
        first.communicate(timeout=120)
        assert waited.returncode == 0 and b"[internal] waiting for a build slot (1 running)" in waited.stderr


def test_ssh_agents_are_forwarded_over_the_build_connection(server, debian_registry, tmp_path):
    """A real ssh-agent on the client's side answers a RUN on the server's side (perl from the
    Debian base speaks the agent protocol: REQUEST_IDENTITIES, 11, is answered by 12)."""
    agent_socket = str(tmp_path / "agent.sock")
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", agent_socket], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(agent_socket) and time.monotonic() < deadline:
            time.sleep(0.02)
        ask = ("perl -MIO::Socket::UNIX -e '$s=IO::Socket::UNIX->new(Peer=>$ENV{SSH_AUTH_SOCK}) or die \"no agent\"; "
               "print $s pack(\"NC\",1,11); read($s,$h,5)==5 or die \"short\"; ($l,$t)=unpack(\"NC\",$h); "
               "print \"agent answered type $t\\n\"'")
        context = _context(server, "ssh", f"FROM {debian_registry.reference}\nRUN --mount=type=ssh {ask}\n")
        built = server.client("build", "--no-cache", "--progress", "plain", "--ssh", f"default={agent_socket}",
                              context)
        assert built.returncode == 0, built.stderr.decode()[-3000:] + server.log()[-3000:]
        assert b"agent answered type 12" in built.stderr
        from_stdin = server.client("build", "--no-cache", "--progress", "plain", "--ssh", f"default={agent_socket}",
                                   "-", input=f"FROM {debian_registry.reference}\nRUN --mount=type=ssh {ask}\n".encode())
        assert from_stdin.returncode == 0 and b"agent answered type 12" in from_stdin.stderr, from_stdin.stderr
        missing = server.client("build", "--no-cache", "--progress", "plain", context)
        assert missing.returncode == 1
    finally:
        agent.terminate()
        agent.wait(10)
    left = subprocess.run(["find", os.path.join(server.root, "service", "tmp")], capture_output=True, text=True).stdout
    assert os.listdir(os.path.join(server.root, "service", "tmp")) == [], left + server.log()[-2000:]


def test_a_changed_file_is_always_seen_even_with_its_old_size_and_mtime(server, busybox_registry, tmp_path):
    """The thin client's context (its own tar writer, no .dockerignore) carries every byte: a file
    changed in place, same size, mtime put back, is a new image; a hard link (which the small writer
    leaves to tarfile) and a .dockerignore (BuildContext's rules) take the other road to the same place."""
    context = _context(server, "changed", f"FROM {busybox_registry.reference}\nCOPY . /ctx/\n", {"a.txt": "one\n"})
    path = os.path.join(context, "a.txt")
    before = os.stat(path)
    first = server.client("build", "-q", "-o", f"type=local,dest={tmp_path / 'first'}", context)
    with open(path, "w") as f:
        f.write("two\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    second = server.client("build", "-q", "-o", f"type=local,dest={tmp_path / 'second'}", context)
    assert first.returncode == second.returncode == 0, second.stderr
    assert (tmp_path / "first" / "ctx" / "a.txt").read_text() == "one\n"
    assert (tmp_path / "second" / "ctx" / "a.txt").read_text() == "two\n"
    assert first.stdout != second.stdout
    os.link(path, os.path.join(context, "hard.txt"))
    linked = server.client("build", "-q", "-o", f"type=local,dest={tmp_path / 'linked'}", context)
    assert linked.returncode == 0 and (tmp_path / "linked" / "ctx" / "hard.txt").read_text() == "two\n"
    with open(os.path.join(context, ".dockerignore"), "w") as f:
        f.write("hard.txt\n")
    ignored = server.client("build", "-q", "-o", f"type=local,dest={tmp_path / 'ignored'}", context)
    assert ignored.returncode == 0 and not (tmp_path / "ignored" / "ctx" / "hard.txt").exists()
    bad = server.client("build", "-q", "-o", "type=oci,nodest", context)
    local_bad = build_image("--root", str(tmp_path / "local"), "-q", "-o", "type=oci,nodest", context, check=False)
    assert bad.returncode == local_bad.returncode == 1
    assert bad.stderr.decode().splitlines()[-1] == local_bad.stderr.splitlines()[-1]


def test_directory_build_contexts_are_sent_with_their_own_dockerignore(server, busybox_registry, tmp_path):
    """--build-context NAME=DIR through the server: each directory goes up as a tar after the main
    context, with its own .dockerignore applied; COPY --from and RUN --mount=from read it, the image
    is the local build's, a change in it is seen, and what cannot work says so as a local build does."""
    base = busybox_registry.reference
    context = _context(server, "main", f"FROM {base}\nCOPY --from=extra /o.txt /\n"
                                       "RUN --mount=from=tools,target=/t cat /t/tool.sh > /tool-copy\n",
                       {"unused": "u\n"})
    extra = write_context(server.workdir("extra"), {"o.txt": "one\n", "hidden.txt": "h\n",
                                                    ".dockerignore": "hidden.txt\n", "Dockerfile": "ignored\n"})
    tools = write_context(server.workdir("tools"), {"tool.sh": "echo tool\n"})
    named = ("--build-context", f"extra={extra}", "--build-context", f"tools={tools}")
    epoch = ("--build-arg", "SOURCE_DATE_EPOCH=1700000000")
    out = tmp_path / "out"
    built = server.client("build", *epoch, "-q", *named, "-o", f"type=local,dest={out}", context)
    assert built.returncode == 0, built.stderr.decode() + server.log()[-2000:]
    assert (out / "o.txt").read_text() == "one\n" and (out / "tool-copy").read_text() == "echo tool\n"
    local = build_image("--root", str(tmp_path / "local"), *epoch, "-q", *named, context).stdout.strip()
    assert built.stdout.decode().strip() == local
    with open(os.path.join(extra, "o.txt"), "w") as f:
        f.write("two\n")
    changed = server.client("build", *epoch, "-q", *named, context)
    assert changed.returncode == 0 and changed.stdout.strip() and changed.stdout.decode().strip() != local
    hidden = _context(server, "hidden", "FROM scratch\nCOPY --from=extra /hidden.txt /\n")
    remote_hidden = server.client("build", *named, hidden)
    local_hidden = build_image("--root", str(tmp_path / "local"), *named, hidden, check=False)
    assert remote_hidden.returncode == local_hidden.returncode == 1
    assert remote_hidden.stderr.decode().splitlines()[-1] == local_hidden.stderr.splitlines()[-1]
    assert '"/hidden.txt": not found' in local_hidden.stderr
    as_base = _context(server, "as-base", "FROM extra\n")
    remote_base = server.client("build", *named, as_base)
    local_base = build_image("--root", str(tmp_path / "local"), *named, as_base, check=False)
    assert remote_base.returncode == local_base.returncode == 1
    assert remote_base.stderr.decode().splitlines()[-1] == local_base.stderr.splitlines()[-1]
    missing = server.client("build", "--build-context", f"x={tmp_path / 'missing'}", context)
    assert missing.returncode == 1 and missing.stderr.decode() == f"ERROR: --build-context x: {tmp_path / 'missing'} is not a directory\n"
    assert os.listdir(os.path.join(server.root, "service", "tmp")) == []


_FIRST_CACHED_ANSWER = """
import json, os, shutil, sys
from builder.service import server, worker

class Out:
    def __init__(self): self.kinds = []
    def write(self, data): pass
    def send(self, kind, **fields): self.kinds.append(kind)

server._preload()
root, context, work = sys.argv[1:4]
shutil.copytree(context, os.path.join(work, "context"))
before = set(sys.modules)
out = Out()
answered = worker.answer_if_cached(out, {"events": False}, work, root, {}, "uid-0", False)
print(json.dumps({"answered": answered, "kinds": out.kinds, "imported": sorted(set(sys.modules) - before)}))
"""


def test_a_warm_servers_first_cached_answer_imports_nothing(store_root, tmp_path):
    """_preload has everything a cached answer uses: the first request pays no import either."""
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY a /\n", "a": "a\n"})
    build_image("--root", store_root, "-q", context)
    os.makedirs(tmp_path / "work")
    proc = subprocess.run([sys.executable, "-c", _FIRST_CACHED_ANSWER, store_root, context, str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "BUILD_IMAGE_NAMESPACE": "uid-0"})
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["answered"] and answer["kinds"] == ["result"]
    assert answer["imported"] == []
