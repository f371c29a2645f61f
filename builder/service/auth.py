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
import hashlib
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
    """Short-lived bearer tokens. With a PATH they survive a restart: the file (mode 0600, under
    the server's root) keeps only each token's sha256, its user and its expiry, never the token,
    so whoever reads it still cannot log in. Without one they live in memory only."""

    def __init__(self, lifetime: float = TOKEN_LIFETIME, path: str | None = None):
        self.lifetime, self.path = lifetime, path
        self._tokens: dict[str, tuple[int, str, float]] = {}   # sha256 hex -> (uid, name, expires)
        self._lock = threading.Lock()
        if path is not None:
            self._tokens = _read_token_file(path)
            self._save()   # without the ones that expired while no server ran

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()

    def issue(self, user: User) -> tuple[str, float]:
        token = secrets.token_urlsafe(32)
        expires = time.time() + self.lifetime
        with self._lock:
            self._expire(time.time())
            self._tokens[self._key(token)] = (user.uid, user.name, expires)
            self._save()
        return token, expires

    def user(self, token: str) -> User | None:
        # A dict lookup by the token's hash: timing says something about the hash, nothing of the token.
        with self._lock:
            entry = self._tokens.get(self._key(token))
            if entry is not None and entry[2] <= time.time():
                del self._tokens[self._key(token)]
                self._save()
                entry = None
        if entry is None:
            return None
        user = User.by_uid(entry[0])
        return user if user is not None and user.name == entry[1] else None   # not a reused uid

    def revoke(self, token: str) -> None:
        with self._lock:
            if self._tokens.pop(self._key(token), None) is not None:
                self._save()

    def _expire(self, now: float) -> None:
        for key in [k for k, (_, _, expires) in self._tokens.items() if expires <= now]:
            del self._tokens[key]

    def _save(self) -> None:
        if self.path is None:
            return
        import json
        import os

        from builder.plumbing.files import write_atomically

        doc = {key: {"uid": uid, "user": name, "expires": expires}
               for key, (uid, name, expires) in sorted(self._tokens.items())}
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        write_atomically(self.path, json.dumps({"sha256": doc}, indent=1).encode(), mode=0o600)


def _read_token_file(path: str) -> dict[str, tuple[int, str, float]]:
    """The tokens a previous server issued that have not expired; a damaged file logs everybody out."""
    import json

    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return {}
    entries = doc.get("sha256") if isinstance(doc, dict) else None
    now, tokens = time.time(), {}
    for key, entry in (entries.items() if isinstance(entries, dict) else ()):
        if (isinstance(key, str) and len(key) == 64 and isinstance(entry, dict)
                and isinstance(entry.get("uid"), int) and isinstance(entry.get("user"), str)
                and isinstance(entry.get("expires"), (int, float)) and entry["expires"] > now):
            tokens[key] = (entry["uid"], entry["user"], float(entry["expires"]))
    return tokens


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
