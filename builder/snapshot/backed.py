"""Layers whose content is a committed snapshot, not a stored tar (BuildKit's lazy blobs).

A build commits a layer by hashing its tar (`layers.hash_layer`): the overlay snapshot directory
is the layer's content, and no uncompressed copy is written. What the blob store then keeps for
the layer is a small record:

    ROOT/layers/<hex>.json     diff_id <hex> -> {"snapshotter": "overlay", "chain": chain ID,
                               "epoch": SOURCE_DATE_EPOCH or null, "size": tar bytes}

`SnapshotBackedBlobs` wraps the store's blob store so that callers need no change: `has`,
`size`, `open`, `verify`, `delete` and `digests` answer for such a layer too. `open` makes the
tar again from the snapshot with the same writer, on a worker thread, and checks it against the
diff_id before its last bytes are handed over: a snapshot that no longer matches gives a
one-line StoreError, never a wrong blob. A layer whose snapshot is gone is not in the store
(`has` is false), so a build runs its step again and commits it anew.

The record is written after the snapshot is committed and without an fsync of its own (the
build's `store.sync()` makes both durable before any name moves): a kill in between leaves a
snapshot nothing names, which `prune` removes.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from typing import BinaryIO, Iterator

from builder.cache.blobs import BaseBlobStore, BaseBlobWriter, _check_digest
from builder.errors import BlobNotFound, StoreError
from builder.plumbing.files import write_atomically
from builder.plumbing.handoff import HandOff, Stopped
from builder.plumbing.records import dataclass
from builder.snapshot.snapshots import SnapshotStore, store_name

_OVERLAY = "overlay"


class LayerContentError(StoreError):
    """A snapshot-backed layer whose snapshot is missing or no longer hashes to its diff_id."""


@dataclass(frozen=True)
class LayerSource:
    """Where a layer's tar is made from: the overlay snapshot of CHAIN, archived with EPOCH."""

    chain: str
    epoch: int | None
    size: int
    snapshotter: str = _OVERLAY

    def to_json(self) -> bytes:
        return json.dumps({"snapshotter": self.snapshotter, "chain": self.chain, "epoch": self.epoch,
                           "size": self.size}, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "LayerSource":
        doc = json.loads(data)
        if (not isinstance(doc, dict) or doc.get("snapshotter") != _OVERLAY or not isinstance(doc.get("chain"), str)
                or not isinstance(doc.get("size"), int) or not isinstance(doc.get("epoch"), (int, type(None)))):
            raise ValueError("not a layer source record")
        return cls(doc["chain"], doc["epoch"], doc["size"], doc["snapshotter"])


class SnapshotBackedBlobs(BaseBlobStore):
    """INNER (the disk store or its memory twin) plus the layers made from snapshots under ROOT.
    Attributes this class lacks (`path`, `tmp_dir`, a memory store's `blobs`) are INNER's."""

    def __init__(self, inner: BaseBlobStore, root: str):
        self.inner = inner
        self._store_root = root
        self.records_dir = os.path.join(root, "layers")
        os.makedirs(self.records_dir, exist_ok=True)

    @functools.cached_property
    def _snapshots(self) -> SnapshotStore:
        # Made on first use: a fully cached rebuild never reads a layer.
        return SnapshotStore(self._store_root, store_name(_OVERLAY))

    def __getattr__(self, name: str):
        if name in ("inner", "_store_root"):  # not set yet (unpickling): never recurse
            raise AttributeError(name)
        return getattr(self.inner, name)

    # -- the records ---------------------------------------------------------------------------

    def _record_path(self, digest: str) -> str:
        return os.path.join(self.records_dir, _check_digest(digest) + ".json")

    def back(self, diff_id: str, source: LayerSource) -> None:
        """Record that layer DIFF_ID is made from SOURCE (its snapshot committed already)."""
        write_atomically(self._record_path(diff_id), source.to_json(), durable=False)

    def source(self, digest: str) -> LayerSource | None:
        """The record of DIGEST if it is a snapshot-backed layer (whether or not its snapshot is
        still there), else None."""
        try:
            with open(self._record_path(digest), "rb") as f:
                return LayerSource.from_json(f.read())
        except FileNotFoundError:
            return None
        except (ValueError, OSError) as e:
            raise LayerContentError(f"layer {digest}: unreadable record ({e})") from None

    def backed_digests(self) -> list[str]:
        """Every snapshot-backed layer's digest, sorted."""
        return sorted("sha256:" + name[:-5] for name in os.listdir(self.records_dir)
                      if name.endswith(".json") and len(name) == 69)

    def snapshot_dir(self, source: LayerSource) -> str:
        return self._snapshots.path(source.chain)

    def _available(self, digest: str) -> LayerSource | None:
        source = self.source(digest)
        if source is None or not os.path.isdir(self.snapshot_dir(source)):
            return None
        return source

    # -- the blob store interface --------------------------------------------------------------

    def has(self, digest: str) -> bool:
        return self.inner.has(digest) or self._available(digest) is not None

    def size(self, digest: str) -> int:
        try:
            return self.inner.size(digest)
        except BlobNotFound:
            source = self._available(digest)
            if source is None:
                raise
            return source.size

    def writer(self) -> BaseBlobWriter:
        return self.inner.writer()

    def open(self, digest: str) -> BinaryIO:
        try:
            return self.inner.open(digest)
        except BlobNotFound:
            source = self.source(digest)
            if source is None:
                raise
        directory = self.snapshot_dir(source)
        if not os.path.isdir(directory):
            raise LayerContentError(f"layer {digest}: its snapshot {os.path.basename(directory)} is missing "
                                    "(build the image again to make it)")
        return RegeneratedLayer(digest, directory, source)

    def verify(self, digest: str) -> bool:
        if self.inner.has(digest):
            return self.inner.verify(digest)
        try:
            with self.open(digest) as f:
                while f.read(1 << 20):
                    pass
        except LayerContentError:
            return False
        return True

    def delete(self, digest: str) -> None:
        """Forget the blob and the layer record (the snapshot is `prune`'s to remove)."""
        self.inner.delete(digest)
        try:
            os.unlink(self._record_path(digest))
        except FileNotFoundError:
            pass

    def digests(self) -> Iterator[str]:
        yield from sorted(set(self.inner.digests()) | set(self.backed_digests()))

    def clean_temp(self) -> None:
        self.inner.clean_temp()
        for name in os.listdir(self.records_dir):
            if name.endswith(".tmp"):  # a record write a kill cut short
                os.unlink(os.path.join(self.records_dir, name))


class RegeneratedLayer:
    """A layer's tar made again from its snapshot as it is read: the producer (a worker thread
    walking the snapshot) hands on chunks through a bounded queue, holding the last one back
    until the whole tar has hashed to DIGEST. Reads only forward (`seek` skips ahead)."""

    def __init__(self, digest: str, directory: str, source: LayerSource):
        self._digest = digest
        self._directory = directory
        self._source = source
        self._handoff = HandOff(8)  # the reader closing before the tar is whole stops the producer
        self._buffer = b""
        self._offset = 0  # how much of _buffer was read
        self._position = 0
        self._done = False
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._produce, name="layer-regenerate", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        from builder.snapshot.layers import stream_layer_tar

        held: list[bytes] = []

        def write(data: bytes) -> None:
            if held:
                self._handoff.put(held.pop())
            held.append(data)

        try:
            made = stream_layer_tar(self._directory, write, source_date_epoch=self._source.epoch)
            if made.diff_id != self._digest or made.size != self._source.size:
                raise LayerContentError(
                    f"layer {self._digest}: its snapshot {os.path.basename(self._directory)} no longer "
                    f"matches it (the tar hashes to {made.diff_id}, {made.size} bytes); "
                    "run `build-image fsck --repair`, then build again")
            if held:
                self._handoff.put(held.pop())
            self._handoff.put(None)
        except Stopped:
            return
        except OSError as e:
            self._put_error(LayerContentError(f"layer {self._digest}: cannot read its snapshot: {e}"))
        except BaseException as e:  # handed to the reader, which raises it
            self._put_error(e)

    def _put_error(self, error: BaseException) -> None:
        try:
            self._handoff.put(error)
        except Stopped:
            pass

    def _next(self) -> bytes:
        if self._done:
            return b""
        if self._thread is None:
            self._start()
        item = self._handoff.get()
        if item is None:
            self._done = True
            return b""
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = [self._buffer[self._offset:]]
            self._buffer, self._offset = b"", 0
            while chunk := self._next():
                parts.append(chunk)
            data = b"".join(parts)
        else:
            while self._offset >= len(self._buffer) and not self._done:
                self._buffer, self._offset = self._next(), 0
            if self._offset == 0 and size >= len(self._buffer):
                data, self._buffer = self._buffer, b""  # a whole chunk: on as it is, no copy
            else:
                # small reads (tar headers) take slices; the chunk is never copied whole again
                data = self._buffer[self._offset:self._offset + size]
                self._offset += len(data)
        self._position += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        target = offset if whence == os.SEEK_SET else self._position + offset
        if whence not in (os.SEEK_SET, os.SEEK_CUR) or target < self._position:
            raise OSError(f"layer {self._digest} is made again as it is read: it cannot seek back")
        while self._position < target:
            if not self.read(min(target - self._position, 1 << 20)):
                break
        return self._position

    def close(self) -> None:
        self._handoff.stop()
        if self._thread is not None:
            self._thread.join()
        self._done = True

    @property
    def closed(self) -> bool:
        return self._handoff.stopped

    def __enter__(self) -> "RegeneratedLayer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
