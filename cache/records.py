"""Build cache records: a cache key names the layer a step produced and when.

    BaseCacheRecords     the interface: get, put, delete, keys
    DiskCacheRecords     small JSON at RECORDS/<key hex>.json, written atomically (`CacheRecords`)
                         but not fsync-ed one by one: a build makes them durable all at once
                         (`Store.sync`) before any image name moves. A record lost or torn by a
                         power loss reads as a miss; one that outlived its layer's blob fails
                         the solver's check (the blob must be there, at the recorded size).
    MemoryCacheRecords   the same JSON in a dict, for tests

The layer blob itself lives in the blob store; a record whose blob is gone is treated as a miss.
"""

from __future__ import annotations

import json
import os
import threading
from abc import ABC, abstractmethod

from builder.plumbing.files import write_atomically
from builder.plumbing.records import dataclass


@dataclass(frozen=True)
class CacheRecord:
    key: str
    layer_digest: str
    diff_id: str
    size: int
    media_type: str
    created: str
    # Which mtimes the layer holds: "clamped:<SOURCE_DATE_EPOCH>" or "unclamped" (rewrite-timestamp);
    # "" in records written before the distinction, which no build reads as a hit.
    timestamps: str = ""

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "layer": {"digest": self.layer_digest, "diffID": self.diff_id, "size": self.size,
                      "mediaType": self.media_type, "timestamps": self.timestamps},
            "created": self.created,
        }

    @classmethod
    def from_json(cls, data: dict) -> "CacheRecord":
        layer = data["layer"]
        return cls(data["key"], layer["digest"], layer["diffID"], int(layer["size"]), layer["mediaType"],
                   data["created"], layer.get("timestamps", ""))


class BaseCacheRecords(ABC):
    @abstractmethod
    def get(self, key: str) -> CacheRecord | None:
        """The record for KEY; None if there is none or it cannot be read (a miss, not an error)."""

    @abstractmethod
    def put(self, record: CacheRecord) -> None:
        """Store RECORD under its key, replacing any record there, all at once."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Forget KEY's record; nothing happens if there is none."""

    @abstractmethod
    def keys(self) -> list[str]:
        """Every recorded key, sorted."""


class DiskCacheRecords(BaseCacheRecords):
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
        write_atomically(self._path(record.key), json.dumps(record.to_json(), sort_keys=True).encode(),
                         durable=False)

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def keys(self) -> list[str]:
        return sorted("sha256:" + n[:-5] for n in os.listdir(self.root) if n.endswith(".json"))


CacheRecords = DiskCacheRecords


class MemoryCacheRecords(BaseCacheRecords):
    """Records kept as the JSON text the disk twin writes, so both read back through the same
    decoding. `texts` maps key -> that text; a test may damage one to see a miss."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> CacheRecord | None:
        text = self.texts.get(key)
        if text is None:
            return None
        try:
            return CacheRecord.from_json(json.loads(text))
        except (ValueError, KeyError):
            return None

    def put(self, record: CacheRecord) -> None:
        text = json.dumps(record.to_json(), sort_keys=True)
        with self._lock:
            self.texts[record.key] = text

    def delete(self, key: str) -> None:
        with self._lock:
            self.texts.pop(key, None)

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self.texts)
