"""OCI image models (config, manifest, index), exporters and the local image store.

Re-exports are resolved on first use, so reading a config does not pay for the exporters.
"""

from __future__ import annotations

from builder.plumbing.lazy import lazy_exports

LAYOUT_SCHEME = "oci-layout://"  # an OCI layout named as an image (builder.image.layout reads it)

_EXPORTS = {
    "HistoryEntry": "config", "Healthcheck": "config", "ImageConfig": "config", "RuntimeConfig": "config",
    "canonical_json": "config",
    "DockerArchiveExporter": "exporters", "Exporter": "exporters", "LocalExporter": "exporters",
    "OCIArchiveExporter": "exporters", "OCILayoutExporter": "exporters",
    "InvalidImage": "manifest", "StoredImage": "manifest", "index_bytes": "manifest",
    "manifest_bytes": "manifest", "read_image": "manifest", "write_image": "manifest",
    "Descriptor": "media", "Platform": "media",
    "ImageStore": "names",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
