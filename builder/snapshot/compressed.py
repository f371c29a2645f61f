"""Compressed layer blobs, made only when an output needs them (BuildKit's lazy blobs).

A build commits its layers uncompressed: the tar is streamed through sha256 into the blob store,
and the blob's digest is the layer's diff_id. An OCI or docker archive, `save`, a push or a
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from builder.cache.variants import Variant
from builder.errors import DigestMismatch
from builder.image import media
from builder.image.manifest import StoredImage, read_image
from builder.image.media import Descriptor
from builder.plumbing import compression
from builder.plumbing.canonical import canonical_json
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
    current = _LAYER_KINDS.get(layer.media_type)
    if current is None:
        return layer  # foreign or non-distributable layers are shipped as they are
    current = _stored_kind(store, layer)
    if current == wanted.kind or (current != UNCOMPRESSED and not wanted.force):
        return _with_oci_type(layer, current)
    if wanted.kind == UNCOMPRESSED:
        return _uncompressed_blob(store, layer, diff_id)
    level = wanted.resolved_level
    known = store.variants.get(diff_id, wanted.kind, level)
    if known is not None and store.blobs.has(known.digest) and store.blobs.size(known.digest) == known.size:
        return Descriptor(known.media_type, known.digest, known.size)
    made = _compress(store, layer, diff_id, wanted.kind, level)
    store.variants.put(diff_id, wanted.kind, level, Variant(made.digest, made.size, made.media_type))
    return made


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
    oci = media.is_oci_type(image.manifest.media_type)
    layers = [replace(l, media_type=media.convert_media_type(l.media_type, oci)) for l in layers]
    if tuple(layers) == image.layers:
        return image
    doc = json.loads(store.blobs.get_bytes(image.manifest.digest))
    doc["layers"] = [_merged(old, new) for old, new in zip(doc.get("layers") or (), layers)]
    digest = store.blobs.put_bytes(canonical_json(doc))
    converted = read_image(store.blobs, digest)
    return replace(converted, manifest=replace(converted.manifest, annotations=image.manifest.annotations))


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


def _compress(store, layer: Descriptor, diff_id: str, kind: str, level: int) -> Descriptor:
    """A new blob: LAYER's tar (checked against DIFF_ID on the way) compressed as KIND at LEVEL."""
    def fill(sink) -> None:
        with store.blobs.open(layer.digest) as f, compression.decompressed(f) as source:
            while chunk := source.read(_CHUNK):
                sink.write(chunk)
        sink.flush()

    made = _write_layer_blob(store.blobs, kind, level, _media_type(kind), fill)
    if made.diff_id != diff_id:
        raise DigestMismatch(diff_id, made.diff_id, f"uncompressed layer {layer.digest} (the store is corrupt)")
    return Descriptor(made.media_type, made.digest, made.size)
