"""Registry authentication: Docker's credential sources and the distribution-spec token flow.

A registry says how it wants to be authenticated in the `WWW-Authenticate` header of a 401:
`Basic realm=...` (send the user's password with every request) or
`Bearer realm=URL,service=S,scope=...` (trade the credentials, or nothing for anonymous access,
for a short-lived token at URL, one per scope such as `repository:library/busybox:pull`).
`Authorizer` remembers each registry's scheme and caches tokens per (registry, scope), so only
the first request to a repository pays for the round trips.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import threading
import time
from urllib.parse import urlencode, urlsplit

from builder.errors import AuthenticationError, RegistryError
from builder.plumbing.files import write_atomically
from builder.plumbing.records import dataclass

from .transport import Transport

_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")
_DEFAULT_TOKEN_LIFETIME = 60
_HELPER_TIMEOUT = 30


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""  # an OAuth refresh token (docker login with a browser flow)

    def basic_header(self) -> str:
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


def docker_config_path() -> str:
    """`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json` (where docker login writes)."""
    config_dir = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(config_dir, "config.json")


def registry_host(server: str) -> str:
    """The registry a `docker login` argument names: `https://host:5000/`, `host:5000` -> `host:5000`;
    Docker Hub's aliases -> `docker.io`."""
    return _normalise_host(server)


def config_key(registry: str) -> str:
    """The key docker login files REGISTRY's credentials under (Docker Hub has its historic URL)."""
    return _HUB_CONFIG_KEY if _normalise_host(registry) == "docker.io" else _normalise_host(registry)


def save_credentials(registry: str, credentials: Credentials, config_path: str | None = None) -> str:
    """Record CREDENTIALS for REGISTRY as `docker login` does: in the credential helper the config
    names for it, else base64 in `auths`. Returns where they went (a helper name or the file)."""
    path = config_path or docker_config_path()
    config = _read_config(path)
    helper = _helper_for(config, registry)
    if helper:
        secret = {"ServerURL": config_key(registry), "Username": credentials.username,
                  "Secret": credentials.password}
        _run_helper(helper, "store", json.dumps(secret), registry)
        return f"docker-credential-{helper}"
    auths = {k: v for k, v in (config.get("auths") or {}).items() if _normalise_host(k) != _normalise_host(registry)}
    pair = f"{credentials.username}:{credentials.password}".encode()
    auths[config_key(registry)] = {"auth": base64.b64encode(pair).decode("ascii")}
    config["auths"] = auths
    _write_config(path, config)
    return path


def erase_credentials(registry: str, config_path: str | None = None) -> bool:
    """Forget REGISTRY's credentials (`docker logout`); False if there were none."""
    path = config_path or docker_config_path()
    config = _read_config(path)
    helper = _helper_for(config, registry)
    if helper:
        return _run_helper(helper, "erase", config_key(registry), registry, missing_ok=True) is not None
    auths = config.get("auths") or {}
    kept = {k: v for k, v in auths.items() if _normalise_host(k) != _normalise_host(registry)}
    if len(kept) == len(auths):
        return False
    config["auths"] = kept
    _write_config(path, config)
    return True


def _read_config(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            config = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise AuthenticationError(f"cannot read Docker config {path}: {e}") from None
    if not isinstance(config, dict):
        raise AuthenticationError(f"cannot read Docker config {path}: not a JSON object")
    return config


def _write_config(path: str, config: dict) -> None:
    """Replace the config atomically, readable by its owner only (it holds passwords)."""
    data = (json.dumps(config, indent="\t") + "\n").encode()
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        write_atomically(path, data, mode=0o600)
    except OSError as e:
        raise AuthenticationError(f"cannot write Docker config {path}: {e.strerror or e}") from None


def _helper_for(config: dict, registry: str) -> str:
    host = _normalise_host(registry)
    helpers = config.get("credHelpers") or {}
    return helpers.get(host) or _hub_alias_lookup(helpers, host) or config.get("credsStore") or ""


def _run_helper(helper: str, action: str, data: str, registry: str, missing_ok: bool = False) -> str | None:
    """Run `docker-credential-HELPER ACTION` with DATA on stdin; its stdout, or None when
    MISSING_OK and the helper has no credentials for REGISTRY."""
    program = f"docker-credential-{helper}"
    try:
        result = subprocess.run([program, action], input=data, capture_output=True, text=True,
                                timeout=_HELPER_TIMEOUT)
    except FileNotFoundError:
        raise AuthenticationError(f"credential helper {program} is not installed") from None
    except subprocess.TimeoutExpired:
        raise AuthenticationError(f"credential helper {program} did not answer for {registry}") from None
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        if missing_ok and "not found" in output.lower():
            return None
        raise AuthenticationError(f"credential helper {program} could not {action} credentials for {registry}: {output}")
    return result.stdout


class CredentialStore:
    """Credentials for registries, from Docker's config.json plus any given explicitly.

    Lookup order per registry: explicit entries, `credHelpers[host]`, `credsStore`, then `auths`
    (`auth` is base64 "user:password"). The file is `$DOCKER_CONFIG/config.json`, else
    `~/.docker/config.json`; a missing file means anonymous access.
    """

    def __init__(self, config_path: str | None = None, explicit: dict[str, Credentials] | None = None):
        self.config_path = config_path or docker_config_path()
        self._explicit = {_normalise_host(k): v for k, v in (explicit or {}).items()}
        self._config: dict | None = None
        self._found: dict[str, Credentials | None] = {}
        self._lock = threading.Lock()

    def get(self, registry: str) -> Credentials | None:
        host = _normalise_host(registry)
        if host in self._explicit:
            return self._explicit[host]
        with self._lock:  # a helper program runs once per registry, not once per request
            if host not in self._found:
                self._found[host] = self._lookup(host)
            return self._found[host]

    def _lookup(self, host: str) -> Credentials | None:
        config = self._load()
        helper = (config.get("credHelpers") or {}).get(host) or _hub_alias_lookup(config.get("credHelpers"), host)
        if helper:
            return self._from_helper(helper, host)
        if config.get("credsStore"):
            found = self._from_helper(config["credsStore"], host)
            if found is not None:
                return found
        for key, entry in (config.get("auths") or {}).items():
            if _normalise_host(key) == host:
                return self._from_auth_entry(entry, key)
        return None

    def _load(self) -> dict:
        if self._config is None:
            try:
                with open(self.config_path, "rb") as f:
                    self._config = json.load(f)
            except FileNotFoundError:
                self._config = {}
            except (OSError, ValueError) as e:
                raise AuthenticationError(f"cannot read Docker credentials from {self.config_path}: {e}") from None
        return self._config

    def _from_auth_entry(self, entry: dict, key: str) -> Credentials | None:
        if entry.get("identitytoken"):
            return Credentials(username=entry.get("username", ""), identity_token=entry["identitytoken"])
        if entry.get("auth"):
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                sep = ""
            if not sep:
                raise AuthenticationError(f"{self.config_path}: auths[{key!r}].auth is not base64 of user:password")
            return Credentials(user, password)
        if entry.get("username"):
            return Credentials(entry["username"], entry.get("password", ""))
        return None

    def _from_helper(self, helper: str, host: str) -> Credentials | None:
        program = f"docker-credential-{helper}"
        server = _HUB_CONFIG_KEY if host == "docker.io" else host
        output = _run_helper(helper, "get", server, host, missing_ok=True)
        if output is None:
            return None
        try:
            answer = json.loads(output)
            user, secret = answer["Username"], answer["Secret"]
        except (ValueError, KeyError, TypeError):
            raise AuthenticationError(f"credential helper {program} gave an unreadable answer for {host}") from None
        if user == "<token>":
            return Credentials(identity_token=secret)
        return Credentials(user, secret)


def _normalise_host(key: str) -> str:
    """`https://index.docker.io/v1/`, `docker.io` and `registry-1.docker.io` name one registry."""
    host = urlsplit(key).netloc if "://" in key else key.split("/", 1)[0]
    return "docker.io" if host in _HUB_HOSTS else host


def _hub_alias_lookup(helpers: dict | None, host: str) -> str | None:
    if host != "docker.io" or not helpers:
        return None
    for key, helper in helpers.items():
        if _normalise_host(key) == "docker.io":
            return helper
    return None


@dataclass(frozen=True)
class Challenge:
    scheme: str                            # lower case: "basic" or "bearer"
    params: tuple[tuple[str, str], ...]

    def get(self, name: str, default: str = "") -> str:
        return dict(self.params).get(name, default)


_CHALLENGE_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenge(header: str) -> Challenge | None:
    """Parse one `WWW-Authenticate` value: a scheme then comma-separated key=value pairs."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params = []
    pos = 0
    while pos < len(rest):
        m = _CHALLENGE_PARAM.match(rest, pos)
        if not m or m.end() == pos:
            break
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params.append((m.group(1).lower(), re.sub(r"\\(.)", r"\1", value)))
        pos = m.end()
    return Challenge(scheme.lower(), tuple(params))


class Authorizer:
    """Chooses the Authorization header per (registry, scope), learning from 401 challenges."""

    def __init__(self, transport: Transport, credentials: CredentialStore):
        self._transport = transport
        self._credentials = credentials
        self._lock = threading.Lock()
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._fetch_locks: dict[tuple[str, str], threading.Lock] = {}

    def header(self, registry: str, scope: str) -> str | None:
        """The header to send before any 401, from what this registry asked for last time."""
        with self._lock:
            challenge = self._challenges.get(registry)
            token = self._tokens.get((registry, scope))
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self._credentials.get(registry)
            return creds.basic_header() if creds and not creds.identity_token else None
        if token and token[1] > time.monotonic():
            return f"Bearer {token[0]}"
        if challenge.scheme == "bearer":
            return self._token(registry, scope, challenge, rejected=None)
        return None

    def answer(self, registry: str, scope: str, www_authenticate: str, sent: str | None) -> str:
        """The header to retry with after a 401; AuthenticationError when retrying cannot help."""
        challenge = parse_challenge(www_authenticate)
        if challenge is None or challenge.scheme not in ("basic", "bearer"):
            raise AuthenticationError(f"{registry} asks for unsupported authentication {www_authenticate!r}")
        with self._lock:
            self._challenges[registry] = challenge
        creds = self._credentials.get(registry)
        if challenge.scheme == "basic":
            if creds is None or creds.identity_token:
                raise AuthenticationError(
                    f"{registry} requires authentication: no username and password for it "
                    f"(add them to {self._credentials.config_path} with docker login)")
            header = creds.basic_header()
            if sent == header:
                raise AuthenticationError(f"authentication to {registry} failed: incorrect username or password")
            return header
        return self._token(registry, scope, challenge, rejected=sent)

    def scheme(self, registry: str) -> str:
        """The scheme REGISTRY last asked for ("basic" or "bearer"); empty before any challenge."""
        with self._lock:
            challenge = self._challenges.get(registry)
        return challenge.scheme if challenge else ""

    def _token(self, registry: str, scope: str, challenge: Challenge, rejected: str | None) -> str:
        """A cached token unless it is the one just REJECTED; one fetch at a time per scope, so
        concurrent downloads that all meet the same 401 share the token the first one fetched."""
        with self._lock:
            fetch_lock = self._fetch_locks.setdefault((registry, scope), threading.Lock())
        with fetch_lock:
            with self._lock:
                cached = self._tokens.get((registry, scope))
            if cached and cached[1] > time.monotonic() and f"Bearer {cached[0]}" != rejected:
                return f"Bearer {cached[0]}"
            return self._fetch_token(registry, scope, challenge)

    def _fetch_token(self, registry: str, scope: str, challenge: Challenge) -> str:
        realm = challenge.get("realm")
        if not realm.startswith(("http://", "https://")):
            raise AuthenticationError(f"{registry} gave a token realm that is not a URL: {realm!r}")
        creds = self._credentials.get(registry)
        service = challenge.get("service")
        if creds and creds.identity_token:
            body = urlencode({"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                              "service": service, "scope": scope, "client_id": "build-image"}).encode()
            response = self._transport.request(
                "POST", realm, {"Content-Type": "application/x-www-form-urlencoded"}, body)
        else:
            query = urlencode([("service", service), ("scope", scope)] if service else [("scope", scope)])
            headers = {"Authorization": creds.basic_header()} if creds else {}
            response = self._transport.request("GET", f"{realm}{'&' if '?' in realm else '?'}{query}", headers)
        data = response.read()
        host = urlsplit(realm).netloc
        if response.status in (401, 403):
            raise AuthenticationError(
                f"authentication to {registry} failed: token server {host} answered {response.status}"
                + (" (incorrect username or password)" if creds else " (credentials required)"))
        if response.status != 200:
            raise RegistryError(f"token server {host} for {registry} answered HTTP {response.status}")
        try:
            answer = json.loads(data)
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not token:
            raise RegistryError(f"token server {host} for {registry} returned no token")
        lifetime = int(answer.get("expires_in") or _DEFAULT_TOKEN_LIFETIME)
        # Renew a little early so a token never expires between our check and the registry's.
        expires = time.monotonic() + max(lifetime - 10, lifetime / 2)
        with self._lock:
            self._tokens[(registry, scope)] = (token, expires)
        return f"Bearer {token}"
