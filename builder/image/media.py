"""OCI and Docker media types, the descriptor that points at a blob, and the one conversion between
the two families that every output uses.

Base images come with either family (most registries still serve Docker schema 2); an output speaks
one: OCI layouts and OCI pushes OCI's, docker archives Docker's. Converting rewrites only the
`mediaType` fields of a manifest or index, so layer and config bytes (and the image ID) stay the same:

    Docker                                                   OCI
    ...distribution.manifest.list.v2+json                    ...oci.image.index.v1+json
    ...distribution.manifest.v2+json                         ...oci.image.manifest.v1+json
    ...container.image.v1+json                               ...oci.image.config.v1+json
    ...image.rootfs.diff.tar[.gzip|.zstd]                    ...oci.image.layer.v1.tar[+gzip|+zstd]
    ...image.rootfs.foreign.diff.tar[.gzip]                  ...oci.image.layer.nondistributable.v1.tar[+gzip]
"""

from __future__ import annotations

import json

from builder.plumbing.canonical import canonical_json
from builder.plumbing.records import dataclass, field

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_NONDISTRIBUTABLE_LAYER = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_NONDISTRIBUTABLE_LAYER_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"

DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"  # containerd's and BuildKit's name
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_FOREIGN_LAYER_TAR = "application/vnd.docker.image.rootfs.foreign.diff.tar"

INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)

_DOCKER_TO_OCI = {
    DOCKER_MANIFEST_LIST: OCI_INDEX,
    DOCKER_MANIFEST: OCI_MANIFEST,
    DOCKER_CONFIG: OCI_CONFIG,
    DOCKER_LAYER: OCI_LAYER,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    DOCKER_LAYER_ZSTD: OCI_LAYER_ZSTD,
    DOCKER_FOREIGN_LAYER: OCI_NONDISTRIBUTABLE_LAYER_GZIP,
    DOCKER_FOREIGN_LAYER_TAR: OCI_NONDISTRIBUTABLE_LAYER,
}
_OCI_TO_DOCKER = {oci: docker for docker, oci in _DOCKER_TO_OCI.items()}


def is_oci_type(media_type: str) -> bool:
    return media_type.startswith("application/vnd.oci.")


def convert_media_type(media_type: str, oci: bool) -> str:
    """MEDIA_TYPE in the OCI family (OCI true) or the Docker one; a type with no counterpart (an
    artifact's, an encrypted layer's) is kept as it is."""
    table = _DOCKER_TO_OCI if oci else _OCI_TO_DOCKER
    return table.get(media_type, media_type)


def convert_document(doc: dict, oci: bool) -> dict:
    """A manifest or index JSON object with every media type it names converted (see the module
    docstring); everything else, annotations and urls included, is kept. A Docker document always
    names its own type (schema 2 requires it); an OCI one only if it did before or it changed."""
    out = dict(doc)
    changed = False
    if isinstance(doc.get("config"), dict):
        out["config"] = _convert_descriptor(doc["config"], oci)
        changed |= out["config"] != doc["config"]
    for key in ("layers", "manifests"):
        if isinstance(doc.get(key), list):
            out[key] = [_convert_descriptor(d, oci) if isinstance(d, dict) else d for d in doc[key]]
            changed |= out[key] != doc[key]
    own = doc.get("mediaType")
    if own is None:
        own = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if "mediaType" in doc or changed or not oci:
        out["mediaType"] = convert_media_type(own, oci)
    return out


def convert_manifest_bytes(data: bytes, oci: bool) -> bytes:
    """DATA (a manifest or index) with convert_document applied; the very same bytes, and so the
    same digest, when nothing needed converting, else canonical JSON."""
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("a manifest must be a JSON object")
    converted = convert_document(doc, oci)
    if converted == doc:
        return data
    return canonical_json(converted)


def _convert_descriptor(desc: dict, oci: bool) -> dict:
    if "mediaType" not in desc:
        return desc
    return {**desc, "mediaType": convert_media_type(desc["mediaType"], oci)}


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def to_json(self) -> dict:
        d = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            d["variant"] = self.variant
        return d


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: tuple[tuple[str, str], ...] = field(default=())
    platform: Platform | None = None

    def to_json(self) -> dict:
        d: dict = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.platform is not None:
            d["platform"] = self.platform.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Descriptor":
        p = d.get("platform")
        return cls(
            media_type=d.get("mediaType", ""),
            digest=d["digest"],
            size=int(d.get("size", 0)),
            annotations=tuple(sorted((d.get("annotations") or {}).items())),
            platform=Platform(p.get("os", ""), p.get("architecture", ""), p.get("variant", "")) if p else None,
        )
