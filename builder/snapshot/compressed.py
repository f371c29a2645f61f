"""Compressed layer blobs, made only when an output needs them (BuildKit's lazy blobs).

A build commits its layers uncompressed: the tar is streamed through sha256, and the blob's digest
is the layer's diff_id (the overlay snapshotter stores no tar at all: the blob is made from the
snapshot when it is read, builder/snapshot/backed.py). An OCI or docker archive, `save`, a push or a
registry cache wants gzip (or zstd): `compressed_blob` makes that blob the first time and records
it per (diff_id, compression, level) in the store's variants (builder/cache/variants.py), so the
next export or push of the same layer compresses nothing. `compressed_image` does it for every
layer of an image at once, on several threads (the compressors release the GIL), and names the
result with a manifest over the compressed layers: config and diff_ids, so the image ID, stay.

BuildKit's meaning of the output attributes: layers already compressed some other way (a base
image's gzip layers when zstd is asked, say) are kept as they are unless `force` is set; with
`force` they are converted too. A layer already in the asked compression is kept as it is.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from builder.cache.variants import Variant
from builder.errors import DigestMismatch
from builder.image import media
from builder.image.manifest import StoredImage, read_image
from builder.image.media import Descriptor
from builder.plumbing import compression
from builder.plumbing.canonical import canonical_json
from builder.plumbing.handoff import HandOff, Stopped
from builder.plumbing.records import dataclass, replace
from builder.snapshot.layers import LayerError, _media_type, _write_layer_blob

UNCOMPRESSED = "uncompressed"
KINDS = (compression.GZIP, compression.ZSTD, UNCOMPRESSED)
_CHUNK = 1 << 20
_LAYER_KINDS = {  # the layer media types whose compression an output may change, by what they hold
    media.OCI_LAYER: UNCOMPRESSED, media.DOCKER_LAYER: UNCOMPRESSED,
    media.OCI_LAYER_GZIP: compression.GZIP, media.DOCKER_LAYER_GZIP: compression.GZIP,
    media.OCI_LAYER_ZSTD: compression.ZSTD, media.DOCKER_LAYER_ZSTD: compression.ZSTD,
}


@dataclass(frozen=True)
class Compression:
    """What an output asks of its layers: `compression=`, `compression-level=`, `force-compression=`."""

    kind: str = compression.GZIP
    level: int | None = None          # None: the kind's default
    force: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise LayerError(f"unknown compression {self.kind!r}; use gzip, zstd or uncompressed")
        if self.level is not None and self.kind in compression.LEVELS and self.level not in compression.LEVELS[self.kind]:
            levels = compression.LEVELS[self.kind]
            raise LayerError(f"compression-level {self.level} is out of range for {self.kind} "
                             f"({levels.start}-{levels.stop - 1})")

    @property
    def resolved_level(self) -> int | None:
        return compression.default_level(self.kind) if self.level is None else self.level


def compressed_blob(store, layer: Descriptor, diff_id: str, wanted: Compression = Compression()) -> Descriptor:
    """LAYER (in STORE's blobs, holding the tar whose sha256 is DIFF_ID) as WANTED asks: the same
    descriptor when it already is (or, without force, when it is compressed otherwise), else the
    descriptor of a blob in that compression, made now or found from an earlier call. The
    returned descriptor has OCI media types; the blob is in STORE.blobs."""
    found = _existing(store, layer, diff_id, wanted)
    if found is not None:
        return found
    made = _compress(store, layer, diff_id, wanted.kind, wanted.resolved_level)
    store.variants.put(diff_id, wanted.kind, wanted.resolved_level, Variant(made.digest, made.size, made.media_type))
    return made


def layers_for_push(store, image: StoredImage, wanted: Compression = Compression()) -> list:
    """IMAGE's layers for a push: a Descriptor where the blob to send exists (as stored, or made
    by an earlier export or push), else a StreamedLayer that compresses it while it is uploaded
    (and keeps it, as compressed_blob would). Descriptors have the manifest family's types."""
    oci = media.is_oci_type(image.manifest.media_type)
    out: list = []
    for layer, diff_id in zip(image.layers, image.config.diff_ids):
        found = _existing(store, layer, diff_id, wanted)
        out.append(StreamedLayer(store, layer, diff_id, wanted) if found is None
                   else replace(found, media_type=media.convert_media_type(found.media_type, oci)))
    return out


def image_with_layers(store, image: StoredImage, layers: list[Descriptor]) -> StoredImage:
    """IMAGE with its manifest's layer entries replaced by LAYERS (same family and annotations);
    the new manifest is written to STORE.blobs, the config is IMAGE's."""
    oci = media.is_oci_type(image.manifest.media_type)
    layers = [replace(l, media_type=media.convert_media_type(l.media_type, oci)) for l in layers]
    if tuple(layers) == image.layers:
        return image
    doc = json.loads(store.blobs.get_bytes(image.manifest.digest))
    doc["layers"] = [_merged(old, new) for old, new in zip(doc.get("layers") or (), layers)]
    digest = store.blobs.put_bytes(canonical_json(doc))
    converted = read_image(store.blobs, digest)
    return replace(converted, manifest=replace(converted.manifest, annotations=image.manifest.annotations))


def _existing(store, layer: Descriptor, diff_id: str, wanted: Compression) -> Descriptor | None:
    """The blob WANTED asks for if there is no compressing to do (or it was done before), else None."""
    current = _LAYER_KINDS.get(layer.media_type)
    if current is None:
        return layer  # foreign or non-distributable layers are shipped as they are
    current = _stored_kind(store, layer)
    if current == wanted.kind or (current != UNCOMPRESSED and not wanted.force):
        return _with_oci_type(layer, current)
    if wanted.kind == UNCOMPRESSED:
        return _uncompressed_blob(store, layer, diff_id)
    known = store.variants.get(diff_id, wanted.kind, wanted.resolved_level)
    if known is not None and store.blobs.has(known.digest) and store.blobs.size(known.digest) == known.size:
        return Descriptor(known.media_type, known.digest, known.size)
    return None


def compressed_image(store, image: StoredImage, wanted: Compression = Compression(),
                     jobs: int | None = None) -> StoredImage:
    """IMAGE with every layer as `compressed_blob` gives it, compressed on up to JOBS threads
    (default: one per CPU); IMAGE itself when nothing changes. The new manifest (same family and
    annotations as IMAGE's) is written to STORE.blobs; the config is IMAGE's."""
    pairs = list(zip(image.layers, image.config.diff_ids))
    workers = max(1, min(len(pairs), jobs or os.cpu_count() or 1))
    if workers == 1:
        layers = [compressed_blob(store, layer, diff_id, wanted) for layer, diff_id in pairs]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="compress") as pool:
            layers = list(pool.map(lambda pair: compressed_blob(store, pair[0], pair[1], wanted), pairs))
    return image_with_layers(store, image, layers)


def _merged(old: dict, new: Descriptor) -> dict:
    """A manifest's layer entry with NEW's type, digest and size, and OLD's other fields (annotations, urls)."""
    return {**old, **new.to_json()}


def _stored_kind(store, layer: Descriptor) -> str:
    """What the blob holds, by its first bytes (a media type from another tool is not trusted)."""
    with store.blobs.open(layer.digest) as f:
        kind = compression.sniff(f.read(compression.MAGIC_SIZE))
    if kind in (compression.GZIP, compression.ZSTD):
        return kind
    if kind:
        raise LayerError(f"layer {layer.digest} is {kind}-compressed, which no image format allows")
    return UNCOMPRESSED


def _with_oci_type(layer: Descriptor, kind: str) -> Descriptor:
    return replace(layer, media_type=_media_type(kind))


def _uncompressed_blob(store, layer: Descriptor, diff_id: str) -> Descriptor:
    """The layer's plain tar as a blob of its own (its digest is the diff_id)."""
    if not store.blobs.has(diff_id):
        with store.blobs.open(layer.digest) as f, compression.decompressed(f) as source:
            store.blobs.put_stream(source, expected=diff_id)
    return Descriptor(media.OCI_LAYER, diff_id, store.blobs.size(diff_id))


def _compress(store, layer: Descriptor, diff_id: str, kind: str, level: int,
              on_write: Callable[[bytes], None] | None = None) -> Descriptor:
    """A new blob: LAYER's tar (checked against DIFF_ID on the way) compressed as KIND at LEVEL.
    ON_WRITE sees every compressed chunk as it is written (a push streams them)."""
    def fill(sink) -> None:
        with store.blobs.open(layer.digest) as f, compression.decompressed(f) as source:
            while chunk := source.read(_CHUNK):
                sink.write(chunk)
        sink.flush()

    blobs = store.blobs if on_write is None else _TeeBlobs(store.blobs, on_write)
    made = _write_layer_blob(blobs, kind, level, _media_type(kind), fill)
    if made.diff_id != diff_id:
        raise DigestMismatch(diff_id, made.diff_id, f"uncompressed layer {layer.digest} (the store is corrupt)")
    return Descriptor(made.media_type, made.digest, made.size)


class _TeeBlobs:
    """A blob store whose writers also hand each chunk written to ON_WRITE."""

    def __init__(self, blobs, on_write: Callable[[bytes], None]):
        self._blobs, self._on_write = blobs, on_write

    def writer(self) -> "_TeeWriter":
        return _TeeWriter(self._blobs.writer(), self._on_write)


class _TeeWriter:
    def __init__(self, writer, on_write: Callable[[bytes], None]):
        self._writer, self._on_write = writer, on_write

    def write(self, data: bytes) -> int:
        self._writer.write(data)
        if data:
            self._on_write(data)
        return len(data)

    @property
    def size(self) -> int:
        return self._writer.size

    def commit(self, expected: str | None = None) -> str:
        return self._writer.commit(expected)

    def __enter__(self) -> "_TeeWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._writer.abort()


_END = object()


class StreamedLayer:
    """A layer compressed while it is pushed (builder.registry.client's StreamedBlob): a worker
    thread compresses it into the blob store, as compressed_blob does, and hands each compressed
    chunk to `chunks` on the way. At most 16 chunks wait, so memory stays bounded."""

    def __init__(self, store, layer: Descriptor, diff_id: str, wanted: Compression):
        self._store, self._layer, self._diff_id = store, layer, diff_id
        self._kind, self._level = wanted.kind, wanted.resolved_level
        self._handoff = HandOff(16)  # abort() stops the producer
        self._thread: threading.Thread | None = None
        self._result: Descriptor | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            made = _compress(self._store, self._layer, self._diff_id, self._kind, self._level, self._handoff.put)
            self._store.variants.put(self._diff_id, self._kind, self._level,
                                     Variant(made.digest, made.size, made.media_type))
            self._result = made
        except Stopped:
            pass
        except BaseException as e:
            self._error = e
        finally:
            try:
                self._handoff.put(_END)
            except Stopped:
                pass

    def chunks(self) -> Iterator[bytes]:
        self._thread = threading.Thread(target=self._run, name="push-compress", daemon=True)
        self._thread.start()
        while (item := self._handoff.get()) is not _END:
            yield item
        self._thread.join()
        if self._error is not None:
            raise self._error

    def finish(self) -> Descriptor:
        if self._result is None:
            raise LayerError(f"layer {self._layer.digest} was not compressed whole")
        return self._result

    def abort(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._handoff.stop()
            while self._thread.is_alive():
                try:
                    self._handoff.get(timeout=0.1)
                except queue.Empty:
                    pass
            self._thread.join()
