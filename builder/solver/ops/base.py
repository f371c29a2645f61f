"""What every op kind implements, and what the solver hands it: BuildKit's `solver.Op`.

An op kind is one class over the op's data (a `builder.llb` Op) with three duties:

    cache_key()      BuildKit's CacheMap: a digest of the op itself and, per input, either
                     the input's key or a digest of the input's *content* under a selector
                     (`content_key`: the files a COPY or a bind mount reads from the context)
    exec(inputs)     inputs' results in, this vertex's result out
    acquire()        resources held around exec (none of today's ops needs one)

An input is asked, through its own op, what it is to the op that reads it: a content digest
for a selector (`content_digest`), a tree to copy from (`copy_source`) or a mount source
(`mount_input`). So no op looks at another op's type.

The solver schedules, deduplicates, caches and reports progress; it knows of an op only the two
class flags below. An op that `adds_layer` returns input 0's layers plus the one layer it made,
and the solver keeps that layer under the op's cache key.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import ClassVar, ContextManager, Protocol

from builder.errors import BuildError, SolveError, SourceNotFound
from builder.llb import Op, Vertex
from builder.plumbing.canonical import canonical_json
from builder.plumbing.records import dataclass, field
from builder.solver.mounts import MountInput


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


def digest_key(*parts) -> str:
    """A cache key: the sha256 of the parts' canonical JSON (keys in existing stores use it)."""
    return "sha256:" + hashlib.sha256(canonical_json(list(parts))).hexdigest()


@dataclass(frozen=True)
class CopySource:
    """Where a copy action reads from: a host directory, or a stage's layers to mount read-only."""

    tree: str | tuple[str, ...]
    rules: tuple = ()              # the context's .dockerignore rules
    reset_owner: bool = False      # copied entries become 0:0 (the context)
    # path in TREE -> the digest of that entry (BuildContext.entry_digest), where there is one:
    # what lets a COPY keep the files an earlier run of it wrote (builder.solver.copyreuse)
    entry_digest: Callable[[str], str] | None = field(default=None, compare=False)


class SolveState(Protocol):
    """What an op may use of the solve it is part of (the Solver provides it)."""

    store: object                  # .blobs, .records, .snapshotter, .variants, .root, .run_dir
    executor: object               # builder.executor.spec.Executor
    sources: object                # builder.solver.sources.ImageSources
    context: object                # builder.context.BuildContext
    named_contexts: Mapping[str, object]   # --build-context NAME=DIR: name -> BuildContext
    secrets: object                # builder.session.SecretStore
    ssh: Mapping[str, str]
    source_date_epoch: int | None
    layer_epoch: int | None        # the epoch new layers' mtimes are clamped to (rewrite-timestamp)
    progress: object               # builder.events.Progress

    def op(self, vertex: Vertex) -> "SolverOp": ...
    def key(self, vertex: Vertex | None) -> str | None: ...
    def result(self, vertex: Vertex | None) -> Result: ...
    def name(self, vertex: Vertex) -> str: ...
    def lowerdirs(self, layers: tuple[LayerRef, ...]) -> tuple[str, ...]: ...
    def cancelled(self) -> bool: ...
    def ignores_cache(self, vertex: Vertex) -> bool: ...   # --no-cache, or its stage's --no-cache-filter


class SolverOp:
    """One vertex's op kind. Made once per distinct vertex, so it may keep per-vertex state."""

    adds_layer: ClassVar[bool] = False   # exec stacks one new layer on input 0; the solver caches it
    reports_progress: ClassVar[bool] = True  # False: a source others read, shown as no step
    explains_misses: ClassVar[bool] = False  # a step with a cache notion: not CACHED says why (explain.py)

    def __init__(self, vertex: Vertex, state: SolveState):
        self.vertex = vertex
        self.op: Op = vertex.op
        self.state = state

    # -- the interface
    def cache_key(self) -> str:
        raise NotImplementedError

    def exec(self, inputs: Sequence[Result]) -> Result:
        raise NotImplementedError

    def acquire(self) -> ContextManager[None]:
        return contextlib.nullcontext()

    def facts(self) -> dict:
        """What the key was made of, as plain JSON values a later build can compare to say why
        it missed (builder.solver.explain): file digests, environment, a base digest. Never a
        secret's value. Called after cache_key."""
        return {}

    # -- what this vertex is to an op that reads it (defaults: its layers, keyed by its key)
    def content_digest(self, selector: tuple[str, ...]) -> str | None:
        """A digest of the content under SELECTOR, or None: key readers by this vertex's key."""
        return None

    def content_entries(self, selector: tuple[str, ...]) -> dict[str, str] | None:
        """What content_digest digests, per path (path -> digest), or None if it is keyed by key."""
        return None

    def copy_source(self, scratch: str, index: int) -> CopySource:
        return CopySource(self.state.lowerdirs(self.state.result(self.vertex).layers))

    def mount_input(self) -> MountInput:
        layers = self.state.result(self.vertex).layers
        return MountInput(self.state.key(self.vertex), self.state.lowerdirs(layers))

    # -- helpers for op kinds
    @property
    def name(self) -> str:
        return self.state.name(self.vertex)

    def input_key(self, index: int) -> str | None:
        return self.state.key(self.vertex.inputs[index])

    def read_facts(self, index: int, selector: tuple[str, ...]) -> dict | None:
        """The fact of what this op reads from input INDEX under SELECTOR: {"paths": selector,
        "files": path -> digest} when the input has content to select from (the context), else None."""
        source = self.vertex.inputs[index]
        entries = None if source is None else self.state.op(source).content_entries(selector)
        return None if entries is None else {"paths": list(selector), "files": entries}

    def content_key(self, index: int, selector: tuple[str, ...]) -> str | None:
        """The key part for what this op reads from input INDEX under SELECTOR: the content
        digest if that input has content to select from, else the input's key."""
        source = self.vertex.inputs[index]
        if source is None:
            return None
        try:
            digest = self.state.op(source).content_digest(selector)
        except SourceNotFound as error:
            raise SourceNotFound(f"{self.name}: {error}") from None
        except BuildError as error:
            raise SolveError(f"{self.name}: {error}") from None
        return self.state.key(source) if digest is None else digest


class LayerOp(SolverOp):
    """An op that changes input 0's filesystem in a scratch snapshot; the change is one layer."""

    adds_layer = True
    explains_misses = True

    def apply(self, rootfs) -> None:
        """Make this op's changes over ROOTFS (the active snapshot's mount, an executor RootFS)."""
        raise NotImplementedError

    def exec(self, inputs: Sequence[Result]) -> Result:
        return self.make_layer(inputs[0], lambda active: self.apply(active.mount))

    def make_layer(self, parent: Result, change: Callable[[object], None]) -> Result:
        """PARENT plus one layer: what CHANGE(active snapshot) makes over it."""
        store = self.state.store
        snapshotter = store.snapshotter
        with snapshotter.prepare(self.state.lowerdirs(parent.layers)) as active:
            change(active)
            store.flush_soon()   # the step's writes go to disk while its layer is hashed
            if self.state.cancelled():
                raise SolveError("build cancelled")
            layer = _commit_layer(store, active, parent.layers, self.state.layer_epoch)
        epoch = self.state.source_date_epoch
        created = epoch_rfc3339(epoch) if epoch is not None else now_rfc3339()
        return Result(parent.layers + (layer,), created)


def _commit_layer(store, active, below: tuple[LayerRef, ...], layer_epoch: int | None) -> LayerRef:
    """ACTIVE's change as a layer over BELOW, its snapshot committed. Where the committed
    snapshot is the change itself (overlay), the tar is only hashed and the snapshot backs the
    layer's blob (builder/snapshot/backed.py); else (naive: its change is a diff made against the
    parent at this moment, whiteouts timed now) the uncompressed tar is stored as the blob."""
    from builder.image.media import OCI_LAYER
    from builder.snapshot.backed import LayerSource, SnapshotBackedBlobs
    from builder.snapshot.layers import chain_ids, hash_layer, write_layer

    below_ids = [l.diff_id for l in below]
    if store.snapshotter.commits_layer_content and isinstance(store.blobs, SnapshotBackedBlobs):
        made = hash_layer(active.diff_dir(), source_date_epoch=layer_epoch)
        chain = chain_ids(below_ids + [made.diff_id])[-1]
        store.snapshotter.commit(active, chain)
        store.blobs.back(made.diff_id, LayerSource(chain, layer_epoch, made.size))
        return LayerRef(made.diff_id, made.diff_id, made.size, OCI_LAYER)
    layer = write_layer(active.diff_dir(), store.blobs, source_date_epoch=layer_epoch)
    store.snapshotter.commit(active, chain_ids(below_ids + [layer.diff_id])[-1])
    return LayerRef(layer.digest, layer.diff_id, layer.size, layer.media_type)
