"""The client of `build-image serve`: the same commands, run by a server (`--server ADDR` or
$BUILD_IMAGE_HOST). Arguments are parsed here with the local parsers (so usage errors are the
same), the context goes up as a tar with .dockerignore applied here, progress comes back as events
that the local progress views draw, errors come back as the fields the local error lines print,
and outputs with a dest are written here. This path imports nothing heavy: the server has it all.

    build-image login-server tcp://HOST:PORT -u USER [--password-stdin]   a token, 0600 in ~/.config
    build-image logout-server tcp://HOST:PORT
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import time

from builder.cli.runner import run_command
from builder.errors import BuildError
from builder.service import protocol

REMOTE_COMMANDS = ("build", "images", "inspect", "history", "tag", "rmi", "push", "pull", "save", "load",
                   "prune", "df", "login", "logout")


# ---- where the server is and how to prove who we are ---------------------------------------------

def _tokens_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "build-image", "server-tokens.json")


def _read_tokens() -> dict:
    try:
        with open(_tokens_path()) as f:
            doc = json.load(f)
    except (FileNotFoundError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write_tokens(tokens: dict) -> None:
    path = _tokens_path()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    temp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(tokens, f, indent=2, sort_keys=True)
    os.replace(temp, path)


def _authorization(address: str) -> str | None:
    entry = _read_tokens().get(address)
    if isinstance(entry, dict) and entry.get("expires", 0) > time.time() and entry.get("token"):
        return f"Bearer {entry['token']}"
    user, password = os.environ.get("BUILD_IMAGE_USERNAME"), os.environ.get("BUILD_IMAGE_PASSWORD")
    if user and password is not None:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return None


# ---- HTTP/1.1, just what the protocol needs --------------------------------------------------------

class Connection:
    def __init__(self, address: str, tls_ca: str | None = None):
        try:
            kind, host, port = protocol.parse_address(address)
        except ValueError as error:
            raise BuildError(str(error)) from None
        self.address, self.kind, self.host = address, kind, host
        try:
            if kind == "unix":
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(host)
            else:
                import ssl

                raw = socket.create_connection((host, port), timeout=30)
                context = ssl.create_default_context()
                if tls_ca:
                    context.load_verify_locations(tls_ca)
                cert, key = os.environ.get("BUILD_IMAGE_TLS_CERT"), os.environ.get("BUILD_IMAGE_TLS_KEY")
                if cert and key:
                    context.load_cert_chain(cert, key)
                try:
                    self.sock = context.wrap_socket(raw, server_hostname=host)
                except ssl.SSLError as error:
                    raw.close()
                    raise BuildError(f"cannot connect to {address}: TLS: {error.reason or error}") from None
                self.sock.settimeout(None)
        except OSError as error:
            raise BuildError(f"cannot connect to the build server at {address}: {error.strerror or error}") from None
        self._buffer = b""

    def close(self) -> None:
        self.sock.close()

    def full_duplex(self) -> None:
        """From here the agents' threads send while this one reads: over TLS, through one lock."""
        if self.kind == "tcp":
            from builder.service.duplex import DuplexTLS

            self.sock = DuplexTLS(self.sock)

    def send(self, data: bytes) -> bool:
        """False once the server has stopped reading (it answers anyway: read the response)."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def request(self, method: str, path: str, document: dict | None = None, body=None,
                authorization: str | None = None, finish: bool = True) -> tuple[int, dict]:
        """Send a request whose body is DOCUMENT's JSON line and then BODY(write) streams the rest;
        returns the status and headers. Unless FINISH, the body stays open: `self.upstream`."""
        host = "localhost" if self.kind == "unix" else self.host
        head = [f"{method} {path} HTTP/1.1", f"Host: {host}", "User-Agent: build-image", "Connection: close"]
        if authorization:
            head.append(f"Authorization: {authorization}")
        if document is not None:
            head.append("Transfer-Encoding: chunked")
        ok = self.send(("\r\n".join(head) + "\r\n\r\n").encode())
        if document is not None and ok:
            writer = ChunkedWriter(self)
            writer.write(json.dumps(document).encode() + b"\n")
            if body is not None:
                body(writer)
            if finish:
                writer.close()
            else:
                writer.flush()
                self.upstream = writer
        return self._response_head()

    def _response_head(self) -> tuple[int, dict]:
        while b"\r\n\r\n" not in self._buffer:
            data = self._recv(65536)
            if not data:
                raise BuildError(f"the build server at {self.address} closed the connection")
            self._buffer += data
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("iso-8859-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def read(self, size: int) -> bytes:
        if self._buffer:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
            return data
        return self._recv(size)

    def _recv(self, size: int) -> bytes:
        try:
            return self.sock.recv(size)
        except OSError as error:   # a reset, a TLS alert (a client certificate the server wants)
            reason = getattr(error, "reason", None) or error.strerror or error
            raise BuildError(f"the build server at {self.address} ended the connection: {reason}") from None

    def read_json(self, headers: dict) -> dict:
        length = int(headers.get("content-length") or 0)
        data = b""
        while len(data) < length:
            chunk = self.read(length - len(data))
            if not chunk:
                break
            data += chunk
        try:
            doc = json.loads(data or b"{}")
        except ValueError:
            doc = {}
        return doc if isinstance(doc, dict) else {}

    def check(self, status: int, headers: dict) -> None:
        """A status other than 200 as one error line."""
        if status == 200:
            return
        doc = self.read_json(headers)
        if status == 401:
            hint = f"; run build-image login-server {self.address}" if self.kind == "tcp" else ""
            raise BuildError(f"{self.address}: unauthorized{hint}")
        if status == 429:
            raise BuildError(f"{self.address}: too many failed logins; try again later")
        raise BuildError(f"{self.address}: {doc.get('message') or f'HTTP {status}'}")


class ChunkedWriter:
    """A file-like writer sending `Transfer-Encoding: chunked`, 256 KiB a chunk."""

    def __init__(self, connection: Connection):
        self.connection, self.pending, self.open = connection, [], True

    def write(self, data: bytes) -> int:
        self.pending.append(bytes(data))
        if sum(map(len, self.pending)) >= 1 << 18:
            self.flush()
        return len(data)

    def flush(self) -> None:
        data = b"".join(self.pending)
        self.pending = []
        if data and self.open:
            self.open = self.connection.send(b"%x\r\n" % len(data) + data + b"\r\n")

    def close(self) -> None:
        self.flush()
        if self.open:
            self.open = self.connection.send(b"0\r\n\r\n")


# ---- build ------------------------------------------------------------------------------------

def remote_build(address: str, tls_ca: str | None, argv: list[str]) -> int:
    from builder.cli import build_command as local

    parser = local._build_parser()
    ns = parser.parse_args(argv)
    if ns.progress not in local.PROGRESS_MODES:
        parser.error(f'invalid progress mode "{ns.progress}" in BUILDKIT_PROGRESS '
                     f"(use {', '.join(local.PROGRESS_MODES)})")
    for flag, given in (("--root", ns.root), ("--verify-reproducible", ns.verify_reproducible)):
        if given:
            parser.error(f"{flag} cannot be used with --server (it is a local build's)")
    quiet = ns.quiet or ns.progress in ("quiet", "none")

    def run() -> int:
        options = local._options(ns)
        progress = (lambda event: None) if quiet else local.make_progress(ns.progress)
        try:
            result = _build(address, tls_ca, options, progress)
        finally:
            close = getattr(progress, "close", None)
            if close is not None:
                close()
        if options.iidfile:
            from builder.plumbing.files import write_atomically

            write_atomically(options.iidfile, result.image_id.encode())
        return local._report_build(result, ns.quiet or ns.progress == "quiet")

    return run_command(run, ns.debug)


# URL contexts the server fetches itself: anonymous ones (ssh:// and git@ would be the server's keys).
SERVER_FETCHES = ("http://", "https://", "git://")

_FORWARDED = ("tags", "target", "no_cache", "no_cache_filter", "pull", "annotations", "jobs", "platform",
              "insecure_registries", "network", "add_hosts", "allow", "shm_size", "ulimits", "security_opts",
              "memory", "pids_limit", "cpu_shares")


def _request(options) -> dict:
    from builder.session import SecretStore

    doc = {name: list(v) if isinstance(v, tuple) else v for name in _FORWARDED
           for v in [getattr(options, name)]}
    doc["build_args"] = dict(options.build_args)
    doc["labels"] = dict(options.labels)
    doc["outputs"] = [",".join([f"type={o.type}", *(f"{k}={v}" for k, v in o.attrs)]) for o in options.outputs]
    doc["metadata_file"] = bool(options.metadata_file)
    store = SecretStore(options.secrets)  # read here: the server never sees the files
    doc["secrets"] = [{"id": s.id, "value": base64.b64encode(store.get(s.id) or b"").decode()}
                      for s in options.secrets]
    named, directories = {}, {}
    for text in options.build_contexts:
        name, sep, value = text.partition("=")
        if not sep or not name or not value:
            raise BuildError(f'invalid --build-context "{text}": use NAME=DIR or NAME=docker-image://REF')
        if value.startswith(("docker-image://", *SERVER_FETCHES)):
            named[name] = value                  # the server resolves or fetches it
        elif "://" in value or value.startswith("git@"):
            raise BuildError(f"--build-context {name}: through a server a named context is a directory here, "
                             f"docker-image://REF or a {', '.join(SERVER_FETCHES)} URL")
        elif not os.path.isdir(value):
            raise BuildError(f"--build-context {name}: {value} is not a directory")
        else:
            directories[name] = value            # sent as a tar after the main context
    doc["build_contexts"] = named
    return doc, directories


def _build(address: str, tls_ca: str | None, options, progress):
    from builder.pipeline import BuildResult

    STDIN = "-"  # as builder.stdin_context names it
    request, directories = _request(options)
    if "://" in options.context or options.context.startswith("git@"):
        if not options.context.startswith(SERVER_FETCHES):
            raise BuildError(f"{options.context}: the server fetches only {', '.join(SERVER_FETCHES)} contexts "
                             "(it has no credentials of yours); clone or fetch it here and send the directory")
        request["context_url"] = options.context
    elif options.context == STDIN:
        request["stdin_context"] = True
    elif not os.path.isdir(options.context):
        raise BuildError(f"unable to prepare context: path {options.context!r} not found")
    if options.dockerfile:
        if options.dockerfile == STDIN:
            data, name = sys.stdin.buffer.read(), "Dockerfile"
        else:
            try:
                with open(options.dockerfile, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise BuildError(f"failed to read dockerfile: open {options.dockerfile}: "
                                 f"{(e.strerror or str(e)).lower()}") from None
            name = os.path.basename(options.dockerfile)
            try:
                with open(options.dockerfile + ".dockerignore", "rb") as f:
                    request["dockerignore"] = base64.b64encode(f.read()).decode()
            except OSError:
                pass
        request["dockerfile_name"] = name
        request["dockerfile"] = base64.b64encode(data).decode()

    # With named directories (more tars follow) or --ssh (the body stays open for the agents'
    # bytes), each part is spooled first, so the server is told where each one ends.
    spooled = []
    if options.ssh:
        request["ssh"] = [s.id for s in options.ssh]
    if options.ssh or directories:
        import tempfile

        if not request.get("context_url"):
            main = tempfile.TemporaryFile()
            if request.get("stdin_context"):
                for chunk in iter(lambda: sys.stdin.buffer.read(1 << 18), b""):
                    main.write(chunk)
            else:
                write_context_tar(options.context, options.dockerfile if options.dockerfile != STDIN else None, main)
            request["context_size"] = main.tell()
            spooled.append(main)
        request["named_contexts"] = []
        for name, directory in directories.items():
            part = tempfile.TemporaryFile()
            write_context_tar(directory, None, part, named=True)
            request["named_contexts"].append({"name": name, "size": part.tell()})
            spooled.append(part)

    def body(writer) -> None:
        if spooled:
            for part in spooled:
                part.seek(0)
                for chunk in iter(lambda: part.read(1 << 18), b""):
                    writer.write(chunk)
                part.close()
        elif request.get("context_url"):
            return
        elif request.get("stdin_context"):
            for chunk in iter(lambda: sys.stdin.buffer.read(1 << 18), b""):
                writer.write(chunk)
        else:
            write_context_tar(options.context, options.dockerfile if options.dockerfile != STDIN else None, writer)

    connection = Connection(address, tls_ca)
    agents = None
    try:
        status, headers = connection.request("POST", f"{protocol.API}/build", request, body,
                                             _authorization(address), finish=not options.ssh)
        connection.check(status, headers)
        if options.ssh:
            from builder.service.sshrelay import ClientAgents

            connection.full_duplex()
            agents = ClientAgents({s.id: s.path for s in options.ssh}, connection.upstream)
        result = failure = None
        outputs = OutputWriters(options)
        for kind, doc, data in _frames(connection):
            if kind in ("ssh-open", "ssh-close", "ssh-data"):
                agents.handle(kind, doc, data)
                continue
            if kind == "event":
                event = protocol.decode_event(doc)
                if event is not None:
                    progress(event)
            elif kind == "data":
                outputs.write(data)
            elif kind in ("stdout", "stderr"):  # the worker's own prints (warnings): to stderr, as local
                sys.stderr.buffer.write(data)
                sys.stderr.buffer.flush()
            elif kind == "output":
                outputs.start(doc["index"], doc["form"])
            elif kind == "output-end":
                outputs.end()
            elif kind == "result":
                result = BuildResult(doc["image_id"], doc["manifest_digest"], tuple(doc["tags"]),
                                     tuple(doc["warnings"]), doc["wrote_stdout"])
            elif kind == "error":  # raised once the server has finished (and cleaned up): at exit
                failure = (BuildError("the build was cancelled on the server") if doc.get("interrupted")
                           else _error(doc))
            elif kind == "exit":
                if failure is not None:
                    raise failure
                if result is None:
                    raise BuildError(f"the build server ended the build without a result (exit {doc.get('code')})")
                return result
        raise failure or BuildError(f"the build server at {address} closed the connection mid-build")
    finally:
        if agents is not None:
            agents.close()
            with agents.lock:
                connection.upstream.close()
        connection.close()


def _error(doc: dict):
    if "message" in doc or "execution" in doc:
        return protocol.decode_error(doc)
    return BuildError("the build server reported an error")


def _frames(connection: Connection):
    """(kind, JSON document, bytes) per frame: kind is a message's type, or stdout/stderr/data."""
    reader = protocol.FrameReader(connection.read)
    while True:
        try:
            item = reader.next()
        except protocol.ProtocolError as error:
            raise BuildError(f"the build server at {connection.address}: {error}") from None
        if item is None:
            return
        channel, payload = item
        if channel == protocol.MESSAGE:
            doc = json.loads(payload)
            yield doc.get("type", ""), doc, b""
        else:
            kinds = {protocol.STDOUT: "stdout", protocol.STDERR: "stderr", protocol.SSH: "ssh-data"}
            yield kinds.get(channel, "data"), {}, payload


def write_context_tar(context: str, dockerfile: str | None, out, named: bool = False) -> None:
    """The context as docker's client sends it: a tar of what .dockerignore leaves, plus the
    Dockerfile and .dockerignore themselves (the server applies the rules again when COPY reads).
    A NAMED context (--build-context NAME=DIR) has its own .dockerignore and no Dockerfile, as buildx's."""
    import tarfile

    from builder.context import BuildContext, read_dockerignore

    visible = BuildContext(context, read_dockerignore(context, dockerfile))
    names = [rel for rel in visible.walk() if rel]
    for always in (".dockerignore", "Dockerfile" if dockerfile is None and not named else None):
        if always and always not in names and os.path.lexists(os.path.join(context, always)):
            names.append(always)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for rel in names:
            tf.add(os.path.join(context, rel), arcname=rel, recursive=False)


class OutputWriters:
    """Writes the outputs the server sends back to their dest here: a file (or stdout for `-`),
    or a directory from a tar stream; and the --metadata-file."""

    def __init__(self, options):
        self.options, self.current, self.form, self.target = options, None, None, None

    def start(self, index, form: str) -> None:
        import tempfile

        if index == "metadata":
            self.target = self.options.metadata_file
        else:
            self.target = self.options.outputs[int(index)].get("dest")
        self.form = form
        if self.target == "-" and form == "file":
            self.current = sys.stdout.buffer
        elif form == "file":
            directory = os.path.dirname(os.path.abspath(self.target))
            self.current = tempfile.NamedTemporaryFile(dir=directory, prefix=".build-image-", delete=False)
        else:
            self.current = tempfile.TemporaryFile()

    def write(self, data: bytes) -> None:
        if self.current is not None:
            self.current.write(data)

    def end(self) -> None:
        current, self.current = self.current, None
        if current is sys.stdout.buffer:
            current.flush()
        elif self.form == "file":
            current.close()
            _publish(current.name, self.target)
        else:
            import tarfile

            current.seek(0)
            os.makedirs(self.target, exist_ok=True)
            with current, tarfile.open(fileobj=current, mode="r|") as tf:
                tf.extractall(self.target, filter=protocol.safe_tar_filter)


def _publish(temp: str, dest: str) -> None:
    """A finished temp file to DEST, with the mode a new file gets here (temp files are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o666 & ~umask)
    os.replace(temp, dest)


# ---- image commands ---------------------------------------------------------------------------------

def remote_command(address: str, tls_ca: str | None, name: str, argv: list[str]) -> int:
    """Run an image command on the server; stdout, stderr and the exit code are the server's."""
    if any(word == "--root" or word.startswith("--root=") for word in argv):
        return _usage(f"--root cannot be used with --server (the server has its own store)")
    argv = list(argv)
    output = _take_flag(argv, ("-o", "--output")) if name == "save" else None
    source = _take_flag(argv, ("-i", "--input")) if name == "load" else None
    debug = "--debug" in argv

    def run() -> int:
        if name == "save" and not output and "-h" not in argv and "--help" not in argv:
            from builder.cli.images import _refuse_terminal

            _refuse_terminal(sys.stdout, "save to")
        stdin = None
        if name == "load":
            if source and source != "-":
                try:
                    stdin = open(source, "rb")
                except OSError as e:
                    raise BuildError(f"open {source}: {e.strerror.lower()}") from None
            elif not sys.stdin.isatty():
                stdin = sys.stdin.buffer
        elif name == "login" and "--password-stdin" in argv:
            stdin = sys.stdin.buffer

        def body(writer) -> None:
            if stdin is not None:
                for chunk in iter(lambda: stdin.read(1 << 18), b""):
                    writer.write(chunk)

        target = sys.stdout.buffer
        if output and output != "-":
            import tempfile

            target = tempfile.NamedTemporaryFile(dir=os.path.dirname(os.path.abspath(output)),
                                                 prefix=".build-image-", delete=False)
        connection = Connection(address, tls_ca)
        code = None
        try:
            status, headers = connection.request("POST", f"{protocol.API}/command",
                                                 {"command": name, "argv": argv}, body, _authorization(address))
            connection.check(status, headers)
            for kind, doc, data in _frames(connection):
                if kind == "stdout":
                    target.write(data)
                elif kind == "stderr":
                    sys.stderr.buffer.write(data)
                    sys.stderr.buffer.flush()
                elif kind == "error":
                    print(f"ERROR: {doc.get('message', 'the server failed')}", file=sys.stderr)
                elif kind == "exit":
                    code = int(doc.get("code", 1))
                    break
        finally:
            connection.close()
            if target is not sys.stdout.buffer:
                target.close()
                if code == 0:
                    _publish(target.name, output)
                else:
                    os.unlink(target.name)
        if code is None:
            raise BuildError(f"the build server at {address} closed the connection before the command ended")
        if target is sys.stdout.buffer:
            target.flush()
        return code

    return run_command(run, debug)


def _take_flag(argv: list[str], flags: tuple[str, str]) -> str | None:
    """Remove `-o X`, `-oX`, `--output X`, `--output=X` from ARGV; return X."""
    short, long = flags
    for index, word in enumerate(argv):
        if word in flags and index + 1 < len(argv):
            value = argv[index + 1]
            del argv[index:index + 2]
            return value
        if word.startswith(long + "="):
            del argv[index]
            return word.split("=", 1)[1]
        if word.startswith(short) and len(word) > 2 and not word.startswith("--"):
            del argv[index]
            return word[2:]
    return None


def _usage(message: str) -> int:
    from builder.cli.usage import EXIT_USAGE

    print(f"ERROR: {message}", file=sys.stderr)
    return EXIT_USAGE


# ---- login-server, logout-server ------------------------------------------------------------------

def cmd_login_server(argv: list[str], tls_ca: str | None = None) -> int:
    from builder.cli.usage import UsageParser

    p = UsageParser(prog="build-image login-server", description="Log in to a build server (tcp://HOST:PORT).")
    p.add_argument("server", metavar="tcp://HOST:PORT")
    p.add_argument("-u", "--username", help="a user of the server's machine (required)")
    p.add_argument("--password-stdin", action="store_true", help="take the password from stdin")
    p.add_argument("--tls-ca", default=tls_ca, help="the CA that signed the server's certificate")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    ns = p.parse_args(argv)
    if not ns.username:   # checked after parsing, so an unknown flag is the error shown first, as docker's
        p.error("the following arguments are required: -u/--username")

    def run() -> int:
        if ns.password_stdin:
            password = sys.stdin.read().rstrip("\r\n")
        else:
            if not sys.stdin.isatty():
                raise BuildError("Cannot perform an interactive login from a non TTY device")
            import getpass

            password = getpass.getpass("Password: ")
        basic = "Basic " + base64.b64encode(f"{ns.username}:{password}".encode()).decode()
        connection = Connection(ns.server, ns.tls_ca)
        try:
            status, headers = connection.request("POST", f"{protocol.API}/login", {}, None, basic)
            connection.check(status, headers)
            doc = connection.read_json(headers)
        finally:
            connection.close()
        if not isinstance(doc.get("token"), str):
            raise BuildError(f"{ns.server}: the server sent no token")
        tokens = _read_tokens()
        tokens[ns.server] = {"token": doc["token"], "expires": doc["expires"], "user": doc.get("user", ns.username)}
        _write_tokens(tokens)
        print("Login Succeeded")
        return 0

    return run_command(run, ns.debug)


def cmd_logout_server(argv: list[str], tls_ca: str | None = None) -> int:
    from builder.cli.usage import UsageParser

    p = UsageParser(prog="build-image logout-server", description="Log out from a build server.")
    p.add_argument("server", metavar="tcp://HOST:PORT")
    p.add_argument("--tls-ca", default=tls_ca, help="the CA that signed the server's certificate")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    ns = p.parse_args(argv)

    def run() -> int:
        tokens = _read_tokens()
        entry = tokens.pop(ns.server, None)
        if entry is None:
            print(f"Not logged in to {ns.server}")
            return 0
        try:  # the server forgets the token too, if it can be reached
            connection = Connection(ns.server, ns.tls_ca)
            try:
                connection.request("POST", f"{protocol.API}/logout", {}, None, f"Bearer {entry.get('token', '')}")
            finally:
                connection.close()
        except BuildError:
            pass
        _write_tokens(tokens)
        print(f"Removing login credentials for {ns.server}")
        return 0

    return run_command(run, ns.debug)
