"""Built layers without a stored tar: the overlay snapshot is the layer's content, and its tar is
made again (and checked against the diff_id) when something reads the blob
(builder/snapshot/backed.py). Solver-level, on the fake executor and a disk store: no root."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from builder.cache.blobs import MemoryBlobStore
from builder.errors import BlobNotFound
from builder.lifecycle.gc import fsck, prune
from builder.snapshot.backed import LayerContentError
from builder.snapshot.layers import write_layer
from builder.store import Store
from tests.test_solver_units import Graph


@pytest.fixture
def context_dir(tmp_path):
    root = tmp_path / "context"
    root.mkdir()
    (root / "a.txt").write_text("a\n")
    return root


@pytest.fixture
def built(tmp_path, context_dir):
    """A solved step over the overlay snapshotter: (graph, its layer, the snapshot directory)."""
    graph = Graph(Store(str(tmp_path / "root"), snapshotter="overlay"), tmp_path, context_dir)
    step = graph.run(("write", "/data/file", "x" * 5000))
    layer = graph.solve(step)[step].layers[-1]
    source = graph.store.blobs.source(layer.digest)
    return graph, layer, graph.store.blobs.snapshot_dir(source)


def _regenerator_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "layer-regenerate"]


def test_a_built_layer_stores_no_tar_and_reads_back_byte_for_byte(built):
    graph, layer, snapshot = built
    blobs = graph.store.blobs
    assert not blobs.inner.has(layer.digest)  # no uncompressed copy beside the snapshot
    assert layer.digest == layer.diff_id and blobs.has(layer.digest) and blobs.size(layer.digest) == layer.size
    with blobs.open(layer.digest) as f:
        data = f.read()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.diff_id and len(data) == layer.size
    # the bytes `write_layer` stores for the same directory and epoch
    reference = MemoryBlobStore()
    assert reference.get_bytes(write_layer(snapshot, reference, source_date_epoch=0).digest) == data
    assert layer.digest in set(blobs.digests()) and blobs.verify(layer.digest)
    with blobs.open(layer.digest) as f:  # in pieces that straddle the producer's chunks
        pieces = []
        while piece := f.read(513):
            pieces.append(piece)
    assert b"".join(pieces) == data and f.tell() == len(data)


def test_a_snapshot_changed_after_commit_never_gives_its_whole_tar(built):
    graph, layer, snapshot = built
    with open(os.path.join(snapshot, "data", "file"), "r+b") as f:
        f.write(b"y")  # same size, other bytes
    received = 0
    with pytest.raises(LayerContentError) as error:
        with graph.store.blobs.open(layer.digest) as f:
            while chunk := f.read(100):
                received += len(chunk)
    assert received < layer.size
    message = str(error.value)
    assert "\n" not in message and layer.digest in message and "no longer matches" in message
    assert not graph.store.blobs.verify(layer.digest)


def test_a_layer_stream_closed_early_stops_its_producer(built):
    graph, layer, _ = built
    with graph.store.blobs.open(layer.digest) as f:
        assert len(f.read(10)) == 10
        f.seek(600)  # forward only: the tar is made as it is read
        assert f.tell() == 600
        with pytest.raises(OSError, match="cannot seek back"):
            f.seek(0)
    assert _regenerator_threads() == []


def test_a_layer_whose_snapshot_is_gone_is_not_in_the_store(built):
    graph, layer, snapshot = built
    graph.store.remove_snapshot(os.path.basename(snapshot))
    blobs = graph.store.blobs
    assert not blobs.has(layer.digest)
    with pytest.raises(BlobNotFound):
        blobs.size(layer.digest)
    with pytest.raises(LayerContentError, match=r"its snapshot \w+ is missing \(build the image again"):
        blobs.open(layer.digest)


def test_prune_keeps_the_snapshots_of_cached_layers_and_drops_them_with_the_cache(built):
    graph, layer, snapshot = built
    prune(graph.store)
    assert os.path.isdir(snapshot) and graph.store.blobs.verify(layer.digest)
    prune(graph.store, cache=True)
    assert not os.path.exists(snapshot) and graph.store.blobs.source(layer.digest) is None
    assert layer.digest not in set(graph.store.blobs.digests())


def test_fsck_remakes_each_built_layer_and_repair_lets_a_rebuild_commit_it_again(built):
    graph, layer, snapshot = built
    assert fsck(graph.store) == []
    with open(os.path.join(snapshot, "data", "file"), "ab") as f:
        f.write(b"more")
    problem, record = fsck(graph.store)
    assert problem.subject == f"layer {layer.digest}" and "no longer makes the layer" in problem.message
    assert record.subject.startswith("cache record ") and record.message == f"layer {layer.digest} is corrupt"
    fixed = fsck(graph.store, repair=True)
    assert [p.repaired for p in fixed] == [True, True] and not os.path.exists(snapshot)
    step = graph.run(("write", "/data/file", "x" * 5000))
    assert graph.solve(step)[step].layers[-1] == layer  # a miss: the step ran and committed it anew
    assert graph.executor.commands == [("write", "/data/file", "x" * 5000)]
    assert fsck(graph.store) == [] and graph.store.blobs.verify(layer.digest)


def test_a_naive_store_keeps_its_layer_tars(tmp_path, context_dir):
    graph = Graph(Store(str(tmp_path / "root"), snapshotter="naive"), tmp_path, context_dir)
    step = graph.run(("write", "/a", "A"))
    layer = graph.solve(step)[step].layers[-1]
    assert graph.store.blobs.inner.has(layer.digest) and graph.store.blobs.source(layer.digest) is None
