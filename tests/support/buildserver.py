"""A real `build-image serve` for tests, and real local users to talk to it.

    with BuildServer(store_root) as server:            # a unix socket, mode 0666, in a 0755 dir
        server.address  -> "unix:///tmp/bi-serve-XXXX/s.sock"
        server.client("images")                         # as root, through the venv's interpreter
    with BuildServer(store_root, tls=Certificates(dir)) # also tcp://127.0.0.1:PORT with TLS

    with local_users(2) as (alice, bob):               # useradd -m + chpasswd; userdel -r after
        alice.client(server, "build", ctx)             # Debian's own python3, as alice: the client
                                                       # needs nothing but the standard library

The server process (and its workers) and every temp directory are gone on exit.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYSTEM_PYTHON = "/usr/bin/python3"
_LISTENING = re.compile(r"listening on (\S+)")


@dataclass(frozen=True)
class Certificates:
    """A CA and a server certificate for 127.0.0.1 it signed, made with openssl."""

    ca: str
    cert: str
    key: str

    @classmethod
    def make(cls, directory: str) -> "Certificates":
        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
                "-days", "2", "-subj", "/CN=build-image test CA")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
                "-subj", "/CN=127.0.0.1")
        with open(os.path.join(directory, "san.ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
        for name in ("ca.pem", "server.pem"):
            os.chmod(os.path.join(directory, name), 0o644)
        return cls(os.path.join(directory, "ca.pem"), os.path.join(directory, "server.pem"),
                   os.path.join(directory, "server.key"))

    def client_certificate(self, directory: str) -> tuple[str, str]:
        """(certificate, key) of a client this CA signed, in DIRECTORY."""
        ca_dir = os.path.dirname(self.ca)

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
                "-subj", "/CN=build-image test client")
        openssl("x509", "-req", "-in", "client.csr", "-CA", self.ca, "-CAkey", os.path.join(ca_dir, "ca.key"),
                "-CAcreateserial", "-CAserial", os.path.join(directory, "ca.srl"), "-out", "client.pem", "-days", "2")
        return os.path.join(directory, "client.pem"), os.path.join(directory, "client.key")


class PamService:
    """/etc/pam.d/NAME with pam_unix and `nodelay` (a failed login costs no 2 s), removed after."""

    def __init__(self):
        self.name = f"build-image-test-{secrets.token_hex(4)}"
        self.path = f"/etc/pam.d/{self.name}"

    def __enter__(self) -> "PamService":
        with open(os.path.join(REPO, "fixtures", "service", "pam.d", "build-image")) as f:
            text = f.read()
        with open(self.path, "w") as f:
            f.write(text)
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class BuildServer:
    def __init__(self, root: str, *, tls: Certificates | None = None, pam_service: str | None = None,
                 extra: tuple[str, ...] = ()):
        self.root, self.tls, self.pam_service, self.extra = root, tls, pam_service, extra
        self.dir = ""
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.tcp_address = ""

    def __enter__(self) -> "BuildServer":
        # World-readable, so that test users reach the socket and their contexts.
        self.dir = tempfile.mkdtemp(prefix="bi-serve-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        try:
            self.start()
        except BaseException:
            self.stop()
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, "server.log")

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def start(self) -> None:
        args = [sys.executable, "-m", "builder.cli", "serve", "--root", self.root, "--socket-mode", "666",
                "--listen", f"unix://{self.dir}/s.sock", *self.extra]
        if self.tls is not None:
            args += ["--listen", "tcp://127.0.0.1:0", "--tls-cert", self.tls.cert, "--tls-key", self.tls.key]
        if self.pam_service:
            args += ["--pam-service", self.pam_service]
        log = open(self.log_path, "a")
        offset = log.tell()   # a restart appends: only what this server says counts
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd="/")
        log.close()
        wanted = 1 + (self.tls is not None)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = _LISTENING.findall(self.log()[offset:])
            if len(found) >= wanted:
                self.address = next(a for a in found if a.startswith("unix://"))
                self.tcp_address = next((a for a in found if a.startswith("tcp://")), "")
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"build-image serve exited ({self.proc.returncode}):\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"build-image serve did not start:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def client(self, *args: str, address: str | None = None, check: bool = False, timeout: float = 300,
               input: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
        """`build-image --server ADDRESS ARGS` as root (output as text unless INPUT is bytes)."""
        return subprocess.run([sys.executable, "-m", "builder.cli", "--server", address or self.address, *args],
                              capture_output=True, timeout=timeout, input=input, check=check,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              env={**os.environ, **(env or {})}, cwd=self.dir)

    def workdir(self, name: str) -> str:
        path = os.path.join(self.dir, name)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o777)
        return path


@dataclass(frozen=True)
class LocalUser:
    name: str
    uid: int
    gid: int
    home: str
    password: str

    def env(self, **extra: str) -> dict:
        return {"HOME": self.home, "PATH": "/usr/bin:/bin", "PYTHONPATH": REPO, "LANG": "C.UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1", **extra}

    def client(self, address: str, *args: str, timeout: float = 300, input: bytes | None = None,
               env: dict | None = None, global_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        """`build-image [--server ADDRESS] ARGS` as this user, with Debian's python3 (no venv)."""
        server = ("--server", address) if address else ()
        return subprocess.run([SYSTEM_PYTHON, "-m", "builder.cli", *server, *global_flags, *args],
                              capture_output=True, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              user=self.uid, group=self.gid, extra_groups=[], env=self.env(**(env or {})),
                              cwd=self.home)

    def popen(self, address: str, *args: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen([SYSTEM_PYTHON, "-m", "builder.cli", "--server", address, *args],
                                user=self.uid, group=self.gid, extra_groups=[], env=self.env(),
                                cwd=self.home, stdin=subprocess.DEVNULL, **kwargs)


@contextlib.contextmanager
def local_users(count: int):
    """COUNT real users (useradd -m, a password through chpasswd), removed with their homes after."""
    import pwd

    made: list[LocalUser] = []
    try:
        for _ in range(count):
            name = f"bit{secrets.token_hex(4)}"
            password = secrets.token_urlsafe(12)
            subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
            entry = pwd.getpwnam(name)
            made.append(LocalUser(name, entry.pw_uid, entry.pw_gid, entry.pw_dir, password))
            subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, capture_output=True)
        yield made
    finally:
        for user in made:
            subprocess.run(["userdel", "-r", "-f", user.name], capture_output=True)
