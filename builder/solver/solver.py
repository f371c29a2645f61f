"""The solver: cache keys for every vertex, then run what the cache does not have.

Keys follow BuildKit's idea: a key digests the op's definition and its inputs' keys, and for
ops that read files (COPY/ADD from the context) the checksums of what they read. A key with a
record in the cache reuses that layer; only misses run, each as soon as its inputs are ready,
at most `jobs` at a time.

What an op kind keys on and how it runs lives with the op kind (builder/solver/ops/); the
solver only schedules, deduplicates (one op per distinct vertex), caches the layers of the ops
that add one, and reports progress.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from builder.cache.records import CacheRecord
from builder.context import BuildContext
from builder.errors import BlobNotFound, BuildError, SolveError
from builder import events
from builder.llb import Vertex
from builder.session import SecretStore
from builder.solver.ops import op_class
from builder.solver.ops.base import EMPTY, LayerRef, Result, SolverOp, digest_key, epoch_rfc3339, now_rfc3339
from builder.solver.sources import ImageSources

_SIGNAL_POLL_SECONDS = 0.2

__all__ = ["EMPTY", "LayerRef", "Result", "Solver", "epoch_rfc3339", "layer_timestamps", "now_rfc3339"]


def layer_timestamps(layer_epoch: int | None) -> str:
    """What a layer's mtimes are, as its cache record says: clamped to an epoch, or as made."""
    return "unclamped" if layer_epoch is None else f"clamped:{layer_epoch}"


class Solver:
    def __init__(self, store, executor, sources: ImageSources, context: BuildContext, *,
                 jobs: int | None = None, no_cache: bool = False, progress: events.Progress = events.ignore,
                 names: dict[str, str] | None = None, source_date_epoch: int | None = None,
                 secrets: SecretStore | None = None, ssh: Mapping[str, str] | None = None,
                 no_cache_for: frozenset[str] = frozenset(), named_contexts: Mapping[str, BuildContext] = {},
                 rewrite_timestamp: bool = True):
        self.store = store
        self.executor = executor
        self.sources = sources
        self.context = context
        self.named_contexts = dict(named_contexts)   # --build-context NAME=DIR
        self.jobs = max(1, jobs or os.cpu_count() or 1)
        self.no_cache = no_cache
        self.no_cache_for = no_cache_for        # vertex digests that ignore the cache (--no-cache-filter)
        self.progress = progress
        self.names = names or {}
        self.source_date_epoch = source_date_epoch
        # rewrite-timestamp: new layers' mtimes are clamped to the epoch (base layers never are).
        self.layer_epoch = source_date_epoch if rewrite_timestamp else None
        self.layer_timestamps = layer_timestamps(self.layer_epoch)
        self.keys: dict[Vertex, str] = {}
        self.results: dict[Vertex, Result] = {}
        self.ops: dict[Vertex, SolverOp] = {}   # one per distinct vertex: equal vertices share it
        self._cancelled = threading.Event()
        self.secrets = secrets or SecretStore()   # RUN --mount=type=secret values, never in a key
        self.ssh = dict(ssh or {})                # RUN --mount=type=ssh: agent id -> socket path

    # -- what ops see of the solve (builder.solver.ops.base.SolveState)
    def op(self, vertex: Vertex) -> SolverOp:
        op = self.ops.get(vertex)
        if op is None:
            op = self.ops[vertex] = op_class(vertex.op)(vertex, self)
        return op

    def key(self, vertex: Vertex | None) -> str | None:
        return None if vertex is None else self.keys[vertex]

    def result(self, vertex: Vertex | None) -> Result:
        return EMPTY if vertex is None else self.results[vertex]

    def name(self, vertex: Vertex) -> str:
        return self.names.get(vertex.digest, type(vertex.op).__name__)

    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def lowerdirs(self, layers: tuple[LayerRef, ...]) -> tuple[str, ...]:
        """The snapshot directory of each layer, unpacked from its blob if needed."""
        from builder.snapshot.layers import chain_ids

        dirs = []
        for layer, chain_id in zip(layers, chain_ids([l.diff_id for l in layers])):
            dirs.append(self.store.snapshots.ensure(chain_id, lambda d=layer.digest: self.store.blobs.open(d)))
        return tuple(dirs)

    # -- keys
    def compute_keys(self, vertices: tuple[Vertex, ...]) -> None:
        """Inputs come before the vertices that read them."""
        for vertex in vertices:
            if vertex not in self.keys:
                try:
                    self.keys[vertex] = self.op(vertex).cache_key()
                except BuildError as error:
                    # The step's own block shows the failure, as BuildKit's does for a cache key.
                    if self.op(vertex).reports_progress and vertex.digest in self.names:
                        self.progress(events.Started(vertex.digest, self.name(vertex)))
                        self.progress(events.Finished(vertex.digest, error=str(error)))
                    error.vertex = error.vertex or vertex.digest
                    raise

    # -- running
    def solve(self, vertices: tuple[Vertex, ...]) -> dict[Vertex, Result]:
        self.compute_keys(vertices)
        pending = list(dict.fromkeys(vertices))
        running: dict[Future, Vertex] = {}
        done: set[Vertex] = set()
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="solve")
        try:
            while pending or running:
                for vertex in list(pending):
                    if all(i is None or i in done for i in vertex.inputs) and len(running) < self.jobs:
                        pending.remove(vertex)
                        running[pool.submit(self._solve_one, vertex)] = vertex
                # A timeout, so this thread runs Python often: a SIGINT the kernel delivered to a
                # worker thread is only handled (KeyboardInterrupt) when the main thread runs.
                finished, _ = wait(list(running), timeout=_SIGNAL_POLL_SECONDS, return_when=FIRST_COMPLETED)
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

    def _solve_one(self, vertex: Vertex) -> Result:
        if self._cancelled.is_set():
            raise SolveError("build cancelled")
        op = self.ops[vertex]
        inputs = tuple(self.result(i) for i in vertex.inputs)
        if not op.reports_progress:
            with op.acquire():
                return op.exec(inputs)
        key = self.keys[vertex]
        if op.adds_layer and not self.no_cache and vertex.digest not in self.no_cache_for:
            hit = self._cached(key, inputs[0])
            if hit is not None:
                self.progress(events.Started(vertex.digest, self.name(vertex)))
                self.progress(events.Finished(vertex.digest, cached=True))
                return hit
        self.progress(events.Started(vertex.digest, self.name(vertex)))
        try:
            with op.acquire():
                result = op.exec(inputs)
        except BaseException as error:
            self.progress(events.Finished(vertex.digest, error=str(error) or type(error).__name__))
            if isinstance(error, BuildError):
                error.vertex = error.vertex or vertex.digest
            raise
        if op.adds_layer:
            layer = result.layers[-1]
            self.store.records.put(CacheRecord(self.record_key(key), layer.digest, layer.diff_id, layer.size,
                                               layer.media_type, result.created, self.layer_timestamps))
        self.progress(events.Finished(vertex.digest, cached=result.cached))
        return result

    def _blob_whole(self, digest: str, size: int) -> bool:
        try:
            return self.store.blobs.size(digest) == size
        except BlobNotFound:
            return False

    def record_key(self, key: str) -> str:
        """A clamped and an unclamped layer of one step are two records: the step's cache key
        with the layer's timestamp mode."""
        return digest_key("layer", key, self.layer_timestamps)

    def _cached(self, key: str, parent: Result) -> Result | None:
        """The result a cache record gives: the parent's layers plus the recorded layer, if its
        blob is still in the store, whole (a power loss may have cut a blob short)."""
        record = self.store.records.get(self.record_key(key))
        if (record is None or record.timestamps != self.layer_timestamps
                or not self._blob_whole(record.layer_digest, record.size)):
            return None
        layer = LayerRef(record.layer_digest, record.diff_id, record.size, record.media_type)
        return Result(parent.layers + (layer,), record.created, cached=True)
