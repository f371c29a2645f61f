"""The solver's scheduling and caching, on the memory blob store and cache records and the fake
executor (tests/support/fake_executor.py): no root, no mounts, no registry, milliseconds each.

The graphs are built from llb ops directly; a base image is written into the memory blob store
and named in the store's image index, so ImageSources finds it without a registry."""

from __future__ import annotations

import os
import threading

import pytest

from builder.cache.blobs import MemoryBlobStore
from builder.cache.records import MemoryCacheRecords
from builder.context import BuildContext
from builder.errors import ExecutionError, SolveError
from builder.image.config import ImageConfig
from builder.image.manifest import write_image
from builder.image.media import Descriptor
from builder.llb import CopyAction, ExecOp, FileOp, ImageSource, LocalSource, Vertex
from builder.llb.ops import BindMountSpec, MergeOp, Op
from builder.snapshot.layers import write_layer
from builder import events
from builder.plumbing.records import dataclass
from builder.solver.solver import Solver
from builder.solver.sources import ImageSources
from builder.store import Store
from tests.support.fake_executor import FakeExecutor

BASE = "example.com/base:latest"


@pytest.fixture(params=["overlay", "naive"])
def store(tmp_path, request):
    """The memory twins, over each snapshotter: the solver's behaviour must not depend on which."""
    return Store(str(tmp_path / "store"), blobs=MemoryBlobStore(), records=MemoryCacheRecords(),
                 snapshotter=request.param)


@pytest.fixture
def context_dir(tmp_path):
    root = tmp_path / "context"
    root.mkdir()
    for name, text in {"a.txt": "a1\n", "b.txt": "b1\n", "c.txt": "c1\n"}.items():
        (root / name).write_text(text)
    return root


def _no_registry():
    raise AssertionError("a unit test asked for a registry")


def add_base_image(store: Store, tmp_path) -> None:
    """A one-layer image with /etc/base.txt, tagged BASE in the store's image index."""
    tree = tmp_path / "base-layer"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "base.txt").write_text("base\n")
    layer = write_layer(str(tree), store.blobs, source_date_epoch=0)
    image = write_image(store.blobs, ImageConfig(diff_ids=(layer.diff_id,)),
                        [Descriptor(layer.media_type, layer.digest, layer.size)])
    store.images.tag(BASE, image.manifest.digest)


class Graph:
    """One solve's inputs: the store, a base image, the context; `solve` runs a fresh Solver."""

    def __init__(self, store: Store, tmp_path, context_dir):
        self.store = store
        self.context_dir = context_dir
        add_base_image(store, tmp_path)
        self.sources = ImageSources(store.blobs, store.images, _no_registry)
        self.base = Vertex(ImageSource(self.sources.resolve(BASE, "linux/amd64").ref))
        self.local = Vertex(LocalSource())
        self.events: list = []

    def run(self, args: tuple[str, ...], parent: Vertex | None = None, **fields) -> Vertex:
        """An ExecOp over PARENT (the base image by default); bind mounts read the context."""
        mounts = tuple(BindMountSpec(f"/mnt/{path}", 1, path) for path in fields.pop("binds", ()))
        inputs = (parent or self.base, self.local) if mounts else (parent or self.base,)
        return Vertex(ExecOp(args, mounts=mounts, **fields), inputs)

    def solve(self, *vertices: Vertex, executor: FakeExecutor | None = None, **options):
        self.executor = executor or FakeExecutor()
        self.events = []
        self.solver = Solver(self.store, self.executor, self.sources, BuildContext(str(self.context_dir)),
                             progress=self.events.append, source_date_epoch=0, **options)
        return self.solver.solve(_with_inputs(vertices))

    def file_in(self, vertex: Vertex, path: str) -> str:
        """PATH's content in VERTEX's result, read from the top layer down."""
        for directory in reversed(self.solver.lowerdirs(self.solver.results[vertex].layers)):
            full = os.path.join(directory, path.lstrip("/"))
            if os.path.exists(full):
                with open(full) as f:
                    return f.read()
        raise FileNotFoundError(path)

    def finished(self, vertex: Vertex) -> list[events.Finished]:
        return [e for e in self.events if isinstance(e, events.Finished) and e.id == vertex.digest]


def _with_inputs(vertices) -> tuple[Vertex, ...]:
    """VERTICES and everything they read, inputs first (as the converter lists a plan)."""
    ordered: dict[Vertex, None] = {}

    def visit(vertex: Vertex) -> None:
        for source in vertex.inputs:
            if source is not None:
                visit(source)
        ordered.setdefault(vertex)

    for vertex in vertices:
        visit(vertex)
    return tuple(ordered)


@pytest.fixture
def graph(store, tmp_path, context_dir):
    return Graph(store, tmp_path, context_dir)


def test_a_vertex_built_twice_runs_once_after_its_input(graph):
    first = graph.run(("write", "/a", "A"))
    twin_one = graph.run(("cat", "/a", "/b"), first)
    twin_two = graph.run(("cat", "/a", "/b"), graph.run(("write", "/a", "A")))   # equal, built apart
    merged = Vertex(MergeOp(), (twin_one, twin_two))
    results = graph.solve(merged)
    assert graph.executor.commands == [("write", "/a", "A"), ("cat", "/a", "/b")]
    assert results[twin_two] == results[twin_one]
    assert results[merged].layers == results[twin_one].layers * 2
    assert graph.file_in(twin_one, "/b") == "A"
    assert graph.file_in(twin_one, "/etc/base.txt") == "base\n"


def test_independent_steps_run_at_once_up_to_jobs(graph):
    steps = [graph.run(("write", f"/{n}", n)) for n in ("x", "y")]
    barrier = threading.Barrier(2, timeout=10)   # passes only if both runs are in flight together
    graph.solve(*steps, executor=FakeExecutor(before_run=lambda process: barrier.wait()), jobs=2)
    assert graph.executor.peak == 2

    graph.store.records.delete(graph.solver.record_key(graph.solver.keys[steps[0]]))
    graph.store.records.delete(graph.solver.record_key(graph.solver.keys[steps[1]]))
    graph.solve(*steps, jobs=1)
    assert graph.executor.peak == 1 and len(graph.executor.runs) == 2


def test_a_second_solve_runs_nothing_and_gives_the_same_layers(graph):
    step = graph.run(("cat", "/etc/base.txt", "/copy"), graph.run(("write", "/a", "A")))
    first = graph.solve(step)[step]
    assert len(graph.executor.runs) == 2 and graph.finished(step) == [events.Finished(step.digest)]

    second = graph.solve(step)[step]
    assert graph.executor.runs == []
    assert second.layers == first.layers and second.created == first.created and second.cached
    assert graph.finished(step) == [events.Finished(step.digest, cached=True)]


def test_clamped_and_unclamped_layers_are_separate_records(graph):
    step = graph.run(("write", "/a", "A"))
    clamped = graph.solve(step)[step].layers[-1]                      # source_date_epoch=0: clamped
    unclamped = graph.solve(step, rewrite_timestamp=False)[step].layers[-1]
    assert graph.executor.commands == [("write", "/a", "A")]           # the clamped record was no hit
    assert unclamped.diff_id != clamped.diff_id
    records = {graph.store.records.get(k).timestamps: graph.store.records.get(k).diff_id
               for k in graph.store.records.keys()}
    assert records == {"clamped:0": clamped.diff_id, "unclamped": unclamped.diff_id}
    assert graph.solve(step)[step].layers[-1] == clamped and graph.executor.runs == []
    assert graph.solve(step, rewrite_timestamp=False)[step].layers[-1] == unclamped and graph.executor.runs == []


def test_a_record_whose_layer_blob_is_gone_is_a_miss(graph):
    step = graph.run(("write", "/a", "A"))
    layer = graph.solve(step)[step].layers[-1]
    graph.store.blobs.delete(layer.digest)
    assert graph.solve(step)[step].layers[-1] == layer   # made again, byte for byte
    assert graph.executor.commands == [("write", "/a", "A")]


def test_a_record_whose_layer_blob_was_cut_short_is_a_miss(tmp_path, context_dir):
    # Records are not fsync-ed one by one: after a power loss a record may outlive the end of its
    # blob (a rename that reached the disk before the data). Such a blob must not be used.
    # (The naive snapshotter stores its layers' tars; the overlay one's are made from snapshots.)
    graph = Graph(Store(str(tmp_path / "root"), snapshotter="naive"), tmp_path, context_dir)
    step = graph.run(("write", "/a", "A"))
    layer = graph.solve(step)[step].layers[-1]
    path = graph.store.blobs.path(layer.digest)
    with open(path, "r+b") as blob:
        blob.truncate(layer.size // 2)
    assert graph.solve(step)[step].layers[-1] == layer
    assert graph.executor.commands == [("write", "/a", "A")]


def test_a_record_whose_layer_snapshot_is_gone_is_a_miss_and_the_rerun_repairs_it(tmp_path, context_dir):
    # An overlay-built layer has no stored tar: its snapshot is its content. Without the
    # snapshot the layer is not in the store, so the step runs again and commits it anew.
    graph = Graph(Store(str(tmp_path / "root"), snapshotter="overlay"), tmp_path, context_dir)
    step = graph.run(("write", "/a", "A"))
    layer = graph.solve(step)[step].layers[-1]
    source = graph.store.blobs.source(layer.digest)
    assert source is not None and not os.path.exists(graph.store.blobs.inner.path(layer.digest))
    chain = source.chain
    graph.store.snapshotter.remove(chain)
    assert not graph.store.blobs.has(layer.digest)
    assert graph.solve(step)[step].layers[-1] == layer
    assert graph.executor.commands == [("write", "/a", "A")]
    assert graph.store.snapshots.has(chain)
    assert graph.store.blobs.verify(layer.digest)


def test_a_changed_context_file_reruns_only_the_steps_that_read_it(graph, context_dir):
    reads_a = graph.run(("cat", "/mnt/a.txt", "/a"), binds=("a.txt",))
    reads_b = graph.run(("cat", "/mnt/b.txt", "/b"), binds=("b.txt",))
    after_a = graph.run(("cat", "/a", "/after"), reads_a)
    graph.solve(reads_a, reads_b, after_a)
    keys = dict(graph.solver.keys)
    assert len(graph.executor.runs) == 3

    (context_dir / "a.txt").write_text("a2\n")
    graph.solve(reads_a, reads_b, after_a)
    assert sorted(graph.executor.commands) == [("cat", "/a", "/after"), ("cat", "/mnt/a.txt", "/a")]
    assert graph.finished(reads_b) == [events.Finished(reads_b.digest, cached=True)]
    assert graph.file_in(after_a, "/after") == "a2\n"
    changed = {v for v in keys if graph.solver.keys[v] != keys[v]}
    assert changed == {reads_a, after_a}


def test_a_copy_is_keyed_on_the_files_it_selects(graph, context_dir):
    owner = f"{os.getuid()}:{os.getgid()}"     # the fake has no /etc/passwd and no root to chown to 0
    copy = Vertex(FileOp((CopyAction(1, ("a.txt",), "/copied.txt", chown=owner),)), (graph.base, graph.local))
    graph.solve(copy)
    assert graph.file_in(copy, "/copied.txt") == "a1\n"
    key = graph.solver.keys[copy]

    (context_dir / "c.txt").write_text("c2\n")               # not selected: still a hit
    graph.solve(copy)
    assert graph.solver.keys[copy] == key and graph.finished(copy)[0].cached

    (context_dir / "a.txt").write_text("a2\n")
    graph.solve(copy)
    assert graph.solver.keys[copy] != key and graph.file_in(copy, "/copied.txt") == "a2\n"


def test_a_failed_run_raises_its_exit_code_and_records_nothing(graph):
    failing = graph.run(("exit", "3"))
    with pytest.raises(ExecutionError) as caught:
        graph.solve(failing)
    assert caught.value.exit_code == 3 and caught.value.last_lines == ("exiting with 3",)
    assert graph.store.records.keys() == []
    assert graph.finished(failing)[0].error


def test_the_network_mode_and_hosts_reach_the_process_unchanged(graph):
    hosts = (("db", "10.0.0.2"), ("gateway", "host-gateway"))
    graph.solve(graph.run(("echo", "hi"), network="host", extra_hosts=hosts))
    assert graph.executor.runs[0].process.network == "host"
    assert graph.executor.runs[0].process.extra_hosts == hosts
    assert [e.data for e in graph.events if isinstance(e, events.Output)] == [b"hi\n"]


def test_disk_and_memory_stores_give_the_same_keys_and_layers(tmp_path, context_dir):
    layers, keys = [], []
    for name, twins in (("disk", {}), ("memory", {"blobs": MemoryBlobStore(), "records": MemoryCacheRecords()})):
        graph = Graph(Store(str(tmp_path / name), **twins), tmp_path / name, context_dir)
        step = graph.run(("cat", "/mnt/a.txt", "/a"), binds=("a.txt",))
        layers.append(graph.solve(step)[step].layers)
        keys.append(graph.solver.keys[step])
    assert layers[0] == layers[1] and keys[0] == keys[1]


def test_an_op_kind_nobody_registered_is_a_solve_error(graph):
    @dataclass(frozen=True)
    class Frobnicate(Op):
        kind = "frobnicate"

    with pytest.raises(SolveError, match="unknown op Frobnicate"):
        graph.solve(Vertex(Frobnicate()))


def test_every_llb_op_kind_is_registered():
    from builder.solver.ops import REGISTRY, SolverOp, op_class

    kinds = [cls for cls in Op.__subclasses__() if cls.__module__ == "builder.llb.ops"]
    assert {cls.kind for cls in kinds} == set(REGISTRY)
    for cls in kinds:
        assert issubclass(op_class(cls.__new__(cls)), SolverOp)
