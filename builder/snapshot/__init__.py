"""Copy-on-write filesystems: the Snapshotter interface and its overlay and naive implementations
(snapshotter), layer diffs (layers), committed snapshots on disk (snapshots), overlay mounts
(overlay), built layers' blobs made from their snapshots when read (backed), and compressed layer
blobs made when an output needs them (compressed).

Re-exports are resolved on first use, so importing a sibling module (overlay, for the executor)
does not pay for tarfile, gzip and subprocess.
"""

from __future__ import annotations

from builder.plumbing.lazy import lazy_exports

SNAPSHOTTER_KINDS = ("overlay", "naive")  # here, so the store checks the name without importing them

_EXPORTS = {
    "Layer": "layers", "LayerError": "layers", "apply_layer": "layers", "chain_ids": "layers",
    "rewrite_layer_timestamps": "layers", "unpack_layer": "layers", "write_layer": "layers",
    "Scratch": "snapshots", "SnapshotStore": "snapshots",
    "Snapshotter": "snapshotter", "SnapshotMount": "snapshotter", "make_snapshotter": "snapshotter",
    "Compression": "compressed", "compressed_blob": "compressed", "compressed_image": "compressed",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
