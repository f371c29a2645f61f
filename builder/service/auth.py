"""Who is asking: a local system user, known by uid.

On the unix socket the kernel says who the peer is (SO_PEERCRED); the socket file's mode and group
decide who may connect at all. Over TCP (always TLS) every request carries HTTP Basic credentials,
checked by PAM (pam_unix through python-pam, service `build-image` by default), or a bearer token
that `login-server` obtained that way. Failures say nothing more than 401. Failed logins are
counted per user name and per source address; past the limit in the window, further attempts are
refused (429) without asking PAM at all.
"""

from __future__ import annotations

import base64
import hmac
import pwd
import secrets
import socket
import struct
import threading
import time

from builder.plumbing.records import dataclass

TOKEN_LIFETIME = 12 * 3600


@dataclass(frozen=True)
class User:
    uid: int
    name: str
    home: str

    @property
    def namespace(self) -> str:
        """The user's image namespace in the store (by uid: names can be reused, uids less so)."""
        return f"uid-{self.uid}"

    @classmethod
    def by_uid(cls, uid: int) -> "User | None":
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return None
        return cls(entry.pw_uid, entry.pw_name, entry.pw_dir)

    @classmethod
    def by_name(cls, name: str) -> "User | None":
        try:
            entry = pwd.getpwnam(name)
        except (KeyError, ValueError):
            return None
        return cls(entry.pw_uid, entry.pw_name, entry.pw_dir)


def peer_user(sock: socket.socket) -> User | None:
    """The user at the other end of a unix socket, from SO_PEERCRED."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return User.by_uid(uid)


class RateLimiter:
    """At most LIMIT failed logins per key (a user name, an address) in WINDOW seconds."""

    def __init__(self, limit: int = 5, window: float = 60.0):
        self.limit, self.window = limit, window
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(key, ()) if now - t < self.window]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(len(self._recent(key, now)) >= self.limit for key in keys)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._failures.setdefault(key, []).append(now)


class Tokens:
    """Short-lived bearer tokens, in the server's memory only (a restart logs everybody out)."""

    def __init__(self, lifetime: float = TOKEN_LIFETIME):
        self.lifetime = lifetime
        self._tokens: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def issue(self, user: User) -> tuple[str, float]:
        token = secrets.token_urlsafe(32)
        expires = time.time() + self.lifetime
        with self._lock:
            self._tokens[token] = (user.uid, expires)
        return token, expires

    def user(self, token: str) -> User | None:
        now = time.time()
        with self._lock:
            for known, (uid, expires) in list(self._tokens.items()):
                if expires <= now:
                    del self._tokens[known]
            match = next((entry for known, entry in self._tokens.items()
                          if hmac.compare_digest(known.encode(), token.encode())), None)
        return User.by_uid(match[0]) if match else None

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)


class PamAuthenticator:
    """HTTP Basic credentials checked by PAM (one conversation at a time: libpam's modules are not
    all thread-safe)."""

    def __init__(self, service: str = "build-image"):
        import pam

        self.service = service
        self._pam = pam
        self._lock = threading.Lock()

    def check(self, name: str, password: str) -> User | None:
        user = User.by_name(name)
        with self._lock:
            ok = self._pam.pam().authenticate(name, password, service=self.service)
        return user if ok and user is not None else None


def basic_credentials(header: str) -> tuple[str, str] | None:
    """`Basic base64(user:password)` -> (user, password), or None."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (name, password) if sep and name else None


def bearer_token(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None
