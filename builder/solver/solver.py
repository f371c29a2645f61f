"""The solver: cache keys for every vertex, then run what the cache does not have.

Keys follow BuildKit's idea: a key digests the op's definition and its inputs' keys, and for
ops that read files (COPY/ADD from the context) the checksums of what they read. A key with a
record in the cache reuses that layer; only misses run, each as soon as its inputs are ready,
at most `jobs` at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import deque
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone

from builder.cache.cache_mounts import CacheMountStore
from builder.cache.records import CacheRecord
from builder.context import BuildContext
from builder.errors import BuildError, ExecutionError, SolveError, SourceNotFound
from builder.llb import CopyAction, ExecOp, FileOp, ImageSource, LocalSource, MkdirAction, Vertex, canonical_json
from builder.llb.ops import BindMountSpec, HttpSource, InlineFile, MergeOp
from builder import events
from builder.plumbing.linux import MNT_DETACH, clone_tree, move_mount, umount2
from builder.session import SecretStore
from builder.snapshot.overlay import mount_overlay
from builder.solver.fileops import apply_copy, apply_mkdir
from builder.solver.mounts import MountInput, RunMounts
from builder.solver.sources import ImageSources

_TAIL_LINES = 10


@dataclass(frozen=True)
class LayerRef:
    digest: str
    diff_id: str
    size: int
    media_type: str


@dataclass(frozen=True)
class Result:
    """A vertex's filesystem: its layers, base first, and when its own layer was made."""

    layers: tuple[LayerRef, ...]
    created: str | None = None
    cached: bool = False


EMPTY = Result(())


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def epoch_rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(*parts) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(list(parts))).hexdigest()


class Solver:
    def __init__(self, store, executor, sources: ImageSources, context: BuildContext, *,
                 jobs: int | None = None, no_cache: bool = False, progress: events.Progress = events.ignore,
                 names: dict[str, str] | None = None, source_date_epoch: int | None = None,
                 secrets: SecretStore | None = None, ssh: Mapping[str, str] | None = None):
        self.store = store
        self.executor = executor
        self.sources = sources
        self.context = context
        self.jobs = max(1, jobs or os.cpu_count() or 1)
        self.no_cache = no_cache
        self.progress = progress
        self.names = names or {}
        self.source_date_epoch = source_date_epoch
        self.keys: dict[Vertex, str] = {}
        self.results: dict[Vertex, Result] = {}
        self._cancelled = threading.Event()
        self._downloads: dict[Vertex, object] = {}   # ADD <url>: the fetched file of each HttpSource
        self.secrets = secrets or SecretStore()   # RUN --mount=type=secret values, never in a key
        self.ssh = dict(ssh or {})                # RUN --mount=type=ssh: agent id -> socket path

    # -- keys
    def compute_keys(self, vertices: tuple[Vertex, ...]) -> None:
        for vertex in vertices:
            self.keys[vertex] = self._compute_key(vertex)

    def _input_key(self, vertex: Vertex | None) -> str | None:
        return None if vertex is None else self.keys[vertex]

    def _compute_key(self, vertex: Vertex) -> str:
        op = vertex.op
        if isinstance(op, ImageSource):
            return _key("image", self.sources.by_ref(op.ref).manifest_digest)
        if isinstance(op, LocalSource):
            return _key("local", op.name)
        if isinstance(op, ExecOp):
            # Mount sources are keyed like COPY sources; cache contents, secrets and agents are not.
            return _key(op.definition(), self._input_key(vertex.inputs[0]), *self._mount_keys(vertex, op))
        if isinstance(op, FileOp):
            content = []
            for action in op.actions:
                if isinstance(action, CopyAction):
                    source = vertex.inputs[action.source]
                    if source is not None and isinstance(source.op, LocalSource):
                        content.append(self._context_checksum(vertex, action))
                    else:
                        content.append(self._input_key(source))
            return _key(op.definition(), self._input_key(vertex.inputs[0]), content)
        if isinstance(op, HttpSource):
            download = self._fetch(vertex, op)
            # As BuildKit's HTTP source: the content, the file name and mtime, not the URL.
            return _key(op.kind, op.filename, download.digest, download.last_modified)
        if isinstance(op, InlineFile):
            return _key(op.definition())
        if isinstance(op, MergeOp):
            return _key(op.definition(), [self._input_key(i) for i in vertex.inputs])
        raise SolveError(f"unknown op {type(op).__name__}")

    def _context_checksum(self, vertex: Vertex, action: CopyAction) -> str:
        """The checksum of what a COPY reads from the context. For --parents the files are those
        below the pivot that the pattern selects: the same as the path without the "/./" pivot,
        except with '**' (which only patternmatcher knows), where the whole pivot counts."""
        paths = action.paths
        if action.parents:
            paths = tuple(p.partition("/./")[0] or "/" if "**" in p else p.replace("/./", "/") for p in paths)
        try:
            return self.context.checksum(paths)
        except SourceNotFound as error:
            raise SourceNotFound(f"{self._name(vertex)}: {error}") from None
        except BuildError as error:
            raise SolveError(f"{self._name(vertex)}: {error}") from None

    def _fetch(self, vertex: Vertex, op: HttpSource):
        from builder.solver.http import fetch

        download = self._downloads.get(vertex)
        if download is None:
            try:
                download = fetch(op.url, op.filename, op.checksum, os.path.join(self.store.root, "http"))
            except BuildError as error:
                raise SolveError(f"{self._name(vertex)}: {error}") from None
            self._downloads[vertex] = download
        return download

    def _mount_keys(self, vertex: Vertex, op: ExecOp) -> list[str | None]:
        keys: list[str | None] = []
        for spec in op.mounts:
            index = getattr(spec, "source", None)
            source = vertex.inputs[index] if index is not None else None
            if isinstance(spec, BindMountSpec) and source is not None and isinstance(source.op, LocalSource):
                try:
                    keys.append(self.context.checksum((spec.path,)))
                except BuildError as error:
                    raise SolveError(f"{self._name(vertex)}: {error}") from None
            else:
                keys.append(self._input_key(source))
        return keys

    # -- running
    def solve(self, vertices: tuple[Vertex, ...]) -> dict[Vertex, Result]:
        self.compute_keys(vertices)
        pending = list(vertices)
        running: dict[Future, Vertex] = {}
        done: set[Vertex] = set()
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="solve")
        try:
            while pending or running:
                for vertex in list(pending):
                    if all(i is None or i in done for i in vertex.inputs) and len(running) < self.jobs:
                        pending.remove(vertex)
                        running[pool.submit(self._solve_one, vertex)] = vertex
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in finished:
                    vertex = running.pop(future)
                    self.results[vertex] = future.result()  # re-raises the step's error
                    done.add(vertex)
        except BaseException:
            self.cancel()
            for future in running:
                future.cancel()
            wait(list(running))
            raise
        finally:
            pool.shutdown(wait=True)
        return self.results

    def cancel(self) -> None:
        """Stops the build: running containers are killed, nothing new starts."""
        self._cancelled.set()
        kill = getattr(self.executor, "kill_all", None)
        if kill is not None:
            kill()

    def _name(self, vertex: Vertex) -> str:
        return self.names.get(vertex.digest, type(vertex.op).__name__)

    def _input(self, vertex: Vertex | None) -> Result:
        return EMPTY if vertex is None else self.results[vertex]

    def _solve_one(self, vertex: Vertex) -> Result:
        if self._cancelled.is_set():
            raise SolveError("build cancelled")
        op = vertex.op
        if isinstance(op, LocalSource):
            return EMPTY
        if isinstance(op, ImageSource):
            return self._image_source(vertex, op)
        if isinstance(op, (HttpSource, InlineFile)):
            return EMPTY  # read by the file ops that copy from them (see _file)
        if isinstance(op, MergeOp):
            merged = [self._input(i) for i in vertex.inputs]
            return Result(tuple(layer for r in merged for layer in r.layers), merged[-1].created,
                          cached=all(r.cached for r in merged))
        key = self.keys[vertex]
        parent = self._input(vertex.inputs[0])
        name = self._name(vertex)
        if not self.no_cache:
            record = self.store.records.get(key)
            if record is not None and self.store.blobs.has(record.layer_digest):
                self.progress(events.Started(vertex.digest, name))
                self.progress(events.Finished(vertex.digest, cached=True))
                layer = LayerRef(record.layer_digest, record.diff_id, record.size, record.media_type)
                return Result(parent.layers + (layer,), record.created, cached=True)
        self.progress(events.Started(vertex.digest, name))
        try:
            layer = self._run(vertex, parent)
        except BaseException as error:
            self.progress(events.Finished(vertex.digest, error=str(error) or type(error).__name__))
            raise
        created = epoch_rfc3339(self.source_date_epoch) if self.source_date_epoch is not None else now_rfc3339()
        self.store.records.put(CacheRecord(key, layer.digest, layer.diff_id, layer.size, layer.media_type, created))
        self.progress(events.Finished(vertex.digest))
        return Result(parent.layers + (layer,), created)

    def _image_source(self, vertex: Vertex, op: ImageSource) -> Result:
        """A base image's layers, fetched now if the store lacks them (exports need them)."""
        image = self.sources.by_ref(op.ref)
        if len(image.config.diff_ids) != len(image.layers):
            raise SolveError(f"{op.ref}: config lists {len(image.config.diff_ids)} layers, "
                             f"manifest {len(image.layers)}")
        name = self._name(vertex)
        self.progress(events.Started(vertex.digest, name))
        try:
            fetched = self.sources.ensure_layers(op.ref)
        except BaseException as error:
            self.progress(events.Finished(vertex.digest, error=str(error) or type(error).__name__))
            raise
        self.progress(events.Finished(vertex.digest, cached=not fetched))
        return Result(tuple(LayerRef(d.digest, diff_id, d.size, d.media_type)
                            for d, diff_id in zip(image.layers, image.config.diff_ids)))

    def _lowerdirs(self, layers: tuple[LayerRef, ...]) -> tuple[str, ...]:
        from builder.snapshot.layers import chain_ids

        dirs = []
        for layer, chain_id in zip(layers, chain_ids([l.diff_id for l in layers])):
            dirs.append(self.store.snapshots.ensure(chain_id, lambda d=layer.digest: self.store.blobs.open(d)))
        return tuple(dirs)

    def _run(self, vertex: Vertex, parent: Result) -> LayerRef:
        from builder.executor import RootFS
        from builder.snapshot.layers import chain_ids, write_layer

        lowerdirs = self._lowerdirs(parent.layers)
        with self.store.snapshots.scratch() as scratch:
            rootfs = RootFS(lowerdirs, scratch.upperdir, scratch.workdir)
            op = vertex.op
            if isinstance(op, ExecOp):
                self._exec(vertex, op, rootfs)
            else:
                self._file(vertex, op, rootfs)
            if self._cancelled.is_set():
                raise SolveError("build cancelled")
            layer = write_layer(scratch.upperdir, self.store.blobs, source_date_epoch=self.source_date_epoch)
            chain = chain_ids([l.diff_id for l in parent.layers] + [layer.diff_id])[-1]
            self.store.snapshots.commit(scratch, chain)
        return LayerRef(layer.digest, layer.diff_id, layer.size, layer.media_type)

    def _exec(self, vertex: Vertex, op: ExecOp, rootfs) -> None:
        from builder.executor import ProcessSpec

        tail: deque[str] = deque(maxlen=_TAIL_LINES)
        partial = bytearray()

        def output(fd: int, chunk: bytes) -> None:
            self.progress(events.Output(vertex.digest, chunk))
            partial.extend(chunk)
            *lines, rest = partial.split(b"\n")
            for line in lines:
                tail.append(line.decode(errors="replace"))
            partial[:] = rest

        with contextlib.ExitStack() as held:
            try:
                prepared = held.enter_context(self._run_mounts().prepare(op.mounts, self._mount_inputs(vertex)))
            except SolveError as error:
                raise SolveError(f"{self._name(vertex)}: {error}") from None
            spec = ProcessSpec(args=op.args, env=op.env + prepared.env, cwd=op.cwd, user=op.user,
                               hostname=op.hostname, network=op.network,
                               extra_hosts=op.extra_hosts)
            code = self.executor.run(rootfs, spec, prepared.mounts, output=output)
        if partial:
            tail.append(partial.decode(errors="replace"))
        if code != 0:
            raise ExecutionError(" ".join(op.args), code, list(tail), step=self._name(vertex))

    def _run_mounts(self) -> RunMounts:
        return RunMounts(snapshots=self.store.snapshots, executor=self.executor,
                         caches=CacheMountStore(os.path.join(self.store.root, "cache", "mounts")),
                         secrets=self.secrets, ssh=self.ssh, cancelled=self._cancelled.is_set)

    def _mount_inputs(self, vertex: Vertex) -> list[MountInput]:
        """What each vertex input is at run time, by input index (0, the root, is unused)."""
        inputs = [MountInput(None)]
        for source in vertex.inputs[1:]:
            if source is None:
                inputs.append(MountInput(None))
            elif isinstance(source.op, LocalSource):
                inputs.append(MountInput(self.keys[source], context=self.context))
            else:
                inputs.append(MountInput(self.keys[source], self._lowerdirs(self.results[source].layers)))
        return inputs

    def _file(self, vertex: Vertex, op: FileOp, rootfs) -> None:
        import shutil
        import tempfile

        sources: dict[int, _CopySource] = {}
        scratch = tempfile.mkdtemp(prefix="inline-", dir=self.store.run_dir)
        try:
            for action in op.actions:
                if not isinstance(action, CopyAction) or action.source in sources:
                    continue
                source = vertex.inputs[action.source]
                if source is None:
                    sources[action.source] = _CopySource(())
                elif isinstance(source.op, LocalSource):
                    # The context arrives root-owned, as BuildKit's file transfer resets owners.
                    sources[action.source] = _CopySource(self.context.root, self.context.rules, reset_owner=True)
                elif isinstance(source.op, HttpSource):
                    sources[action.source] = _CopySource(self._fetch(source, source.op).directory)
                elif isinstance(source.op, InlineFile):
                    sources[action.source] = _CopySource(_write_inline(source.op, scratch, action.source))
                else:
                    sources[action.source] = _CopySource(self._lowerdirs(self.results[source].layers))
            self.executor.run_in_rootfs(
                rootfs, lambda merged: _apply_file_actions(merged, op, sources, self.store.run_dir))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


@dataclass(frozen=True)
class _CopySource:
    """Where a copy action reads from: a host directory, or a stage's layers to mount read-only."""

    tree: str | tuple[str, ...]
    rules: tuple = ()              # the context's .dockerignore rules
    reset_owner: bool = False      # copied entries become 0:0 (the context)


def _write_inline(op: InlineFile, scratch: str, index: int) -> str:
    """A heredoc's one-file tree: mode 0644 and the current time, as BuildKit's Mkfile."""
    tree = os.path.join(scratch, str(index))
    path = os.path.join(tree, op.name.lstrip("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(op.data)
    os.chmod(path, 0o644)
    return tree


def _apply_file_actions(merged: str, op: FileOp, sources: dict[int, _CopySource], scratch_dir: str) -> None:
    """Runs in the step's private mount namespace (see Executor.run_in_rootfs): other stages'
    filesystems are mounted read-only for the copy and unmounted before returning."""
    import shutil
    import tempfile

    mount_root = tempfile.mkdtemp(prefix="src-", dir=scratch_dir)
    mounted: dict[int, str] = {}
    try:
        for index, source in sources.items():
            if isinstance(source.tree, str):
                mounted[index] = source.tree
            else:
                mounted[index] = os.path.join(mount_root, str(index))
                _mount_layers(source.tree, mounted[index])
        for action in op.actions:
            if isinstance(action, MkdirAction):
                apply_mkdir(merged, action)
            else:
                source = sources[action.source]
                apply_copy(merged, mounted[action.source], action, rules=source.rules,
                           reset_owner=source.reset_owner)
    finally:
        # Not os.path.ismount: a bind of a directory on the same filesystem does not look like one.
        for index, path in mounted.items():
            if sources[index].tree and not isinstance(sources[index].tree, str):
                try:
                    umount2(path, MNT_DETACH)
                except OSError:
                    pass  # the mount failed before it was made
        shutil.rmtree(mount_root, ignore_errors=True)


def _mount_layers(lowerdirs: tuple[str, ...], target: str) -> str:
    """A read-only view of a stage's filesystem at `target` (an empty dir for no layers)."""
    os.makedirs(target)
    if len(lowerdirs) == 1:
        fd = clone_tree(lowerdirs[0], readonly=True)
        try:
            move_mount(fd, target)
        finally:
            os.close(fd)
    elif lowerdirs:
        mount_overlay(lowerdirs, None, None, target)
    return target
