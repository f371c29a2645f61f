"""RUN --mount: BuildKit's CSV syntax, the --secret and --ssh sources, and the mounts of one run.

`parse_mount` reads one ``--mount`` value the way BuildKit's Dockerfile frontend does (CSV
fields, ``type=bind`` by default, keys and their errors as BuildKit words them); the converter
turns the result into the `MountSpec`s of an ExecOp. At run time `RunMounts.prepare` turns those
specs into executor mounts: stage and image filesystems as read-only overlays (a read-write bind
gets a throwaway upper dir), cache directories from the store, tmpfs, secrets as in-memory files
or environment variables, and forwarded SSH agent sockets.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from builder.cache.mounts import CacheMountStore
from builder.errors import BuildError, SolveError
from builder.llb.ops import (BindMountSpec, CacheMountSpec, MountSpec, ScriptMountSpec, SecretMountSpec, SSHMountSpec,
                             TmpfsMountSpec)

MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
SHARING_MODES = ("shared", "private", "locked")
SECRETS_DIR = "/run/secrets"
SSH_AGENT_TARGET = "/run/buildkit/ssh_agent.{}"
MAX_SECRET_SIZE = 500 * 1024  # BuildKit's limit

_TRUE = ("1", "t", "T", "TRUE", "true", "True")      # Go's strconv.ParseBool
_FALSE = ("0", "f", "F", "FALSE", "false", "False")
_RAM_SIZE = re.compile(r"^(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$")


class MountSyntaxError(ValueError):
    """A malformed --mount value; the converter adds the Dockerfile line."""


# ---- --mount values ---------------------------------------------------------------------

@dataclass(frozen=True)
class RunMount:
    """One --mount value as written, BuildKit's read-only default applied; the converter fills
    in the rest of the defaults (cache id, secret target, ...)."""

    type: str = "bind"
    target: str = ""
    source: str = ""
    from_: str = ""
    readonly: bool = True
    id: str = ""
    sharing: str = ""
    required: bool = False
    size: int = 0
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    env: str | None = None


def parse_mount(value: str) -> RunMount:
    """Parse `type=cache,target=/root/.cache,sharing=locked` (variables already expanded)."""
    try:
        fields = next(csv.reader([value], strict=True), [])
    except csv.Error as exc:
        raise MountSyntaxError(f"failed to parse csv mounts: {exc}") from None
    m: dict = {"type": "bind"}
    readonly: bool | None = None
    for field in fields:
        key, eq, val = field.partition("=")
        key = key.lower()
        if not eq:
            if key in ("readonly", "ro"):
                readonly = True
            elif key in ("readwrite", "rw"):
                readonly = False
            elif key == "required":
                _require_type(m, key, ("secret", "ssh"))
                m["required"] = True
            else:
                raise MountSyntaxError(f"invalid field '{field}' must be a key=value pair")
            continue
        if key == "type":
            if val.lower() not in MOUNT_TYPES:
                raise MountSyntaxError(f'unsupported mount type "{val}"')
            m["type"] = val.lower()
        elif key == "from":
            m["from_"] = val
        elif key in ("source", "src"):
            m["source"] = val
        elif key in ("target", "dst", "destination"):
            m["target"] = val
        elif key in ("readonly", "ro"):
            readonly = _parse_bool(key, val)
        elif key in ("readwrite", "rw"):
            readonly = not _parse_bool(key, val)
        elif key == "required":
            _require_type(m, key, ("secret", "ssh"))
            m["required"] = _parse_bool(key, val)
        elif key == "size":
            _require_type(m, key, ("tmpfs",))
            m["size"] = _parse_ram_size(key, val)
        elif key == "id":
            m["id"] = val
        elif key == "sharing":
            if val.lower() not in SHARING_MODES:
                raise MountSyntaxError(f'unsupported sharing value "{val}"')
            m["sharing"] = val.lower()
        elif key == "mode":
            m["mode"] = _parse_uint(key, val, 8)
        elif key in ("uid", "gid"):
            m[key] = _parse_uint(key, val, 10)
        elif key == "env":
            m["env"] = val
        else:
            raise MountSyntaxError(f"unexpected key '{key}' in '{field}'")
    mount = RunMount(**m, readonly=readonly if readonly is not None else m["type"] not in ("cache", "tmpfs"))
    _validate(mount)
    return mount


def _require_type(m: dict, key: str, types: tuple[str, ...]) -> None:
    if m["type"] not in types:
        raise MountSyntaxError(f"unexpected key '{key}' for mount type '{m['type']}'")


def _parse_bool(key: str, value: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise MountSyntaxError(f"invalid value for {key}: {value}")


def _parse_uint(key: str, value: str, base: int) -> int:
    try:
        number = int(value, base)
    except ValueError:
        number = -1
    if number < 0 or number >= 1 << 32 or not value.isalnum():
        raise MountSyntaxError(f"invalid value {value} for {key}")
    return number


def _parse_ram_size(key: str, value: str) -> int:
    """docker/go-units RAMInBytes: "64m", "1.5GiB", "100" (binary multiples)."""
    match = _RAM_SIZE.match(value)
    if match is None:
        raise MountSyntaxError(f"invalid value for {key}: {value}")
    try:
        number = float(match.group(1))
    except ValueError:
        raise MountSyntaxError(f"invalid value for {key}: {value}") from None
    power = "bkmgtp".index((match.group(2) or "b").lower())
    return int(number * 1024 ** power)


def _validate(m: RunMount) -> None:
    if m.type not in ("secret", "ssh", "cache"):
        for name in ("mode", "uid", "gid"):
            if getattr(m, name) is not None:
                raise MountSyntaxError(f'{name} not allowed for "{m.type}" type mounts')
    if m.type == "secret":
        if m.from_:
            raise MountSyntaxError("secret mount should not have a from")
        if m.sharing:
            raise MountSyntaxError("secret mount should not define sharing")
        if not (m.source or m.target or m.id or m.env is not None):
            raise MountSyntaxError("invalid secret mount. one of source, target required")
        if m.source and m.id:
            raise MountSyntaxError("both source and id can't be set")
    if m.type == "ssh" and m.source:
        raise MountSyntaxError("ssh does not support source")
    if m.sharing and m.type != "cache":
        raise MountSyntaxError(f"invalid cache sharing set for {m.type} mount")
    if m.env is not None and m.type != "secret":
        raise MountSyntaxError(f"unexpected key 'env' for mount type '{m.type}'")


def secret_spec(m: RunMount) -> SecretMountSpec:
    """BuildKit's defaults: the id is `source`, `id` or the target's base name; the file goes to
    /run/secrets/<id> unless only `env` is asked for."""
    secret_id = m.source or m.id or os.path.basename(m.target.rstrip("/"))
    if not secret_id:
        raise MountSyntaxError("one of source, target required")
    target = m.target
    if m.env is None and not target:
        target = f"{SECRETS_DIR}/{os.path.basename(secret_id)}"
    return SecretMountSpec(id=secret_id, target=target, env=m.env or "", required=m.required,
                           mode=0o400 if m.mode is None else m.mode, uid=m.uid or 0, gid=m.gid or 0)


def ssh_spec(m: RunMount, index: int) -> SSHMountSpec:
    """INDEX counts the ssh mounts before this one: /run/buildkit/ssh_agent.<index> by default."""
    return SSHMountSpec(id=m.id or "default", target=m.target or SSH_AGENT_TARGET.format(index),
                        required=m.required, mode=0o600 if m.mode is None else m.mode,
                        uid=m.uid or 0, gid=m.gid or 0)


# ---- --secret and --ssh ---------------------------------------------------------------------

@dataclass(frozen=True)
class SecretSource:
    """`--secret id=ID[,src=FILE|,env=VAR]` (buildx syntax)."""

    id: str
    path: str = ""
    env: str = ""

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


# ---- a run's mounts -------------------------------------------------------------------------

@dataclass(frozen=True)
class MountInput:
    """What a mount's source input is at run time: layer directories (a stage or an image; none
    for an empty one) or the build context, and the input's cache key."""

    key: str | None
    lowerdirs: tuple[str, ...] = ()
    context: object | None = None        # a builder.context.BuildContext


@dataclass(frozen=True)
class PreparedMounts:
    mounts: tuple                        # builder.executor Mounts
    env: tuple[str, ...]                 # secrets requested as environment variables


class RunMounts:
    """Turns an ExecOp's mount specs into executor mounts for one run, and releases them after.

    SNAPSHOTS gives throwaway upper dirs (read-write binds) and scratch space (filtered context
    trees, cache seeding); EXECUTOR's run_in_rootfs reads a stage's files to seed a new cache."""

    def __init__(self, *, snapshots, executor, caches: CacheMountStore, secrets: SecretStore,
                 ssh: Mapping[str, str], cancelled: Callable[[], bool] = lambda: False):
        self.snapshots = snapshots
        self.executor = executor
        self.caches = caches
        self.secrets = secrets
        self.ssh = dict(ssh)
        self.cancelled = cancelled

    @contextlib.contextmanager
    def prepare(self, specs: Sequence[MountSpec], inputs: Sequence[MountInput]) -> Iterator[PreparedMounts]:
        from builder.executor import BindMount, SecretFile, TmpfsMount

        mounts: list = []
        env: list[str] = []
        with contextlib.ExitStack() as held:
            for spec in specs:
                if isinstance(spec, BindMountSpec):
                    mounts.append(self._bind(spec, inputs[spec.source], held))
                elif isinstance(spec, CacheMountSpec):
                    source = inputs[spec.source] if spec.source is not None else None
                    path = held.enter_context(self._cache_dir(spec, source))
                    mounts.append(BindMount(path, spec.target, readonly=spec.readonly))
                elif isinstance(spec, TmpfsMountSpec):
                    mounts.append(TmpfsMount(spec.target, spec.size))
                elif isinstance(spec, SecretMountSpec):
                    value = self.secrets.get(spec.id)
                    if value is None:
                        if spec.required:
                            raise SolveError(f"secret {spec.id}: not found")
                        continue  # an optional secret nobody gave is simply absent
                    if spec.target:
                        mounts.append(SecretFile(spec.target, value, spec.mode, spec.uid, spec.gid))
                    if spec.env:
                        env.append(f"{spec.env}={os.fsdecode(value)}")
                elif isinstance(spec, ScriptMountSpec):
                    # An in-memory file, like a secret: the script never touches the layer.
                    mounts.append(SecretFile(spec.target, spec.data.encode(), spec.mode, 0, 0))
                elif isinstance(spec, SSHMountSpec):
                    socket = self.ssh.get(spec.id)
                    if socket is None:
                        if spec.required:
                            raise SolveError(f'no SSH key "{spec.id}" forwarded from the client')
                        continue
                    mounts.append(BindMount(socket, spec.target, readonly=False))
            yield PreparedMounts(tuple(mounts), tuple(env))

    def _bind(self, spec: BindMountSpec, source: MountInput, held: contextlib.ExitStack):
        from builder.executor import LayeredMount

        if source.context is not None:
            lowerdirs = (self._context_tree(source.context, held),)
        else:
            lowerdirs = source.lowerdirs
        upper = work = None
        if not spec.readonly:
            scratch = held.enter_context(self.snapshots.scratch())  # deleted after the run
            upper, work = scratch.upperdir, scratch.workdir
        return LayeredMount(lowerdirs, spec.target, spec.path, upper, work)

    def _context_tree(self, context, held: contextlib.ExitStack) -> str:
        """The context directory itself, or with a .dockerignore a tree of hard links to the files
        it does not exclude (copies across filesystems): excluded files are not there to read."""
        if not context.rules:
            return context.root
        scratch = held.enter_context(self.snapshots.scratch())
        tree = scratch.upperdir
        for rel in context.walk(""):
            if rel:
                _link_entry(os.path.join(context.root, rel), os.path.join(tree, rel))
        return tree

    @contextlib.contextmanager
    def _cache_dir(self, spec: CacheMountSpec, source: MountInput | None) -> Iterator[str]:
        seed_key = source.key if source is not None and source.key else ""
        key = self.caches.key(spec.id, seed_key, spec.path, f"{spec.mode:o}", str(spec.uid), str(spec.gid))

        def seed(directory: str) -> None:
            if source is not None and source.lowerdirs:
                self._seed(directory, source.lowerdirs, spec.path)
            os.chown(directory, spec.uid, spec.gid)
            os.chmod(directory, spec.mode)

        try:
            with self.caches.acquire(key, spec.sharing, seed, self.cancelled) as path:
                yield path
        except InterruptedError:
            raise SolveError("build cancelled") from None

    def _seed(self, directory: str, lowerdirs: tuple[str, ...], path: str) -> None:
        """Copy PATH of a stage or image into the new cache DIRECTORY."""
        from builder.executor import RootFS
        from builder.solver.fileops import resolve_in_root

        def copy(root: str) -> None:
            src = resolve_in_root(root, path)
            if not os.path.isdir(src):
                raise SolveError(f'cache mount source "{path}": not a directory')
            subprocess.run(["cp", "-a", "--", src + "/.", directory], check=True, capture_output=True)

        with self.snapshots.scratch() as scratch:  # the view needs an upper dir; nothing is written
            self.executor.run_in_rootfs(RootFS(lowerdirs, scratch.upperdir, scratch.workdir), copy)


def _link_entry(src: str, dst: str) -> None:
    st = os.lstat(src)
    if stat.S_ISDIR(st.st_mode):
        os.mkdir(dst)
        os.chmod(dst, stat.S_IMODE(st.st_mode))
        os.lchown(dst, st.st_uid, st.st_gid)
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
        os.lchown(dst, st.st_uid, st.st_gid)
    elif stat.S_ISREG(st.st_mode):
        try:
            os.link(src, dst)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            shutil.copy2(src, dst)
            os.lchown(dst, st.st_uid, st.st_gid)
