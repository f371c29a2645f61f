"""OCI image models (config, manifest, index), exporters and the local image store.

Re-exports are resolved on first use, so reading a config does not pay for the exporters.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "HistoryEntry": "config", "Healthcheck": "config", "ImageConfig": "config", "RuntimeConfig": "config",
    "canonical_json": "config",
    "DockerArchiveExporter": "exporters", "Exporter": "exporters", "LocalExporter": "exporters",
    "OCIArchiveExporter": "exporters", "OCILayoutExporter": "exporters",
    "InvalidImage": "manifest", "StoredImage": "manifest", "index_bytes": "manifest",
    "manifest_bytes": "manifest", "read_image": "manifest", "write_image": "manifest",
    "Descriptor": "media", "Platform": "media",
    "ImageStore": "store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
