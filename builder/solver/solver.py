"""The solver: cache keys for every vertex, then run what the cache does not have.

Keys follow BuildKit's idea: a key digests the op's definition and its inputs' keys, and for
ops that read files (COPY/ADD from the context) the checksums of what they read. A key with a
record in the cache reuses that layer; only misses run, each as soon as its inputs are ready,
at most `jobs` at a time. Only what the results need is solved: a step that will hit needs only
the step under it, so a step that would run only to feed hits is skipped (and solved after all if
the hit is refused). A record is looked up locally, then in the imported caches (--cache-from).

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
_NEEDS_INPUTS = Result(())   # _solve_one's answer for a step expected to hit that missed
_REPORTED = Result(())       # its answer for a step only reported CACHED (nothing needs its layer)

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
                 rewrite_timestamp: bool = True, explainer=None, imported=None, every_result: bool = False):
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
        self._expected_hits: set[Vertex] = set()
        self.secrets = secrets or SecretStore()   # RUN --mount=type=secret values, never in a key
        self.ssh = dict(ssh or {})                # RUN --mount=type=ssh: agent id -> socket path
        self.explainer = explainer                # builder.solver.explain.MissExplainer: why a step runs
        # --cache-from: asked on a local miss (`lookup(record key, parent layers, blobs)`); it
        # fetches and verifies the one blob a hit needs (builder.remotecache.importer.ImportedCache).
        self.imported = imported
        # A mode=max cache export wants every step's result; else a step that an imported record
        # gives and nothing reads is only reported CACHED, and its blob never downloaded.
        self.every_result = every_result
        self._report_only: set[Vertex] = set()

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

    def ignores_cache(self, vertex: Vertex) -> bool:
        return self.no_cache or vertex.digest in self.no_cache_for

    def lowerdirs(self, layers: tuple[LayerRef, ...]) -> tuple[str, ...]:
        """The committed snapshots of LAYERS (made from their blobs if needed): the parent a
        step's snapshot is prepared over, or a read-only view is mounted of."""
        from builder.snapshot.layers import chain_ids

        chain = [(chain_id, lambda d=layer.digest: self.store.blobs.open(d))
                 for layer, chain_id in zip(layers, chain_ids([l.diff_id for l in layers]))]
        return self.store.snapshotter.lowerdirs(chain)

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
        order = list(dict.fromkeys(vertices))
        hits = {v: self._expected_hit(v) for v in order}
        self._expected_hits = {v for v, kind in hits.items() if kind}
        pending = self._to_run(order, {v for v, kind in hits.items() if kind == "imported"})
        running: dict[Future, Vertex] = {}
        done: set[Vertex] = set()
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="solve")
        try:
            while pending or running:
                for vertex in list(pending):
                    if all(i is None or i in done for i in self._required(vertex)) and len(running) < self.jobs:
                        pending.remove(vertex)
                        running[pool.submit(self._solve_one, vertex)] = vertex
                # A timeout, so this thread runs Python often: a SIGINT the kernel delivered to a
                # worker thread is only handled (KeyboardInterrupt) when the main thread runs.
                finished, _ = wait(list(running), timeout=_SIGNAL_POLL_SECONDS, return_when=FIRST_COMPLETED)
                for future in finished:
                    vertex = running.pop(future)
                    result = future.result()  # re-raises the step's error
                    if result is _NEEDS_INPUTS:   # an expected hit missed after all: solve its inputs first
                        self._expected_hits.discard(vertex)
                        queued = set(pending) | set(running.values()) | (done - self._report_only)
                        more = self._closure(self._required(vertex), queued)
                        self._report_only.difference_update(more)   # now their results are needed
                        done.difference_update(more)
                        pending.extend(more)
                        pending.append(vertex)
                        continue
                    if result is _REPORTED:
                        done.add(vertex)
                        continue
                    self.results[vertex] = result
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

    # -- what needs solving: BuildKit's lazy walk from the results back
    def _expected_hit(self, vertex: Vertex) -> str | None:
        """Where this step's cache lookup will hit: "local" (a record with its blob), "imported"
        (an imported record, still to be checked), or None."""
        if not self.op(vertex).adds_layer or self.ignores_cache(vertex):
            return None
        record_key = self.record_key(self.keys[vertex])
        record = self.store.records.get(record_key)
        if (record is not None and record.timestamps == self.layer_timestamps
                and self._blob_whole(record.layer_digest, record.size)):
            return "local"
        return "imported" if self.imported is not None and self.imported.has(record_key) else None

    def _required(self, vertex: Vertex) -> tuple[Vertex | None, ...]:
        """The inputs a vertex waits for: a step that hits only stacks its layer on input 0's."""
        return vertex.inputs[:1] if vertex in self._expected_hits else vertex.inputs

    def _closure(self, roots, known: set) -> list[Vertex]:
        """ROOTS and what they require, less KNOWN."""
        found: list[Vertex] = []
        stack = [v for v in roots if v is not None]
        while stack:
            vertex = stack.pop()
            if vertex in known:
                continue
            known.add(vertex)
            found.append(vertex)
            stack.extend(v for v in self._required(vertex) if v is not None)
        return found

    def _to_run(self, order: list[Vertex], imported_hits: set[Vertex]) -> list[Vertex]:
        """The vertices to solve, in ORDER: what the results (the vertices no other reads) require,
        plus steps that hit on top of those (cheap, and shown CACHED; one an imported record gives
        is only shown, unless every result is wanted). A step that would run only to feed a step
        that hits is skipped: mode=min and inline caches give a stage's last steps without its
        builder stages."""
        consumed = {i for v in order for i in v.inputs if i is not None}
        needed = set(self._closure([v for v in order if v not in consumed], set()))
        kept: set[Vertex] = set()
        for vertex in order:
            if vertex not in needed:
                if self.op(vertex).adds_layer and vertex not in self._expected_hits:
                    continue
                if not all(i is None or i in kept for i in self._required(vertex)):
                    continue
                # Shown only: an imported hit, or what stacks on one (its layers are not here).
                reported = vertex in imported_hits or any(i in self._report_only for i in self._required(vertex))
                if reported and not self.every_result:
                    self._report_only.add(vertex)
            kept.add(vertex)
        return [v for v in order if v in kept]

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
        if vertex in self._report_only:
            if op.reports_progress:
                parents = tuple(p.digest for p in self.step_parents(vertex))
                self.progress(events.Started(vertex.digest, self.name(vertex), parents))
                self.progress(events.Finished(vertex.digest, cached=True))
            return _REPORTED
        inputs = tuple(self.results.get(i, EMPTY) if i is not None else EMPTY for i in vertex.inputs)
        if not op.reports_progress:
            with op.acquire():
                return op.exec(inputs)
        key = self.keys[vertex]
        parents = tuple(p.digest for p in self.step_parents(vertex))
        if op.adds_layer and not self.ignores_cache(vertex):
            hit = self._cached(key, inputs[0])
            if hit is not None:
                self.progress(events.Started(vertex.digest, self.name(vertex), parents))
                self.progress(events.Finished(vertex.digest, cached=True))
                return hit
        if any(i is not None and i not in self.results for i in vertex.inputs):
            return _NEEDS_INPUTS   # it was expected to hit; the scheduler solves its inputs, then it again
        # A layer step that gets here runs: its reason is known now. Other steps (a base image)
        # are CACHED unless they had to fetch, which only exec tells.
        miss = self._explain(vertex) if op.adds_layer else None
        self.progress(events.Started(vertex.digest, self.name(vertex), parents, miss))
        try:
            with op.acquire():
                result = op.exec(inputs)
        except BaseException as error:
            self.progress(events.Finished(vertex.digest, error=str(error) or type(error).__name__, cache_miss=miss))
            if isinstance(error, BuildError):
                error.vertex = error.vertex or vertex.digest
            raise
        if op.adds_layer:
            layer = result.layers[-1]
            self.store.records.put(CacheRecord(self.record_key(key), layer.digest, layer.diff_id, layer.size,
                                               layer.media_type, result.created, self.layer_timestamps))
        if not result.cached and miss is None and op.explains_misses:
            miss = self._explain(vertex)
        self.progress(events.Finished(vertex.digest, cached=result.cached, cache_miss=None if result.cached else miss))
        return result

    def step_parents(self, vertex: Vertex) -> list[Vertex]:
        """The steps VERTEX reads (named, shown ones), through vertices that are no step (merges,
        the context, heredoc and URL sources)."""
        parents: list[Vertex] = []
        seen: set[Vertex] = set()
        todo = list(vertex.inputs)
        while todo:
            source = todo.pop(0)
            if source is None or source in seen:
                continue
            seen.add(source)
            if source.digest in self.names and self.op(source).reports_progress:
                parents.append(source)
            else:
                todo.extend(source.inputs)
        return parents

    def _explain(self, vertex: Vertex) -> events.CacheMiss | None:
        if self.explainer is None:
            return None
        try:
            return self.explainer.explain(self, vertex, self.layer_timestamps)
        except Exception as error:   # a reason must never fail the build it explains
            return events.CacheMiss(self.name(vertex), f"(no reason: {type(error).__name__}: {error})")

    def save_history(self, vertices: tuple[Vertex, ...]) -> None:
        """Records this build's steps for the next build's reasons (one write), if explaining."""
        if self.explainer is not None:
            self.explainer.save(self, vertices, self.layer_timestamps)

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
        blob is still in the store, whole (a power loss may have cut a blob short); else what an
        imported cache gives."""
        record_key = self.record_key(key)
        record = self.store.records.get(record_key)
        if (record is None or record.timestamps != self.layer_timestamps
                or not self._blob_whole(record.layer_digest, record.size)):
            record = self._imported_record(record_key, parent)
            if record is None:
                return None
        layer = LayerRef(record.layer_digest, record.diff_id, record.size, record.media_type)
        return Result(parent.layers + (layer,), record.created, cached=True)

    def _imported_record(self, record_key: str, parent: Result) -> CacheRecord | None:
        """An imported cache's record for RECORD_KEY, kept as a local record once its blob is here."""
        found = self.imported.lookup(record_key, parent.layers, self.store.blobs) if self.imported else None
        if found is None:
            return None
        record = CacheRecord(record_key, found.digest, found.diff_id, found.size, found.media_type,
                             found.created, self.layer_timestamps)
        self.store.records.put(record)
        return record

    def cached_steps(self, final: Vertex | None = None) -> list[tuple[str, tuple[LayerRef, ...], str | None,
                                                                     tuple[str, ...]]]:
        """What a cache export writes, in solve order: per step that made a layer, (record key,
        its layers, when its layer was made, the record keys of the steps it read). With FINAL,
        only the steps under it through input 0 (the image's own chain: --cache-to mode=min)."""
        chain: set[Vertex] | None = None
        if final is not None:
            chain, vertex = set(), final
            while vertex is not None:
                chain.add(vertex)
                vertex = vertex.inputs[0] if vertex.inputs else None
        steps = []
        for vertex in self.keys:   # planned order (inputs first), so the export is deterministic
            op, result = self.ops.get(vertex), self.results.get(vertex)
            if (op is None or result is None or not op.adds_layer or not result.layers
                    or (chain is not None and vertex not in chain)):
                continue
            inputs = tuple(self.record_key(self.keys[i]) for i in vertex.inputs
                           if i is not None and i in self.results and self.ops[i].adds_layer)
            steps.append((self.record_key(self.keys[vertex]), result.layers, result.created, inputs))
        return steps
