"""One forked worker process per request: the server stays warm (every heavy module imported,
nothing to pickle: the child has the request in memory), and a build is cancelled the way a local
one is, by SIGINT, so its containers are killed by the same code that handles Ctrl-C.

The worker writes frames (protocol.py) to a pipe, and its stdout and stderr go to two more pipes;
the server thread that forked it forwards all three to the client. The worker runs in the user's
image namespace ($BUILD_IMAGE_NAMESPACE) with their own registry credentials ($DOCKER_CONFIG under
the namespace), and dies with SIGINT if the server thread that made it dies.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tarfile
import threading

from builder.service import protocol

_FORK_LOCK = threading.Lock()


class Worker:
    def __init__(self, pid: int, messages: int, stdout: int, stderr: int):
        self.pid, self.messages, self.stdout, self.stderr = pid, messages, stdout, stderr

    def interrupt(self) -> None:
        try:
            os.kill(self.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def spawn(target, *, stdin_fd: int, env: dict[str, str], close_in_child) -> Worker:
    """Fork a worker that runs TARGET(messages_fd) -> exit code. CLOSE_IN_CHILD() closes the
    server's sockets in the child (the listeners, every client connection), so that only the
    server's copies keep them open."""
    from builder.plumbing.linux import set_parent_death_signal

    with _FORK_LOCK:  # no other fork may inherit this worker's write ends
        pipes = [os.pipe() for _ in range(3)]
        pid = os.fork()
        if pid == 0:
            code, log = 1, 2
            try:
                set_parent_death_signal(signal.SIGINT)
                close_in_child()
                (msg_r, msg_w), (out_r, out_w), (err_r, err_w) = pipes
                for fd in (msg_r, out_r, err_r):
                    os.close(fd)
                log = os.dup(2)   # the server's log, for what is no business of the client's
                os.dup2(stdin_fd, 0)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                os.close(out_w)
                os.close(err_w)
                # Fresh stream objects: another thread may have held the old ones' locks at fork.
                sys.stdin = open(0, "r", closefd=False)
                sys.stdout = open(1, "w", closefd=False)
                sys.stderr = open(2, "w", closefd=False)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.environ.update(env)
                code = target(msg_w)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except KeyboardInterrupt:
                code = 130
            except BaseException:
                import traceback

                with open(log, "w", closefd=False) as server_log:
                    traceback.print_exc(file=server_log)
                print("ERROR: the build server failed (its log has the details)", file=sys.stderr)
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        for _, write_end in pipes:
            os.close(write_end)
    return Worker(pid, pipes[0][0], pipes[1][0], pipes[2][0])


class MessageWriter:
    """Frames to the server over the worker's pipe; once the server is gone, writes are dropped
    (the SIGINT that follows cancels the build)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.lock = threading.Lock()
        self.broken = False

    def write(self, data: bytes) -> None:
        with self.lock:
            if self.broken:
                return
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view):]
            except (BrokenPipeError, OSError):
                self.broken = True

    def send(self, kind: str, **fields) -> None:
        self.write(protocol.message(kind, **fields))


# ---- a build ------------------------------------------------------------------------------------

def build_target(request: dict, workdir: str, root: str, limits: dict):
    """The worker's body for POST /v1/build: the context is in WORKDIR/context already."""

    def run(fd: int) -> int:
        out = MessageWriter(fd)
        try:
            options, outputs = build_options(request, workdir, root, limits)
            from builder.pipeline import build

            def progress(event) -> None:
                if wants_events:
                    out.send("event", **protocol.encode_event(event))

            wants_events = request.get("events", True) is not False   # a quiet client draws nothing

            stdin = open(os.path.join(workdir, "stdin"), "rb") if request.get("stdin_context") else None
            result = build(options, progress, stdin=stdin)
        except KeyboardInterrupt:
            out.send("error", interrupted=True)
            return 130
        except BaseException as error:
            from builder.errors import BuildError

            if isinstance(error, OSError) and not isinstance(error, BuildError):
                where = f": {error.filename}" if error.filename else ""
                error = BuildError(f"{error.strerror or error}{where}")
            if not isinstance(error, BuildError):
                raise
            out.send("error", **protocol.encode_error(error))
            return 1
        send_result(out, result, outputs, request, workdir)
        return 0
    return run


def send_result(out, result, outputs, request: dict, workdir: str) -> None:
    """The build's result and the outputs it wrote on the server, for the client."""
    out.send("result", image_id=result.image_id, manifest_digest=result.manifest_digest,
             tags=list(result.tags), warnings=list(result.warnings), wrote_stdout=result.wrote_stdout)
    for index, path in outputs:
        send_output(out, index, path)
    metadata = os.path.join(workdir, "metadata.json")
    if request.get("metadata_file") and os.path.exists(metadata):
        send_output(out, "metadata", metadata)


def answer_if_cached(out, request: dict, workdir: str, root: str, limits: dict, namespace: str,
                     isolate_cache: bool) -> bool:
    """Answer a fully cached build on the server's own thread (no worker: nothing runs, nothing is
    fetched, so there is nothing to cancel). False when it needs a worker after all; whatever went
    wrong is then the worker's to report, the way it always does."""
    from builder.pipeline import build_if_cached

    seen: list = []
    try:
        options, outputs = build_options(request, workdir, root, limits)
        if options.secrets or request.get("ssh_paths"):
            return False
        result = build_if_cached(options, seen.append, namespace=namespace, isolate_cache=isolate_cache)
    except Exception:
        return False
    if result is None:
        return False
    for event in seen if request.get("events", True) is not False else ():
        out.send("event", **protocol.encode_event(event))
    send_result(out, result, outputs, request, workdir)
    return True


def send_output(out: MessageWriter, index, path: str) -> None:
    """An output the build wrote on the server, for the client to write at its own dest: a file as
    it is, a directory as a tar stream."""
    if os.path.isdir(path):
        out.send("output", index=index, form="tar")
        with tarfile.open(fileobj=_FrameFile(out), mode="w|") as tf:
            for name in sorted(os.listdir(path)):
                tf.add(os.path.join(path, name), arcname=name)
    else:
        out.send("output", index=index, form="file")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                out.write(protocol.frame(protocol.FILE, chunk))
    out.send("output-end", index=index)


class _FrameFile:
    def __init__(self, out: MessageWriter):
        self.out = out

    def write(self, data: bytes) -> int:
        if data:
            out = bytes(data)
            for start in range(0, len(out), 1 << 20):
                self.out.write(protocol.frame(protocol.FILE, out[start:start + (1 << 20)]))
        return len(data)


# The URLs the server fetches itself: anonymous ones (ssh:// and git@ would use the server's keys).
_SERVER_FETCHES = ("http://", "https://", "git://")

# What a client may set, by BuildOptions field; everything else the server decides.
_PLAIN_FIELDS = ("tags", "build_args", "target", "no_cache", "no_cache_filter", "pull", "labels", "annotations",
                 "jobs", "platform", "insecure_registries", "network", "add_hosts", "allow", "shm_size", "ulimits",
                 "security_opts", "memory", "pids_limit", "cpu_shares")


def build_options(request: dict, workdir: str, root: str, limits: dict):
    """BuildOptions for a client's request: its context and Dockerfile where the server unpacked
    them, outputs with a dest redirected into WORKDIR (sent back afterwards), secrets in memory,
    the server's resource limits. Returns (options, [(output index, server path)])."""
    from builder.errors import BuildError
    from builder.pipeline import BuildOptions, OutputSpec, parse_memory
    from builder.session import SecretSource

    fields = {name: request[name] for name in _PLAIN_FIELDS if name in request}
    for entitlement in fields.get("allow", ()):
        raise BuildError(f"--allow {entitlement}: the server grants no entitlements")
    if fields.get("network") == "host":
        raise BuildError("--network host: the server grants no entitlements (network.host)")
    named = dict(request.get("build_contexts", {}))
    for name, value in named.items():   # never a path: that would be the server's own files
        if not (isinstance(value, str) and value.startswith(("docker-image://", *_SERVER_FETCHES))):
            raise BuildError(f"--build-context {name}: through a server a named context is a directory the "
                             f"client sends, docker-image://REF or a {', '.join(_SERVER_FETCHES)} URL")
    for index, item in enumerate(request.get("named_contexts") or ()):
        named[item["name"]] = os.path.join(workdir, "named", str(index))   # where the server unpacked it
    _apply_limits(fields, limits, parse_memory)
    outputs, returned = [], []
    for index, text in enumerate(request.get("outputs", ())):
        spec = OutputSpec.parse(text)
        if spec.get("dest"):
            local = os.path.join(workdir, f"output-{index}")
            spec = OutputSpec(spec.type, tuple((k, local if k == "dest" else v) for k, v in spec.attrs))
            returned.append((index, local))
        outputs.append(spec)
    import base64

    secrets = tuple(SecretSource(s["id"], value=base64.b64decode(s["value"]))
                    for s in request.get("secrets", ()))
    dockerfile = None
    if request.get("dockerfile_name"):
        dockerfile = os.path.join(workdir, "dockerfile", os.path.basename(request["dockerfile_name"]))
    url = request.get("context_url")
    if url:
        if not isinstance(url, str) or not url.startswith(_SERVER_FETCHES):
            raise BuildError("the server fetches only http://, https:// and git:// contexts")
        context = url
    elif request.get("stdin_context"):
        context = "-"
    else:
        context = os.path.join(workdir, "context")
    from builder.session import SSHSource

    ssh = tuple(SSHSource(ssh_id, path) for ssh_id, path in request.get("ssh_paths", {}).items())
    options = BuildOptions(
        context=context, dockerfile=dockerfile, root=root, outputs=tuple(outputs), secrets=secrets, ssh=ssh,
        metadata_file=os.path.join(workdir, "metadata.json") if request.get("metadata_file") else None,
        build_contexts=tuple(f"{k}={v}" for k, v in named.items()),
        **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    return options, returned


def _apply_limits(fields: dict, limits: dict, parse_memory) -> None:
    """The server's per-build defaults, and its caps on what a client may ask."""
    from builder.errors import BuildError

    cap = limits.get("memory")
    if cap:
        asked = fields.get("memory")
        if asked in (None, ""):
            fields["memory"] = cap
        elif parse_memory(asked) > cap:
            raise BuildError(f"--memory {asked}: over the server's limit of {cap >> 20} MiB")
    pids = limits.get("pids")
    if pids:
        asked = fields.get("pids_limit")
        if asked is None or asked <= 0 or asked > pids:
            fields["pids_limit"] = pids
    if limits.get("cpu_shares") and fields.get("cpu_shares") is None:
        fields["cpu_shares"] = limits["cpu_shares"]
    jobs = limits.get("jobs")
    if jobs and (fields.get("jobs") is None or fields["jobs"] > jobs):
        fields["jobs"] = jobs


# ---- an image command ----------------------------------------------------------------------------

# The image commands a client may run through the server, and the flags that would name a file on
# the server's disk (the client turns those into stdin and stdout).
COMMANDS = ("images", "inspect", "history", "tag", "rmi", "push", "pull", "save", "load", "prune", "df",
            "login", "logout")
_FILE_FLAGS = {"save": ("-o", "--output"), "load": ("-i", "--input")}


def check_command(name: str, argv: list[str]) -> str | None:
    """Why ARGV cannot run on the server, or None."""
    if name not in COMMANDS:
        return f"{name} cannot run through a server"
    for word in argv:
        if word == "--" or word.startswith("--root"):
            return f"{word}: not accepted through a server"
        for flag in _FILE_FLAGS.get(name, ()):
            if word == flag or word.startswith(flag + "=") or (len(flag) == 2 and word.startswith(flag)):
                return f"{flag}: the client reads and writes files, not the server"
    return None


def command_target(run_cli, name: str, argv: list[str], root: str):
    def run(fd: int) -> int:
        os.close(fd)
        return run_cli([name, *argv, "--root", root])
    return run


def clean_workdir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
