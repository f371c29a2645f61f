"""Reading layer tars: decompressed by their first bytes, and the sizes docker reports for them.

Docker's SIZE of a layer is the bytes of its content once unpacked (regular files and symlinks by
their size, a hard link not again), not its compressed or tar size. Finding that means reading the
whole layer, so sizes are remembered by diff_id in ROOT/images/layer-sizes.json: a cache, rewritten
atomically, where a lost update only costs one more read.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import subprocess
import tarfile
import tempfile
import threading
import zlib
from typing import BinaryIO, Iterator

from builder.errors import StoreError
from builder.image.media import Descriptor
from builder.store import Store

_CHUNK = 1 << 20


class CorruptLayer(StoreError):
    """A layer blob that does not decompress or is not a tar."""


def compression_of(head: bytes) -> str:
    """"gzip", "zstd", "bzip2", "xz" or "" (a plain tar) from a stream's first bytes."""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if head[:3] == b"BZh":
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    return ""


@contextlib.contextmanager
def decompressed(stream: BinaryIO, what: str) -> Iterator[BinaryIO]:
    """STREAM (seekable or not) decompressed as it is read; CorruptLayer when zstd fails."""
    head = _Peek(stream)
    kind = compression_of(head.peek(6))
    if kind == "gzip":
        with gzip.GzipFile(fileobj=head, mode="rb") as out:
            yield out
    elif kind == "bzip2":
        import bz2

        with bz2.BZ2File(head, "rb") as out:
            yield out
    elif kind == "xz":
        import lzma

        with lzma.LZMAFile(head, "rb") as out:
            yield out
    elif kind == "zstd":
        proc = subprocess.Popen(["zstd", "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)

        def feed() -> None:
            try:
                for chunk in iter(lambda: head.read(_CHUNK), b""):
                    proc.stdin.write(chunk)
            except (BrokenPipeError, OSError, ValueError):
                pass
            finally:
                with contextlib.suppress(OSError):
                    proc.stdin.close()

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            yield proc.stdout
            proc.stdout.read()
            if proc.wait() != 0:
                raise CorruptLayer(f"{what}: corrupt zstd data")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            feeder.join()
            proc.stdout.close()
    else:
        yield head


class _Peek:
    """A read-only stream whose first bytes can be looked at without consuming them."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._head = b""

    def peek(self, n: int) -> bytes:
        while len(self._head) < n:
            chunk = self._stream.read(n - len(self._head))
            if not chunk:
                break
            self._head += chunk
        return self._head[:n]

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0:
                data, self._head = self._head + self._stream.read(), b""
            else:
                data, self._head = self._head[:n], self._head[n:]
            return data
        return self._stream.read(n)

    def readable(self) -> bool:
        return True


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
        directory = os.path.dirname(self._path)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".layer-sizes-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self._known, f, sort_keys=True)
            os.chmod(tmp, 0o644)
            os.rename(tmp, self._path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # only a cache: never fail a listing for it
        self._dirty = False
