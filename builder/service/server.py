"""The server: HTTP/1.1 on a unix socket and/or TLS TCP, one thread per connection, one forked
worker per build or command (worker.py), the routing table every request goes through.

Every request is authenticated before it is routed, whatever its path: an unknown path gets 401
too when the caller is nobody, and 404 only once they are somebody. ROUTES is the whole API; the
test that sends unauthenticated requests enumerates it.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import socketserver
import stat
import sys
import tarfile
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler

from builder.plumbing.records import dataclass, field
from builder.service import protocol, worker
from builder.service.auth import PamAuthenticator, RateLimiter, Tokens, User, basic_credentials, bearer_token, peer_user
from builder.service.queue import Cancelled, FairQueue

# (method, path) -> the Service method that answers it.
ROUTES = {
    ("GET", f"{protocol.API}/ping"): "ping",
    ("POST", f"{protocol.API}/login"): "login",
    ("POST", f"{protocol.API}/logout"): "logout",
    ("POST", f"{protocol.API}/build"): "build",
    ("POST", f"{protocol.API}/command"): "command",
}
METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS")
CANCEL_GRACE = 10.0   # seconds a SIGINTed worker has to clean up before SIGKILL


@dataclass
class Config:
    root: str
    listen: tuple[str, ...] = (protocol.DEFAULT_SOCKET,)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    max_builds: int = 2
    pam_service: str = "build-image"
    socket_mode: int = 0o660
    socket_group: str | None = None
    login_attempts: int = 5          # failed logins per user and per address a minute
    isolate_cache: bool = False      # each user's own build cache (records, plans), not the shared one
    limits: dict = field(default_factory=dict)   # memory (bytes), pids, cpu_shares, jobs


class Service:
    def __init__(self, config: Config, run_cli):
        self.config = config
        self.root = os.path.abspath(config.root)
        self.run_cli = run_cli
        self.queue = FairQueue(config.max_builds)
        self.tokens = Tokens(path=os.path.join(self.root, "service", "tokens.json"))
        self.limiter = RateLimiter(config.login_attempts, 60.0)
        self._pam: PamAuthenticator | None = None
        self.stopping = threading.Event()
        self.sockets: set = set()
        self.workers: set = set()
        self.servers: list = []
        self.lock = threading.Lock()
        self.tmp_dir = os.path.join(self.root, "service", "tmp")
        # Whatever a killed server left here (half-received contexts, outputs) is garbage now.
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        os.makedirs(self.tmp_dir, mode=0o700)

    # ---- authentication ---------------------------------------------------------------------

    @property
    def pam(self) -> PamAuthenticator:
        if self._pam is None:
            self._pam = PamAuthenticator(self.config.pam_service)
        return self._pam

    def authenticate(self, handler) -> tuple[User | None, int]:
        """(the user, 0) or (None, the status to answer: 401, or 429 past the login limit)."""
        if handler.server.kind == "unix":
            return peer_user(handler.connection), 401
        header = handler.headers.get("Authorization", "")
        token = bearer_token(header)
        if token is not None:
            return self.tokens.user(token), 401
        creds = basic_credentials(header)
        if creds is None:
            return None, 401
        name, password = creds
        keys = (f"user:{name}", f"address:{handler.client_address[0]}")
        if self.limiter.blocked(*keys):
            return None, 429
        user = self.pam.check(name, password)
        if user is None:
            self.limiter.failed(*keys)
            return None, 401
        return user, 0

    # ---- endpoints --------------------------------------------------------------------------

    def ping(self, h, user: User) -> None:
        from builder.version import __version__

        h.reply(200, {"version": __version__, "user": user.name})

    def login(self, h, user: User) -> None:
        token, expires = self.tokens.issue(user)
        h.reply(200, {"token": token, "expires": expires, "user": user.name})

    def logout(self, h, user: User) -> None:
        token = bearer_token(h.headers.get("Authorization", ""))
        if token:
            self.tokens.revoke(token)
        h.reply(200, {})

    def build(self, h, user: User) -> None:
        body = h.body()
        request = _request_document(body)
        request.pop("ssh_paths", None)   # the server's to say, never the client's
        ssh_ids = request.get("ssh") or []
        if not (isinstance(ssh_ids, list) and len(ssh_ids) <= 16 and len(set(ssh_ids)) == len(ssh_ids)
                and all(isinstance(i, str) and i for i in ssh_ids)):
            raise RequestError("ssh must be a list of distinct ids")
        h.wants_events = request.get("events", True) is not False
        workdir = tempfile.mkdtemp(prefix="build-", dir=self.tmp_dir)
        relay = code = None
        try:
            try:
                _receive_context(body, request, workdir, more=bool(ssh_ids))
            except (protocol.ProtocolError, tarfile.TarError, OSError, ValueError) as error:
                h.reply(400, {"message": f"context upload failed: {error}"})
                return
            h.start_stream()
            if ssh_ids:
                from builder.service.sshrelay import AgentRelay

                relay = AgentRelay(os.path.join(workdir, "ssh"), ssh_ids, h.send_frame)
                request = {**request, "ssh_paths": relay.paths}
                h.full_duplex(body)
                h.read_upstream(body, relay)
            answer = _Collected(h)
            if worker.answer_if_cached(answer, request, workdir, self.root, self.config.limits,
                                       user.namespace, self.config.isolate_cache):
                answer.flush()
                code = 0
                return
            try:
                self._wait_for_slot(h, user)
            except Cancelled:
                return
            try:
                target = worker.build_target(request, workdir, self.root, self.config.limits)
                code = self._run(h, user, target, os.open(os.devnull, os.O_RDONLY), relay)
            finally:
                self.queue.release()
        finally:
            if relay is not None:
                relay.close()
            shutil.rmtree(workdir, ignore_errors=True)
            if code is not None:
                h.send_frame(protocol.message("exit", code=code))   # last: nothing of the build is left

    def _wait_for_slot(self, h, user: User) -> None:
        """A --max-builds slot; a build that has to wait shows it as a step of its own."""
        from builder import events

        waits = self.queue.running >= self.queue.slots and h.wants_events
        if waits:
            h.send_frame(protocol.message("event", **protocol.encode_event(
                events.Started("queue", f"[internal] waiting for a build slot ({self.queue.slots} running)"))))
        self.queue.acquire(user.namespace, cancelled=lambda: h.gone() or self.stopping.is_set())
        if waits:
            h.send_frame(protocol.message("event", **protocol.encode_event(events.Finished("queue"))))

    def command(self, h, user: User) -> None:
        body = h.body()
        request = _request_document(body)
        name, argv = request.get("command", ""), request.get("argv", [])
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            h.reply(400, {"message": "argv must be a list of strings"})
            return
        why = worker.check_command(name, argv)
        if why is not None:
            h.reply(400, {"message": why})
            return
        with tempfile.TemporaryFile(dir=self.tmp_dir) as stdin:
            try:
                for chunk in iter(lambda: body.read(1 << 20), b""):
                    stdin.write(chunk)
            except protocol.ProtocolError as error:
                h.reply(400, {"message": f"upload failed: {error}"})
                return
            stdin.flush()
            stdin.seek(0)
            h.start_stream()
            code = self._run(h, user, worker.command_target(self.run_cli, name, argv, self.root),
                             os.dup(stdin.fileno()))
        h.send_frame(protocol.message("exit", code=code))

    # ---- workers ----------------------------------------------------------------------------

    def _user_env(self, user: User) -> dict[str, str]:
        docker = os.path.join(self.root, "namespaces", user.namespace, "docker")
        os.makedirs(docker, mode=0o700, exist_ok=True)
        # Git (URL contexts) sees none of the server's own configuration or credential helpers.
        env = {"BUILD_IMAGE_NAMESPACE": user.namespace, "DOCKER_CONFIG": docker,
               "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
        if self.config.isolate_cache:
            env["BUILD_IMAGE_ISOLATE_CACHE"] = "1"
        return env

    def _close_in_child(self) -> None:
        for server in self.servers:
            server.socket.close()
        for sock in list(self.sockets):
            try:
                sock.close()
            except OSError:
                pass

    def _run(self, h, user: User, target, stdin_fd: int, relay=None) -> int:
        """Fork the worker for TARGET and forward what it says; its exit code."""
        try:
            child = worker.spawn(target, stdin_fd=stdin_fd, env=self._user_env(user),
                                 close_in_child=self._close_in_child)
        finally:
            os.close(stdin_fd)
        with self.lock:
            self.workers.add(child)
        try:
            code = self._pump(h, child, relay)
        finally:
            with self.lock:
                self.workers.discard(child)
        return code

    def _pump(self, h, child: worker.Worker, relay=None) -> int:
        """Forward the worker's frames, stdout and stderr to the client until the worker ends (and
        the RUNs' ssh-agent connections, with RELAY); SIGINT the worker when the client goes away
        or the server stops, SIGKILL it after CANCEL_GRACE."""
        channels = {child.messages: None, child.stdout: protocol.STDOUT, child.stderr: protocol.STDERR}
        pending = b""
        interrupted = None
        client = h.connection
        while channels:
            # While a thread reads the client's ssh frames, that thread sees the client go.
            watch_client = not h.client_lost and not h.reading_upstream.is_set()
            agents = relay.sockets() if relay is not None else []
            watch = list(channels) + ([client] if watch_client else []) + agents
            ready, _, _ = select.select(watch, [], [], 0.25)
            if client in ready:
                h.client_lost = True
            for fd in ready:
                if fd is client:
                    continue
                if not isinstance(fd, int):
                    relay.ready(fd)
                    continue
                data = os.read(fd, 1 << 16)
                if not data:
                    os.close(fd)
                    del channels[fd]
                elif channels[fd] is None:
                    pending += data
                    whole, pending = _split_frames(pending)
                    if whole:
                        h.send_raw(whole)
                else:
                    h.send_frame(protocol.frame(channels[fd], data))
            if interrupted is None and (h.client_lost or self.stopping.is_set()):
                child.interrupt()
                interrupted = time.monotonic()
            elif interrupted is not None and time.monotonic() - interrupted > CANCEL_GRACE:
                child.kill()
        _, status = os.waitpid(child.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code < 0:
            died = signal.Signals(-code).name
            if -code != signal.SIGINT:
                h.send_frame(protocol.message("error", message=f"the build worker died ({died})"))
            return 130 if -code == signal.SIGINT else 1
        return code

    # ---- running and stopping ---------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM: stop accepting, cancel every running worker (their builds clean up as after
        Ctrl-C), wait for the connections to finish."""
        self.stopping.set()
        with self.lock:
            running = list(self.workers)
        for child in running:
            child.interrupt()


class _Collected:
    """worker.MessageWriter's two methods for an answer made in-thread: gathered, so that a small
    one (a cached build's events and result) goes to the client in one write; past a MiB (an
    output's bytes) it streams."""

    LIMIT = 1 << 20

    def __init__(self, handler):
        self.handler, self.frames, self.size = handler, [], 0

    def write(self, data: bytes) -> None:
        self.frames.append(bytes(data))
        self.size += len(data)
        if self.size >= self.LIMIT:
            self.flush()

    def send(self, kind: str, **fields) -> None:
        self.write(protocol.message(kind, **fields))

    def flush(self) -> None:
        if self.frames:
            self.handler.send_raw(b"".join(self.frames))
        self.frames, self.size = [], 0


def _split_frames(data: bytes) -> tuple[bytes, bytes]:
    """(the whole frames at the start of DATA, the rest)."""
    end = 0
    while len(data) - end >= 5:
        size = int.from_bytes(data[end:end + 4], "big")
        if len(data) - end - 5 < size:
            break
        end += 5 + size
    return data[:end], data[end:]


def _request_document(body) -> dict:
    line = body.readline(protocol.MAX_REQUEST_LINE)
    try:
        doc = json.loads(line or b"{}")
    except ValueError:
        raise RequestError("the request document is not JSON") from None
    if not isinstance(doc, dict):
        raise RequestError("the request document is not a JSON object")
    return doc


def _receive_context(body, request: dict, workdir: str, more: bool = False) -> None:
    """The context tar (or, for `-`, the raw stdin) and a Dockerfile sent beside it, into WORKDIR.
    With MORE (ssh frames follow in the body), the tar is `context_size` bytes long."""
    import base64

    if request.get("dockerfile_name"):
        directory = os.path.join(workdir, "dockerfile")
        os.makedirs(directory)
        name = os.path.basename(request["dockerfile_name"]) or "Dockerfile"
        with open(os.path.join(directory, name), "wb") as f:
            f.write(base64.b64decode(request.get("dockerfile", "")))
        if request.get("dockerignore") is not None:
            with open(os.path.join(directory, name + ".dockerignore"), "wb") as f:
                f.write(base64.b64decode(request["dockerignore"]))
    named = _named_contexts(request)
    sized = more or bool(named)   # more parts follow the main one: each comes with its size
    if not request.get("context_url"):   # a URL: the worker fetches it
        source = body
        if sized:
            size = request.get("context_size")
            if not isinstance(size, int) or size < 0:
                raise ValueError("a request with named contexts or ssh needs context_size")
            source = _Limited(body, size)
        if request.get("stdin_context"):
            with open(os.path.join(workdir, "stdin"), "wb") as f:
                for chunk in iter(lambda: source.read(1 << 20), b""):
                    f.write(chunk)
            if not sized:
                return
        else:
            _extract(source, os.path.join(workdir, "context"), sized)
    for index, (_name, size) in enumerate(named):
        _extract(_Limited(body, size), os.path.join(workdir, "named", str(index)), True)
    if more:
        return   # the client's ssh frames follow
    body.read(1 << 20)  # the tar's end blocks: the body must end cleanly too
    if body.read(1):
        raise ValueError("bytes after the end of the context tar")


def _named_contexts(request: dict) -> list[tuple[str, int]]:
    """The directory --build-contexts the client sends after the main context: (name, tar size)."""
    named = request.get("named_contexts") or []
    if not (isinstance(named, list) and len(named) <= 64 and all(
            isinstance(n, dict) and isinstance(n.get("name"), str) and n["name"] and "=" not in n["name"]
            and isinstance(n.get("size"), int) and n["size"] >= 0 for n in named)):
        raise ValueError("named_contexts must be a list of {name, size}")
    names = [n["name"] for n in named]
    if len(set(names)) != len(names) or set(names) & set(request.get("build_contexts") or {}):
        raise ValueError("a named context is given twice")
    return [(n["name"], n["size"]) for n in named]


def _extract(source, directory: str, sized: bool) -> None:
    os.makedirs(directory)
    with tarfile.open(fileobj=source, mode="r|") as tf:
        tf.extractall(directory, filter=protocol.safe_tar_filter)
    if sized:
        while source.read(1 << 16):   # the tar's end blocks
            pass


class _Limited:
    """The first SIZE bytes of a body; fewer is an upload cut off."""

    def __init__(self, body, size: int):
        self.body, self.left = body, size

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        data = self.body.read(min(self.left, 1 << 20 if size is None or size < 0 else size))
        if not data:
            raise protocol.ProtocolError("the upload was cut off in the context")
        self.left -= len(data)
        return data


class RequestError(Exception):
    pass


class Body:
    """A request body: chunked (what build-image's client sends) or with a Content-Length.
    Ending before its end is a ProtocolError: an upload cut off."""

    def __init__(self, rfile, headers):
        self.rfile = rfile
        self.chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self.left = int(headers.get("Content-Length") or 0) if not self.chunked else 0
        self.chunk_left = 0
        self.done = not self.chunked and self.left == 0
        self.received = 0
        self._buffer = b""

    def _raw(self, size: int) -> bytes:
        if self.done:
            return b""
        if not self.chunked:
            data = self.rfile.read(min(size, self.left))
            if not data:
                raise protocol.ProtocolError(f"the upload was cut off after {self.received} bytes")
            self.left -= len(data)
            self.done = self.left == 0
            return data
        if self.chunk_left == 0:
            line = self.rfile.readline(1024)
            if not line:
                raise protocol.ProtocolError(f"the upload was cut off after {self.received} bytes")
            try:
                self.chunk_left = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise protocol.ProtocolError("a malformed chunk in the upload") from None
            if self.chunk_left == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                self.done = True
                return b""
        data = self.rfile.read(min(size, self.chunk_left))
        if not data:
            raise protocol.ProtocolError(f"the upload was cut off after {self.received} bytes")
        self.chunk_left -= len(data)
        if self.chunk_left == 0:
            self.rfile.readline(16)
        return data

    def read(self, size: int = -1) -> bytes:
        size = 1 << 20 if size is None or size < 0 else size
        if self._buffer:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        else:
            data = self._raw(size)
        self.received += len(data)
        return data

    def readline(self, limit: int) -> bytes:
        line = b""
        while not line.endswith(b"\n"):
            data = self.read(min(65536, limit - len(line)) or 1)
            if not data:
                break
            newline = data.find(b"\n")
            if newline >= 0:
                self._buffer = data[newline + 1:] + self._buffer
                self.received -= len(data) - newline - 1
                data = data[:newline + 1]
            line += data
            if len(line) >= limit:
                raise RequestError("the request document is too long")
        return line


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "build-image"
    sys_version = ""
    timeout = 60   # seconds a client may stay silent while it sends its request (none once answered)

    def setup(self) -> None:
        self.client_lost = False
        self.reading_upstream = threading.Event()
        self.streaming = False
        self.user: User | None = None
        self.status = 0
        service: Service = self.server.service
        if self.server.tls is not None:
            self.request.settimeout(30)
            self.request = self.server.tls.wrap_socket(self.request, server_side=True)
            self.request.settimeout(None)
        with service.lock:
            service.sockets.add(self.request)
        super().setup()

    def full_duplex(self, body: Body) -> None:
        """From here one thread reads BODY while others write: over TLS, through one lock
        (duplex.py); a unix socket needs nothing."""
        if self.server.tls is None:
            return
        from builder.service.duplex import DuplexReader, DuplexTLS, DuplexWriter

        self.duplex = DuplexTLS(self.connection)
        body.rfile = DuplexReader(self.duplex)
        self.wfile = DuplexWriter(self.duplex)

    def finish(self) -> None:
        try:
            super().finish()
            if getattr(self, "duplex", None) is not None:
                self.duplex.blocking()
        finally:
            with self.server.service.lock:
                self.server.service.sockets.discard(self.request)

    def _dispatch(self) -> None:
        service: Service = self.server.service
        started = time.monotonic()
        self.close_connection = True
        path = self.path.split("?", 1)[0]
        try:
            user, status = service.authenticate(self)
            self.user = user
            if user is None:
                self.reply(status, {"message": "unauthorized" if status == 401 else "too many failed logins"})
                return
            route = ROUTES.get((self.command, path))
            if route is None:
                self.reply(404 if path not in {p for _, p in ROUTES} else 405, {"message": "no such endpoint"})
                return
            getattr(service, route)(self, user)
        except RequestError as error:
            self.reply(400, {"message": str(error)})
        except (BrokenPipeError, ConnectionError, TimeoutError):
            self.client_lost = True
        finally:
            who = self.user.name if self.user else "-"
            where = self.client_address[0] if self.server.kind == "tcp" else "unix"
            print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {where} {who} {self.command} {path} "
                  f"{self.status} {time.monotonic() - started:.3f}s", file=sys.stderr, flush=True)

    for _method in METHODS:
        locals()[f"do_{_method}"] = _dispatch
    del _method

    def log_message(self, format, *args) -> None:  # one line per request is _dispatch's
        pass

    def body(self) -> Body:
        self._body = Body(self.rfile, self.headers)
        return self._body

    def _drain(self, limit: int = 1 << 20) -> None:
        """Read what is left of a small request body before answering without it: closing a
        socket with unread bytes resets the connection, and the client would lose the answer."""
        body = getattr(self, "_body", None) or Body(self.rfile, self.headers)
        self._body = body
        try:
            self.connection.settimeout(2)
            while not body.done and body.received < limit and body.read(65536):
                pass
        except (OSError, protocol.ProtocolError, ValueError):
            pass
        finally:
            self.connection.settimeout(self.timeout)

    def reply(self, status: int, doc: dict) -> None:
        self._drain()
        data = json.dumps(doc).encode()
        self.status = status
        self.send_response(status)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="build-image"')
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def start_stream(self) -> None:
        # From here the client only reads (or sends ssh frames, at any pace): no more timeout.
        self.connection.settimeout(None)
        self.status = 200
        self.streaming = True
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.build-image.frames")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()

    def send_raw(self, data: bytes) -> None:
        if self.client_lost:
            return
        try:
            self.wfile.write(data)
        except OSError:
            self.client_lost = True

    send_frame = send_raw

    def read_upstream(self, body: Body, relay) -> None:
        """A thread reads the rest of the request body: the client's ssh frames, for RELAY; the
        body ending before its end means the client went away."""

        def run() -> None:
            reader = protocol.FrameReader(body.read)
            try:
                while (item := reader.next()) is not None:
                    relay.from_client(*item)
            except (protocol.ProtocolError, OSError, ValueError):
                self.client_lost = True
            finally:
                self.reading_upstream.clear()

        self.reading_upstream.set()
        threading.Thread(target=run, name="ssh-upstream", daemon=True).start()

    def gone(self) -> bool:
        """The client closed its end (it sends nothing after its request)."""
        if self.client_lost:
            return True
        if self.reading_upstream.is_set():
            return False
        ready, _, _ = select.select([self.connection], [], [], 0)
        self.client_lost = bool(ready)
        return self.client_lost


class _Server(socketserver.ThreadingMixIn):
    daemon_threads = False
    block_on_close = True

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        print(f"connection error: {type(error).__name__}: {error}", file=sys.stderr, flush=True)


class UnixServer(_Server, socketserver.UnixStreamServer):
    kind = "unix"
    tls = None

    def __init__(self, path: str, service: Service, mode: int, group: str | None, inherited=None):
        self.service, self.path, self.mode, self.group = service, path, mode, group
        self.inherited = inherited is not None
        super().__init__(path, Handler, bind_and_activate=inherited is None)
        if inherited is not None:   # systemd's socket: bound, listening, mode and group set by the unit
            self.socket.close()
            self.socket = inherited

    def server_bind(self) -> None:
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)   # left by a server that was killed
        except FileNotFoundError:
            pass
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        old = os.umask(0o177)  # nobody can connect before the mode and group are set
        try:
            super().server_bind()
        finally:
            os.umask(old)
        if self.group is not None:
            import grp

            os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
        os.chmod(self.path, self.mode)

    def get_request(self):
        sock, _ = self.socket.accept()
        return sock, ("unix", 0)

    def server_close(self) -> None:
        super().server_close()
        if self.inherited:
            return   # systemd's to remove
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class TLSHandler(Handler):
    # Unbuffered: a body read ahead into a buffer could not be handed to a DuplexReader later.
    rbufsize = 0


class TLSServer(_Server, socketserver.TCPServer):
    kind = "tcp"
    allow_reuse_address = True

    def __init__(self, host: str, port: int, service: Service, tls, inherited=None):
        self.service, self.tls = service, tls
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), TLSHandler, bind_and_activate=inherited is None)
        if inherited is not None:
            self.socket.close()
            self.socket = inherited
            self.server_address = inherited.getsockname()


def systemd_sockets() -> list[socket.socket]:
    """The listening sockets systemd passed (socket activation: $LISTEN_FDS from fd 3 on, for
    this very process); with them, --listen is not used."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS") or 0)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)   # not for the workers
    return [socket.socket(fileno=fd) for fd in range(3, 3 + count)]


def tls_context(config: Config):
    import ssl

    if not (config.tls_cert and config.tls_key):
        raise ValueError("a tcp:// listener needs --tls-cert and --tls-key (the service speaks only TLS over TCP)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    if config.tls_client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(config.tls_client_ca)
    return context


def serve(config: Config, run_cli, ready=None) -> int:
    """Run until SIGTERM or SIGINT; returns the exit code. READY(addresses) is called once listening."""
    _preload()
    service = Service(config, run_cli)
    tls = None
    addresses = []
    for sock in systemd_sockets():
        if sock.family == socket.AF_UNIX:
            path = sock.getsockname()
            server = UnixServer(path, service, config.socket_mode, config.socket_group, inherited=sock)
            addresses.append(f"unix://{path}")
        else:
            tls = tls or tls_context(config)
            host, port = sock.getsockname()[:2]
            server = TLSServer(host, port, service, tls, inherited=sock)
            addresses.append(f"tcp://{host}:{port}")
        service.servers.append(server)
    for address in config.listen if not service.servers else ():
        kind, host, port = protocol.parse_address(address)
        if kind == "unix":
            server = UnixServer(host, service, config.socket_mode, config.socket_group)
            addresses.append(f"unix://{host}")
        else:
            tls = tls or tls_context(config)
            server = TLSServer(host, port, service, tls)
            addresses.append(f"tcp://{host}:{server.server_address[1]}")
        service.servers.append(server)
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
               for s in service.servers]
    for thread in threads:
        thread.start()
    for address in addresses:
        print(f"listening on {address}", file=sys.stderr, flush=True)
    if ready is not None:
        ready(addresses)
    while not stop.wait(1.0):
        pass
    print("stopping: cancelling running builds", file=sys.stderr, flush=True)
    service.stop()
    for server in service.servers:
        server.shutdown()
        server.server_close()   # waits for the connections in flight, whose workers are ending
    shutil.rmtree(service.tmp_dir, ignore_errors=True)
    print("stopped", file=sys.stderr, flush=True)
    return 0


def _preload() -> None:
    """Import what builds use now, once, so no request pays for it (the point of a warm server)."""
    import builder.convert  # noqa: F401
    import builder.executor.container  # noqa: F401
    import builder.grammar  # noqa: F401
    import builder.image.names  # noqa: F401
    import builder.image.platform_spec  # noqa: F401
    import builder.lifecycle.gc  # noqa: F401
    import builder.lifecycle.image_archive  # noqa: F401
    import builder.pipeline  # noqa: F401
    import builder.plan_cache  # noqa: F401  (a cached build's first question; the pipeline imports it lazily)
    import builder.registry.client  # noqa: F401
    import builder.remote_context  # noqa: F401
    import builder.snapshot.backed  # noqa: F401  (the store's blobs: built layers are their snapshots)
    import builder.solver.solver  # noqa: F401
    import builder.stdin_context  # noqa: F401
