"""What the client gives a build besides the context: secrets and forwarded ssh-agent sockets.

As BuildKit's session (session/secrets, session/sshforward): the CLI parses `--secret` and
`--ssh` into sources, the build turns them into a `SecretStore` and a map of agent sockets,
and the solver reads a secret only when a RUN mounts it. Nothing here is ever in a layer,
the history or a cache key.
"""

from __future__ import annotations

import csv
import os
import stat
from collections.abc import Mapping, Sequence

from builder.errors import BuildError, SolveError
from builder.plumbing.records import dataclass, field

MAX_SECRET_SIZE = 500 * 1024  # BuildKit's limit


@dataclass(frozen=True)
class SecretSource:
    """`--secret id=ID[,src=FILE|,env=VAR]` (buildx syntax)."""

    id: str
    path: str = ""
    env: str = ""
    # The bytes themselves, when a client sent them (`build-image serve`): kept in memory only.
    value: bytes | None = field(default=None, repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> SecretSource:
        values: dict[str, str] = {}
        kind = ""
        for field in next(csv.reader([text]), []):
            key, eq, value = field.partition("=")
            key = key.lower()
            if not eq:
                raise BuildError(f"invalid field '{field}' must be a key=value pair")
            if key == "type":
                if value not in ("file", "env"):
                    raise BuildError(f'unsupported secret type "{value}"')
                kind = value
            elif key == "id":
                values["id"] = value
            elif key in ("source", "src"):
                values["path"] = value
            elif key == "env":
                values["env"] = value
            else:
                raise BuildError(f"unexpected key '{key}' in '{field}'")
        if kind == "env" and not values.get("env"):
            values["env"] = values.pop("path", "")
        source = cls(**{"id": "", **values})
        if not source.id:
            raise BuildError("secret missing ID")
        if source.path and source.env:
            raise BuildError(f"secret {source.id}: can't set both file and env source")
        return source


class SecretStore:
    """The secrets a build may mount, by id. As BuildKit's file store: a source with neither
    file nor variable reads the variable named like the id if it is set, else the file."""

    def __init__(self, sources: Sequence[SecretSource] = (), environ: Mapping[str, str] | None = None):
        self._environ = os.environ if environ is None else environ
        self._sources: dict[str, SecretSource] = {}
        for source in sources:
            if source.value is not None:
                if len(source.value) > MAX_SECRET_SIZE:
                    raise BuildError(f"secret {source.id} too big. max size 500KB")
                self._sources[source.id] = source
                continue
            if not source.path and not source.env:
                if source.id in self._environ:
                    source = SecretSource(source.id, env=source.id)
                else:
                    source = SecretSource(source.id, path=source.id)
            if source.path:
                try:
                    size = os.stat(source.path).st_size
                except OSError as exc:
                    raise BuildError(f"failed to stat {source.path}: {exc.strerror.lower()}") from None
                if size > MAX_SECRET_SIZE:
                    raise BuildError(f"secret {source.id} too big. max size 500KB")
            self._sources[source.id] = source

    def get(self, secret_id: str) -> bytes | None:
        source = self._sources.get(secret_id)
        if source is None:
            return None
        if source.value is not None:
            return source.value
        if source.env:
            return os.fsencode(self._environ.get(source.env, ""))
        try:
            with open(source.path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise SolveError(f"secret {secret_id}: {exc.strerror.lower()}: {source.path}") from None


@dataclass(frozen=True)
class SSHSource:
    """`--ssh default` (from $SSH_AUTH_SOCK), `--ssh default=$SSH_AUTH_SOCK`, `--ssh ID=SOCKET`."""

    id: str
    path: str

    @classmethod
    def parse(cls, text: str, environ: Mapping[str, str] | None = None) -> SSHSource:
        environ = os.environ if environ is None else environ
        ssh_id, _, paths = text.partition("=")
        if not ssh_id:
            raise BuildError(f"invalid ssh spec {text!r}: missing id")
        if "," in paths:
            raise BuildError(f"--ssh {ssh_id}: only one agent socket per id is supported")
        path = paths or environ.get("SSH_AUTH_SOCK", "")
        if not path:
            raise BuildError("invalid empty ssh agent socket: make sure SSH_AUTH_SOCK is set")
        try:
            is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
        except OSError as exc:
            raise BuildError(f"--ssh {ssh_id}: {exc.strerror.lower()}: {path}") from None
        if not is_socket:
            raise BuildError(f"--ssh {ssh_id}: {path} is not an agent socket (key files are not supported)")
        return cls(ssh_id, os.path.abspath(path))
