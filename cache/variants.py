"""Compressed variants of layers: (diff_id, compression, level) -> the blob that holds it.

    ROOT/<diff_id hex>/<compression>-<level>.json   {"digest", "size", "mediaType"}

Layers are committed uncompressed; an output that wants one gzip- or zstd-compressed makes the
blob once and records it here, so the next export or push of the same layer compresses nothing.
The blob itself lives in the blob store; a variant whose blob is gone is a miss, not an error.
"""

from __future__ import annotations

import json
import os
import shutil

from builder.plumbing.files import write_atomically
from builder.plumbing.records import dataclass


@dataclass(frozen=True)
class Variant:
    digest: str
    size: int
    media_type: str


class LayerVariants:
    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, exist_ok=True)

    def _dir(self, diff_id: str) -> str:
        return os.path.join(self.root, diff_id.partition(":")[2])

    def get(self, diff_id: str, compression: str, level: int) -> Variant | None:
        return _read(os.path.join(self._dir(diff_id), f"{compression}-{level}.json"))

    def put(self, diff_id: str, compression: str, level: int, variant: Variant) -> None:
        directory = self._dir(diff_id)
        os.makedirs(directory, exist_ok=True)
        doc = {"digest": variant.digest, "size": variant.size, "mediaType": variant.media_type}
        write_atomically(os.path.join(directory, f"{compression}-{level}.json"),
                         json.dumps(doc, sort_keys=True).encode())

    def of(self, diff_id: str) -> list[Variant]:
        """Every recorded variant of DIFF_ID (garbage collection keeps them with the layer)."""
        directory = self._dir(diff_id)
        try:
            names = sorted(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [v for v in (_read(os.path.join(directory, n)) for n in names if n.endswith(".json")) if v]

    def forget(self, diff_id: str) -> None:
        shutil.rmtree(self._dir(diff_id), ignore_errors=True)

    def diff_ids(self) -> list[str]:
        return sorted("sha256:" + name for name in os.listdir(self.root))


def _read(path: str) -> Variant | None:
    try:
        with open(path) as f:
            doc = json.load(f)
        return Variant(doc["digest"], int(doc["size"]), doc["mediaType"])
    except (FileNotFoundError, NotADirectoryError, ValueError, KeyError, TypeError):
        return None
