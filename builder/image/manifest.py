"""Image manifests and indexes: canonical encodings, and images written to / read from a BlobStore.

An image in the store is three kinds of blob: the config (its digest is the image ID), the layers
(compressed tars, already stored by the snapshotter), and the manifest that points at both (its digest
names the image in the store and in registries).
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

from builder.cache.blobs import BlobStore, sha256_digest
from builder.errors import BlobNotFound, StoreError
from builder.image import media
from builder.image.config import ImageConfig
from builder.image.media import Descriptor, Platform
from builder.plumbing.canonical import canonical_json
from builder.plumbing.records import dataclass, replace


class InvalidImage(StoreError):
    """A manifest or config that cannot describe a runnable image."""


@dataclass(frozen=True)
class StoredImage:
    manifest: Descriptor             # the manifest blob, with the image's platform
    config_descriptor: Descriptor
    config: ImageConfig
    layers: tuple[Descriptor, ...]

    @property
    def image_id(self) -> str:
        """The config digest, which is what `docker images` shows as IMAGE ID."""
        return self.config_descriptor.digest


@dataclass(frozen=True)
class OutputManifest:
    """An image as one output writes it: its manifest in that output's media-type family."""
    image: StoredImage   # the descriptors (manifest, config, layers) carry the output's types
    data: bytes          # the manifest bytes; image.manifest.digest names them (not always in the store)


def for_output(blobs: BlobStore, image: StoredImage, oci: bool) -> OutputManifest:
    """IMAGE with OCI media types (OCI true) or Docker ones, for an exporter or a push. Only the
    manifest changes (and only if a type differs): config and layer bytes, so the image ID and the
    layer digests, stay the same. Nothing is written to BLOBS."""
    data = blobs.get_bytes(image.manifest.digest)
    try:
        converted = media.convert_manifest_bytes(data, oci)
    except ValueError as e:
        raise InvalidImage(f"manifest {image.manifest.digest} is not JSON: {e}") from None
    if converted is data:
        return OutputManifest(image, data)

    def convert(desc: Descriptor) -> Descriptor:
        return replace(desc, media_type=media.convert_media_type(desc.media_type, oci))

    manifest = Descriptor(media.OCI_MANIFEST if oci else media.DOCKER_MANIFEST, sha256_digest(converted),
                          len(converted), image.manifest.annotations, image.manifest.platform)
    converted_image = StoredImage(manifest, convert(image.config_descriptor), image.config,
                                  tuple(convert(layer) for layer in image.layers))
    return OutputManifest(converted_image, converted)


def manifest_bytes(config: Descriptor, layers: Sequence[Descriptor],
                   annotations: Mapping[str, str] | None = None,
                   media_type: str = media.OCI_MANIFEST) -> bytes:
    """An image manifest (schemaVersion 2, mediaType set), canonically encoded."""
    d: dict = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    if annotations:
        d["annotations"] = dict(annotations)
    return canonical_json(d)


def index_bytes(manifests: Sequence[Descriptor], annotations: Mapping[str, str] | None = None) -> bytes:
    """An OCI image index listing MANIFESTS, canonically encoded."""
    d: dict = {
        "schemaVersion": 2,
        "mediaType": media.OCI_INDEX,
        "manifests": [m.to_json() for m in manifests],
    }
    if annotations:
        d["annotations"] = dict(annotations)
    return canonical_json(d)


def config_platform(config: ImageConfig) -> Platform:
    return Platform(config.os, config.architecture, config.variant)


def write_image(blobs: BlobStore, config: ImageConfig, layers: Sequence[Descriptor],
                annotations: Mapping[str, str] = {}) -> StoredImage:
    """Store CONFIG and an OCI manifest over LAYERS (which must already be in BLOBS). Layers a base
    image described with Docker types get their OCI types: an OCI manifest names no Docker type."""
    layers = tuple(replace(layer, media_type=media.convert_media_type(layer.media_type, oci=True))
                   for layer in layers)
    _check_layers(blobs, config, layers)
    config_data = config.to_bytes()
    config_desc = Descriptor(media.OCI_CONFIG, blobs.put_bytes(config_data), len(config_data))
    data = manifest_bytes(config_desc, layers, annotations)
    manifest_desc = Descriptor(media.OCI_MANIFEST, blobs.put_bytes(data), len(data),
                               platform=config_platform(config))
    return StoredImage(manifest_desc, config_desc, config, layers)


def read_image(blobs: BlobStore, manifest_digest: str) -> StoredImage:
    """Read an OCI or Docker schema 2 image manifest and its config back from BLOBS."""
    data = blobs.get_bytes(manifest_digest)
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise InvalidImage(f"manifest {manifest_digest} is not JSON: {e}") from None
    media_type = _manifest_media_type(doc, manifest_digest)
    try:
        config_desc = Descriptor.from_json(doc["config"])
        layers = tuple(Descriptor.from_json(layer) for layer in doc.get("layers") or ())
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidImage(f"manifest {manifest_digest} is malformed: {e!r}") from None
    try:
        config_data = blobs.get_bytes(config_desc.digest)
    except BlobNotFound:
        raise BlobNotFound(f"config {config_desc.digest} of manifest {manifest_digest} is not in the store") from None
    try:
        config = ImageConfig.from_json(config_data)
    except ValueError as e:
        raise InvalidImage(f"config {config_desc.digest} is not a valid image config: {e}") from None
    manifest_desc = Descriptor(media_type, manifest_digest, len(data), platform=config_platform(config))
    return StoredImage(manifest_desc, config_desc, config, layers)


def _manifest_media_type(doc: object, digest: str) -> str:
    if not isinstance(doc, dict):
        raise InvalidImage(f"manifest {digest} is not a JSON object")
    media_type = doc.get("mediaType")
    if media_type in media.INDEX_TYPES or (media_type is None and "manifests" in doc):
        raise InvalidImage(f"{digest} is an image index, not an image manifest: pick one platform's manifest from it")
    if doc.get("schemaVersion") != 2:
        raise InvalidImage(f"manifest {digest} has schemaVersion {doc.get('schemaVersion')!r}; only 2 is supported")
    if media_type is None:
        # The OCI spec made mediaType optional in manifests at first; the config's type tells the format.
        config_type = (doc.get("config") or {}).get("mediaType")
        return media.DOCKER_MANIFEST if config_type == media.DOCKER_CONFIG else media.OCI_MANIFEST
    if media_type not in media.MANIFEST_TYPES:
        raise InvalidImage(f"manifest {digest} has unsupported media type {media_type!r}")
    return media_type


def _check_layers(blobs: BlobStore, config: ImageConfig, layers: tuple[Descriptor, ...]) -> None:
    # umoci, containerd and docker all reject these mismatches; fail here, where the cause is known.
    # (A history that disagrees with the layers is left alone: loaders ignore it, and base images
    # from other tools often have one.)
    if len(config.diff_ids) != len(layers):
        raise InvalidImage(f"config lists {len(config.diff_ids)} diff_ids but the image has {len(layers)} layers")
    for layer in layers:
        if not blobs.has(layer.digest):
            raise BlobNotFound(f"layer {layer.digest} is not in the blob store")
        size = blobs.size(layer.digest)
        if size != layer.size:
            raise InvalidImage(f"layer {layer.digest} is {size} bytes but its descriptor says {layer.size}")


def image_complete(blobs: BlobStore, manifest_digest: str) -> bool:
    """Whether the manifest, its config and every layer it names are all in BLOBS."""
    if not blobs.has(manifest_digest):
        return False
    try:
        manifest = json.loads(blobs.get_bytes(manifest_digest, verify=False))
        needed = [manifest["config"]["digest"]] + [layer["digest"] for layer in manifest.get("layers", [])]
    except (ValueError, KeyError, TypeError):
        return False
    return all(blobs.has(d) for d in needed)
