"""Build cache records: a cache key names the layer a step produced and when.

A record is small JSON at RECORDS/<key hex>.json, written atomically. The layer blob itself lives
in the blob store; a record whose blob is gone is treated as a miss.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from builder.plumbing.files import write_atomically


@dataclass(frozen=True)
class CacheRecord:
    key: str
    layer_digest: str
    diff_id: str
    size: int
    media_type: str
    created: str

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "layer": {"digest": self.layer_digest, "diffID": self.diff_id, "size": self.size,
                      "mediaType": self.media_type},
            "created": self.created,
        }

    @classmethod
    def from_json(cls, data: dict) -> "CacheRecord":
        layer = data["layer"]
        return cls(data["key"], layer["digest"], layer["diffID"], int(layer["size"]), layer["mediaType"],
                   data["created"])


class CacheRecords:
    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, exist_ok=True)

    def _path(self, key: str) -> str:
        return os.path.join(self.root, key.partition(":")[2] + ".json")

    def get(self, key: str) -> CacheRecord | None:
        try:
            with open(self._path(key)) as f:
                return CacheRecord.from_json(json.load(f))
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def put(self, record: CacheRecord) -> None:
        write_atomically(self._path(record.key), json.dumps(record.to_json(), sort_keys=True).encode())

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def keys(self) -> list[str]:
        return sorted("sha256:" + n[:-5] for n in os.listdir(self.root) if n.endswith(".json"))
