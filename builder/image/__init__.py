"""OCI image models (config, manifest, index), exporters and the local image store."""

from builder.image.config import HistoryEntry, Healthcheck, ImageConfig, RuntimeConfig, canonical_json
from builder.image.exporters import (
    DockerArchiveExporter,
    Exporter,
    LocalExporter,
    OCIArchiveExporter,
    OCILayoutExporter,
)
from builder.image.manifest import InvalidImage, StoredImage, index_bytes, manifest_bytes, read_image, write_image
from builder.image.media import Descriptor, Platform
from builder.image.store import ImageStore

__all__ = [
    "Descriptor", "DockerArchiveExporter", "Exporter", "Healthcheck", "HistoryEntry", "ImageConfig",
    "ImageStore", "InvalidImage", "LocalExporter", "OCIArchiveExporter", "OCILayoutExporter", "Platform",
    "RuntimeConfig", "StoredImage", "canonical_json", "index_bytes", "manifest_bytes", "read_image",
    "write_image",
]
