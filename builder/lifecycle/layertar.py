"""Reading layer tars: decompressed by their first bytes, and the sizes docker reports for them.

Docker's SIZE of a layer is the bytes of its content once unpacked (regular files and symlinks by
their size, a hard link not again), not its compressed or tar size. Finding that means reading the
whole layer, so sizes are remembered by diff_id in ROOT/images/layer-sizes.json: a cache, rewritten
atomically, where a lost update only costs one more read.
"""

from __future__ import annotations

import contextlib
import json
import os
import tarfile
import zlib
from typing import BinaryIO, Iterator

from builder.errors import StoreError
from builder.image.media import Descriptor
from builder.plumbing import compression
from builder.plumbing.files import write_atomically
from builder.store import Store


class CorruptLayer(StoreError):
    """A layer blob that does not decompress or is not a tar."""


@contextlib.contextmanager
def decompressed(stream: BinaryIO, what: str) -> Iterator[BinaryIO]:
    """STREAM (seekable or not) decompressed as it is read; CorruptLayer when zstd fails."""
    try:
        with compression.decompressed(stream) as out:
            yield out
    except compression.CorruptStream as e:
        raise CorruptLayer(f"{what}: {e}") from None


def content_size(stream: BinaryIO, what: str) -> int:
    """The unpacked size of the layer tar in STREAM (compressed or not)."""
    total = 0
    try:
        with decompressed(stream, what) as tar_stream:
            with tarfile.open(fileobj=tar_stream, mode="r|") as tar:
                for info in tar:
                    if info.isreg():
                        total += info.size
                    elif info.issym():
                        total += len(info.linkname.encode(errors="surrogateescape"))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise CorruptLayer(f"{what} is not a readable layer: {e}") from None
    return total


class LayerSizes:
    """Content sizes of layers by diff_id, computed once per layer and remembered in the store."""

    def __init__(self, store: Store):
        self._store = store
        self._path = os.path.join(store.root, "images", "layer-sizes.json")
        self._known = self._load()
        self._dirty = False

    def _load(self) -> dict[str, int]:
        try:
            with open(self._path, "rb") as f:
                doc = json.load(f)
            return {k: int(v) for k, v in doc.items()} if isinstance(doc, dict) else {}
        except (OSError, ValueError, TypeError):
            return {}

    def of_layer(self, layer: Descriptor, diff_id: str) -> int:
        if diff_id not in self._known:
            with self._store.blobs.open(layer.digest) as f:
                self._known[diff_id] = content_size(f, f"layer {layer.digest}")
            self._dirty = True
        return self._known[diff_id]

    def of_image(self, image) -> int:
        """The sum over the image's layers (docker's image SIZE, shared layers included); a layer
        whose blob is missing counts 0."""
        total = 0
        for layer, diff_id in zip(image.layers, image.config.diff_ids):
            try:
                total += self.of_layer(layer, diff_id)
            except StoreError:
                pass
        return total

    def save(self) -> None:
        if not self._dirty:
            return
        data = json.dumps(self._known, sort_keys=True).encode()
        with contextlib.suppress(OSError):  # only a cache: never fail a listing for it
            write_atomically(self._path, data)
        self._dirty = False
