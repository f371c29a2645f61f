"""The solver: cache keys for every vertex, then run what the cache does not have.

Keys follow BuildKit's idea: a key digests the op's definition and its inputs' keys, and for
ops that read files (COPY/ADD from the context) the checksums of what they read. A key with a
record in the cache reuses that layer; only misses run, each as soon as its inputs are ready,
at most `jobs` at a time.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone

from builder.cache.records import CacheRecord
from builder.context import BuildContext
from builder.errors import BuildError, ExecutionError, SolveError
from builder.llb import CopyAction, ExecOp, FileOp, ImageSource, LocalSource, MkdirAction, Vertex, canonical_json
from builder.solver import progress as events
from builder.executor.linux import MNT_DETACH, umount2
from builder.snapshot.overlay import clone_tree, mount_overlay, move_mount
from builder.solver.fileops import apply_copy, apply_mkdir
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
                 names: dict[str, str] | None = None, source_date_epoch: int | None = None):
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
            return _key(op.definition(), self._input_key(vertex.inputs[0]))
        if isinstance(op, FileOp):
            content = []
            for action in op.actions:
                if isinstance(action, CopyAction):
                    source = vertex.inputs[action.source]
                    if source is not None and isinstance(source.op, LocalSource):
                        try:
                            content.append(self.context.checksum(action.paths))
                        except BuildError as error:
                            raise SolveError(f"{self._name(vertex)}: {error}") from None
                    else:
                        content.append(self._input_key(source))
            return _key(op.definition(), self._input_key(vertex.inputs[0]), content)
        raise SolveError(f"unknown op {type(op).__name__}")

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
        from builder.executor import ProcessSpec, RootFS
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

        spec = ProcessSpec(args=op.args, env=op.env, cwd=op.cwd, user=op.user, hostname=op.hostname,
                           network=op.network)
        code = self.executor.run(rootfs, spec, output=output)
        if partial:
            tail.append(partial.decode(errors="replace"))
        if code != 0:
            raise ExecutionError(" ".join(op.args), code, list(tail), step=self._name(vertex))

    def _file(self, vertex: Vertex, op: FileOp, rootfs) -> None:
        sources: dict[int, str | tuple[str, ...]] = {}
        for action in op.actions:
            if isinstance(action, CopyAction):
                source = vertex.inputs[action.source]
                if source is None:
                    sources[action.source] = ()
                elif isinstance(source.op, LocalSource):
                    sources[action.source] = self.context.root
                else:
                    sources[action.source] = self._lowerdirs(self.results[source].layers)
        rules = self.context.rules
        self.executor.run_in_rootfs(rootfs, lambda merged: _apply_file_actions(merged, op, sources, rules))


def _apply_file_actions(merged: str, op: FileOp, sources, context_rules) -> None:
    """Runs in the step's private mount namespace (see Executor.run_in_rootfs): other stages'
    filesystems are mounted read-only for the copy and unmounted before returning."""
    import shutil
    import tempfile

    mount_root = tempfile.mkdtemp(prefix="build-image-src-")
    mounted: dict[int, str] = {}
    try:
        for index, source in sources.items():
            if isinstance(source, str):
                mounted[index] = source
            else:
                mounted[index] = _mount_layers(source, os.path.join(mount_root, str(index)))
        for action in op.actions:
            if isinstance(action, MkdirAction):
                apply_mkdir(merged, action)
            else:
                rules = context_rules if isinstance(sources[action.source], str) else ()
                apply_copy(merged, mounted[action.source], action, rules)
    finally:
        for index, path in mounted.items():
            if not isinstance(sources[index], str) and os.path.ismount(path):
                umount2(path, MNT_DETACH)
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
