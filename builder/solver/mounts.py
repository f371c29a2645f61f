"""RUN --mount at run time: the mounts of one run.

The syntax of ``--mount`` is the language's (builder/grammar/runmount.py); the converter turns
it into the `MountSpec`s of an ExecOp, and the secrets and agent sockets come from the client's
session (builder/session.py). At run time `RunMounts.prepare` turns those specs into executor
mounts: stage and image filesystems as read-only overlays (a read-write bind gets a throwaway
upper dir), cache directories from the store, tmpfs, secrets as in-memory files or environment
variables, and forwarded SSH agent sockets.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence

from builder.cache.cache_mounts import CacheMountStore
from builder.errors import SolveError
from builder.llb.ops import (BindMountSpec, CacheMountSpec, MountSpec, ScriptMountSpec, SecretMountSpec, SSHMountSpec,
                             TmpfsMountSpec)
from builder.plumbing.records import dataclass
from builder.session import SecretStore

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

    SNAPSHOTS (a builder.snapshot Snapshotter) gives the mounts: read-only views, throwaway
    writable ones (read-write binds), and scratch space (filtered context trees); EXECUTOR's run_in_rootfs reads a stage's files to seed a new cache."""

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
        if spec.readonly:
            mount = self.snapshots.view(lowerdirs)
        else:
            mount = held.enter_context(self.snapshots.writable(lowerdirs))  # writes dropped after the run
        return LayeredMount(mount.lowerdirs, spec.target, spec.path, mount.upperdir, mount.workdir, mount.kind)

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
        from builder.solver.fileops import resolve_in_root

        def copy(root: str) -> None:
            src = resolve_in_root(root, path)
            if not os.path.isdir(src):
                raise SolveError(f'cache mount source "{path}": not a directory')
            subprocess.run(["cp", "-a", "--", src + "/.", directory], check=True, capture_output=True)

        self.executor.run_in_rootfs(self.snapshots.view(lowerdirs), copy)


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
