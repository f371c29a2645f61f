"""The client of `build-image serve`: the same commands, run by a server (`--server ADDR` or
$BUILD_IMAGE_HOST). Arguments are parsed here with the local parsers (so usage errors are the
same), the context goes up as a tar with .dockerignore applied here, progress comes back as events
that the local progress views draw, errors come back as the fields the local error lines print,
and outputs with a dest are written here. This path imports nothing heavy: the server has it all.

    build-image login-server tcp://HOST:PORT -u USER [--password-stdin]   a token, 0600 in ~/.config
    build-image logout-server tcp://HOST:PORT
"""

from __future__ import annotations

import json
import os
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
        import base64

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
                # The C module itself: socket.py's imports (selectors, its enums) would cost this
                # process more than the server spends on a cached build; a unix stream needs none.
                import _socket

                self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
                self.sock.connect(host)
            else:
                import socket
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
    """`build ARGV` on the server. The common flags are read here without argparse (the thin path:
    see _thin_options); anything else goes through the local build's own parser, so usage errors
    are the local ones."""
    thin = _thin_options(argv)
    if thin is not None:
        options, mode, quiet_flag, debug = thin, thin.progress, thin.quiet, False
    else:
        from builder.cli import build_command as local

        parser = local._build_parser()
        ns = parser.parse_args(argv)
        if ns.progress not in local.PROGRESS_MODES:
            parser.error(f'invalid progress mode "{ns.progress}" in BUILDKIT_PROGRESS '
                         f"(use {', '.join(local.PROGRESS_MODES)})")
        for flag, given in (("--root", ns.root), ("--verify-reproducible", ns.verify_reproducible)):
            if given:
                parser.error(f"{flag} cannot be used with --server (it is a local build's)")
        # Not forwarded to the server yet: refused, never dropped without a word.
        for flag, given in (("--cache-from", ns.cache_from), ("--cache-to", ns.cache_to),
                            ("--timeline", ns.timeline), ("--trace", ns.trace), ("--cgroup-parent", ns.cgroup_parent)):
            if given:
                parser.error(f"{flag} is not supported with --server yet (build without --server to use it)")
        options, mode, quiet_flag, debug = ns, ns.progress, ns.quiet, ns.debug
    quiet = quiet_flag or mode in ("quiet", "none")

    def run() -> int:
        nonlocal options
        if thin is None:
            options = _options_from(options)   # inside run_command: a malformed flag is one error line
        progress = None
        if not quiet:
            from builder.cli.progress_view import make_progress

            progress = make_progress(mode)
        try:
            result = _build(address, tls_ca, options, progress)
        finally:
            close = getattr(progress, "close", None)
            if close is not None:
                close()
        if options.iidfile:
            from builder.plumbing.files import write_atomically

            write_atomically(options.iidfile, result.image_id.encode())
        for warning in result.warnings:   # as the local build reports (build_command._report_build)
            print(warning, file=sys.stderr)
        if quiet_flag or mode == "quiet":
            print(result.image_id, file=sys.stderr if result.wrote_stdout else sys.stdout)
        return 0

    code = run_command(run, debug)
    global finished_thin
    finished_thin = thin is not None and quiet   # a progress view may have a thread (tty)
    return code


# Set once a thin build is done: main() may then end the process without the interpreter's teardown.
finished_thin = False

PROGRESS_MODES = ("auto", "plain", "tty", "quiet", "rawjson", "none")   # build_command's, kept in step by a test

# The flags the thin path reads itself (flag -> option name); a word outside these, an attached
# short value (-tNAME), `--flag=bool` switches, `--`, a value that looks like a flag or an empty
# one sends the whole command line to the local parser instead.
_THIN_SWITCHES = {"-q": "quiet", "--quiet": "quiet", "--no-cache": "no_cache", "--pull": "pull"}
_THIN_VALUES = {"-t": "tags", "--tag": "tags", "-f": "dockerfile", "--file": "dockerfile", "--build-arg": "build_arg",
                "--target": "target", "--progress": "progress", "--network": "network", "--label": "label",
                "--iidfile": "iidfile", "--platform": "platform"}
_THIN_LISTS = ("tags", "build_arg", "label")


class ThinOptions:
    """What a build through the server needs of BuildOptions, for the common flags; the defaults
    are the build parser's."""

    def __init__(self, **given):
        self.context, self.dockerfile, self.target, self.iidfile, self.metadata_file = None, None, None, None, None
        self.quiet = self.no_cache = self.pull = False
        self.progress = os.environ.get("BUILDKIT_PROGRESS") or "auto"
        self.network, self.platform, self.pids_limit = "default", "linux/amd64", 4096
        self.jobs = self.shm_size = self.memory = self.cpu_shares = None
        self.no_cache_filter = self.annotations = self.insecure_registries = self.add_hosts = self.allow = ()
        self.ulimits = self.security_opts = self.outputs = self.secrets = self.ssh = self.build_contexts = ()
        self.tags, self.build_arg, self.label = (), (), ()
        self.__dict__.update(given)
        self.build_args = _build_args(self.build_arg)
        self.labels = dict(item.partition("=")[::2] for item in self.label)


def _options_from(ns) -> ThinOptions:
    """build_command._options for a build through the server, without importing the pipeline: the
    same checks here, the outputs' own (OutputSpec.parse) on the server."""
    outputs = [RemoteOutput.parse(text) for text in ns.output]
    if ns.push:
        if not ns.tag:
            raise BuildError("tag is needed when pushing to registry (--push needs -t NAME)")
        outputs.append(RemoteOutput("image", (("push", "true"),)))
    if len([o for o in outputs if o.get("dest") == "-"]) > 1:
        raise BuildError("only one output can write to stdout (dest=-)")
    for item in ns.label:
        if not item.partition("=")[0]:
            raise BuildError(f'invalid label "{item}": the key is empty')
    return ThinOptions(
        context=ns.context, dockerfile=ns.dockerfile, tags=tuple(ns.tag), build_arg=tuple(ns.build_arg),
        target=ns.target, no_cache=ns.no_cache,
        no_cache_filter=tuple(s for value in ns.no_cache_filter for s in value.split(",") if s),
        pull=ns.pull, outputs=tuple(outputs), iidfile=ns.iidfile, metadata_file=ns.metadata_file,
        label=tuple(ns.label), annotations=tuple(ns.annotation), jobs=ns.jobs, platform=ns.platform,
        insecure_registries=tuple(ns.insecure_registry), secrets=tuple(ns.secret), ssh=tuple(ns.ssh),
        network=ns.network, add_hosts=tuple(ns.add_host),
        allow=tuple(e for value in ns.allow for e in value.split(",") if e), shm_size=ns.shm_size,
        ulimits=tuple(ns.ulimit), build_contexts=tuple(ns.build_context), security_opts=tuple(ns.security_opt),
        memory=ns.memory, pids_limit=ns.pids_limit, cpu_shares=ns.cpu_shares)


class RemoteOutput:
    """An `-o` value as the client needs it: its type and attributes (dest: where the client
    writes what the server sends). Malformed ones go as they are: the server's parser says why."""

    def __init__(self, type: str, attrs: tuple, text: str | None = None):
        self.type, self.attrs, self.text = type, attrs, text

    @classmethod
    def parse(cls, text: str) -> "RemoteOutput":
        if text.strip() == "-":
            return cls("tar", (("dest", "-"),))
        if "=" not in text.split(",")[0]:
            return cls("local", (("dest", text),))
        parts = [part.partition("=") for part in text.split(",")]
        if not all(sep for _, sep, _ in parts):
            return cls("", (), text)
        attrs = {key.strip(): value.strip() for key, _, value in parts}
        kind = attrs.pop("type", "")
        return cls(kind, tuple(sorted(attrs.items())))

    def get(self, name: str, default: str = "") -> str:
        return dict(self.attrs).get(name, default)

    def __str__(self) -> str:
        return self.text or ",".join([f"type={self.type}", *(f"{k}={v}" for k, v in self.attrs)])


def _thin_options(argv: list[str]) -> ThinOptions | None:
    given: dict = {name: [] for name in _THIN_LISTS}
    context = []
    words = iter(argv)
    for word in words:
        if word in _THIN_SWITCHES:
            given[_THIN_SWITCHES[word]] = True
            continue
        flag, eq, value = word.partition("=")
        if word in _THIN_VALUES:
            flag, value = word, next(words, None)
            if value is None or (value.startswith("-") and value != "-"):
                return None
        elif not (eq and flag.startswith("--") and flag in _THIN_VALUES):
            if word.startswith("-") and word != "-":
                return None
            context.append(word)
            continue
        if not value:
            return None
        name = _THIN_VALUES[flag]
        if name in _THIN_LISTS:
            given[name].append(value)
        else:
            given[name] = value
    if len(context) != 1 or any(item.startswith("=") for item in given["label"]):
        return None
    options = ThinOptions(context=context[0], **{k: tuple(v) if k in _THIN_LISTS else v for k, v in given.items()})
    if options.progress not in PROGRESS_MODES:
        return None
    return options


def _build_args(values) -> dict[str, str]:
    """`--build-arg KEY=VALUE`; a bare KEY takes its value from the environment (build_command's)."""
    args = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            if key not in os.environ:
                continue
            value = os.environ[key]
        args[key] = value
    return args


class RemoteResult:
    """The server's answer to a build (pipeline.BuildResult's fields, without importing it)."""

    def __init__(self, image_id: str, manifest_digest: str, tags, warnings, wrote_stdout: bool):
        self.image_id, self.manifest_digest, self.wrote_stdout = image_id, manifest_digest, wrote_stdout
        self.tags, self.warnings = tuple(tags), tuple(warnings)


# URL contexts the server fetches itself: anonymous ones (ssh:// and git@ would be the server's keys).
SERVER_FETCHES = ("http://", "https://", "git://")

_FORWARDED = ("tags", "target", "no_cache", "no_cache_filter", "pull", "annotations", "jobs", "platform",
              "insecure_registries", "network", "add_hosts", "allow", "shm_size", "ulimits", "security_opts",
              "memory", "pids_limit", "cpu_shares")


def _request(options) -> dict:
    doc = {name: list(v) if isinstance(v, tuple) else v for name in _FORWARDED
           for v in [getattr(options, name)]}
    doc["build_args"] = dict(options.build_args)
    doc["labels"] = dict(options.labels)
    doc["outputs"] = [str(o) if isinstance(o, RemoteOutput) else ",".join([f"type={o.type}", *(f"{k}={v}" for k, v in o.attrs)])
                      for o in options.outputs]
    doc["metadata_file"] = bool(options.metadata_file)
    doc["secrets"] = []
    if options.secrets:
        import base64

        from builder.session import SecretStore

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
    """The build on the server; PROGRESS (None: quiet, and the server sends no events) sees its
    events. The result is a RemoteResult."""
    STDIN = "-"  # as builder.stdin_context names it
    request, directories = _request(options)
    request["events"] = progress is not None
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
        import base64

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
                event = protocol.decode_event(doc) if progress is not None else None
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
                result = RemoteResult(doc["image_id"], doc["manifest_digest"], doc["tags"], doc["warnings"],
                                      doc["wrote_stdout"])
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
    if not _has_dockerignore(context, dockerfile):
        from builder.plumbing.tarwriter import Unsupported, write_tar

        try:
            write_tar(context, _every_path(context), out)
            return
        except Unsupported:   # a hard link, a fifo, ...: tarfile writes those (nothing was written yet)
            pass
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


def _has_dockerignore(context: str, dockerfile: str | None) -> bool:
    """Whether a .dockerignore applies (context.load_dockerignore's two places); without one the
    context is every path in it, and the thin path sends it without parsing any rules."""
    candidates = ((dockerfile or os.path.join(context, "Dockerfile")) + ".dockerignore",
                  os.path.join(context, ".dockerignore"))
    return any(os.path.lexists(path) for path in candidates)


def _every_path(root: str, rel: str = "") -> list[str]:
    """Every path under ROOT in sorted pre-order, symlinks not followed (BuildContext.walk with no rules)."""
    out = []
    with os.scandir(os.path.join(root, rel)) as listing:
        entries = sorted((entry.name, entry.is_dir(follow_symlinks=False)) for entry in listing)
    for name, is_dir in entries:
        child = f"{rel}/{name}" if rel else name
        out.append(child)
        if is_dir:
            out.extend(_every_path(root, child))
    return out


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
        import base64

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
