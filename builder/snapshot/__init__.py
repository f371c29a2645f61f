"""Copy-on-write filesystems: layer diffs (layers) and unpacked snapshots on disk (store).

Re-exports are resolved on first use, so importing a sibling module (overlay, for the executor)
does not pay for tarfile, gzip and subprocess.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Layer": "layers", "LayerError": "layers", "apply_layer": "layers", "chain_ids": "layers",
    "unpack_layer": "layers", "write_layer": "layers",
    "Scratch": "store", "SnapshotStore": "store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
