"""BuildKit's cache config (`application/vnd.buildkit.cacheconfig.v0`), read and written.

    {"layers":  [{"blob": "sha256:…", "parent": -1,
                  "annotations": {"mediaType": "…", "diffID": "sha256:…", "size": 123,
                                  "createdAt": "…"}}, …],
     "records": [{"digest": "sha256:<cache key>",
                  "layers": [{"layer": 3, "createdAt": "…"}],
                  "inputs": [[{"selector": "", "link": 0}]]}, …]}

A layer is one blob and the index of the layer under it (-1: none), so a layer index names a whole
chain. A record maps a cache key to the chain its step produced (`layers`); `inputs` link it to the
records of its inputs. build-image's keys already digest the whole graph above a step, so it writes
links for the reader's benefit and never reads them: a record is only ever found by the key the
local solver computed.
"""

from __future__ import annotations

import json

from builder.errors import BuildError
from builder.image.config import INLINE_CACHE_KEY  # noqa: F401  (the image config key of an inline cache)
from builder.plumbing.canonical import canonical_json
from builder.plumbing.records import dataclass

CACHE_CONFIG_MEDIA_TYPE = "application/vnd.buildkit.cacheconfig.v0"
# build-image's own blob beside the cache config: what each exported step's key was made of, so
# that another machine can say why a step missed (builder.cache.step_history). A layer of the cache
# manifest that the cache config never names: BuildKit reads only the blobs its config names.
STEP_FACTS_MEDIA_TYPE = "application/vnd.build-image.cache.steps.v1+json"
# An inline cache has no blob of its own: the same facts are a field of its cache config, which
# BuildKit's reader (Go's encoding/json) ignores, when they are small enough for an image config.
INLINE_FACTS_KEY = "build-image.steps.v1"
INLINE_FACTS_LIMIT = 64 << 10
UNCOMPRESSED_ANNOTATION = "containerd.io/uncompressed"
CREATED_ANNOTATION = "buildkit/createdat"


class InvalidCacheConfig(BuildError):
    """A cache config that is not BuildKit's format, or whose records point nowhere."""


@dataclass(frozen=True)
class CacheLayer:
    digest: str            # the blob
    media_type: str
    size: int
    diff_id: str
    parent: int            # index of the layer below in CacheConfig.layers, -1 for none
    created: str = ""


@dataclass(frozen=True)
class CacheRecordEntry:
    key: str               # the cache key: the solver's record key for the step
    layer: int             # top of the chain the step produced
    created: str = ""
    inputs: tuple[int, ...] = ()   # records of the step's inputs (informative only)


@dataclass(frozen=True)
class CacheConfig:
    layers: tuple[CacheLayer, ...] = ()
    records: tuple[CacheRecordEntry, ...] = ()

    def chain(self, index: int) -> tuple[CacheLayer, ...]:
        """The layers of the chain whose top is INDEX, bottom first."""
        chain: list[CacheLayer] = []
        seen: set[int] = set()
        while index != -1:
            if index in seen or not 0 <= index < len(self.layers):
                raise InvalidCacheConfig(f"cache config: layer chain at {index} loops or points outside")
            seen.add(index)
            chain.append(self.layers[index])
            index = self.layers[index].parent
        return tuple(reversed(chain))

    def to_json(self) -> dict:
        layers = []
        for layer in self.layers:
            annotations = {"mediaType": layer.media_type, "diffID": layer.diff_id, "size": layer.size}
            if layer.created:
                annotations["createdAt"] = layer.created
            layers.append({"blob": layer.digest, "parent": layer.parent, "annotations": annotations})
        records = []
        for record in self.records:
            result = {"layer": record.layer}
            if record.created:
                result["createdAt"] = record.created
            entry: dict = {"digest": record.key, "layers": [result]}
            if record.inputs:
                entry["inputs"] = [[{"selector": "", "link": link}] for link in record.inputs]
            records.append(entry)
        return {"layers": layers, "records": records}

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes, descriptors: dict[str, dict] | None = None) -> "CacheConfig":
        """Parse DATA. DESCRIPTORS (digest -> the manifest's descriptor JSON) fill in a layer's media
        type, size and diff ID when its own annotations lack them, as BuildKit's older writers do."""
        try:
            doc = json.loads(data)
            layers = tuple(_layer(entry, descriptors or {}) for entry in doc.get("layers") or ())
            records = tuple(r for entry in doc.get("records") or () for r in _records(entry))
        except (ValueError, TypeError, AttributeError, KeyError) as error:
            raise InvalidCacheConfig(f"cache config is not BuildKit's cacheconfig.v0: {error}") from None
        for record in records:
            if not 0 <= record.layer < len(layers):
                raise InvalidCacheConfig(f"cache config: record {record.key} names layer {record.layer}, "
                                         f"of {len(layers)}")
        return cls(layers, records)


def _layer(entry: dict, descriptors: dict[str, dict]) -> CacheLayer:
    digest = entry["blob"]
    annotations = entry.get("annotations") or {}
    desc = descriptors.get(digest, {})
    desc_annotations = desc.get("annotations") or {}
    diff_id = annotations.get("diffID") or desc_annotations.get(UNCOMPRESSED_ANNOTATION, "")
    if not (isinstance(digest, str) and digest.startswith("sha256:") and diff_id.startswith("sha256:")):
        raise ValueError(f"layer {digest!r} lacks a sha256 blob digest or diff ID")
    return CacheLayer(digest, annotations.get("mediaType") or desc.get("mediaType", ""),
                      int(annotations.get("size") or desc.get("size") or 0), diff_id,
                      int(entry.get("parent", 0)),   # Go's omitempty drops a parent of 0
                      annotations.get("createdAt") or desc_annotations.get(CREATED_ANNOTATION, ""))


def _records(entry: dict):
    key = entry.get("digest", "")
    inputs = tuple(link["link"] for group in entry.get("inputs") or () for link in group[:1])
    for result in entry.get("layers") or ():   # a record without results only links others
        yield CacheRecordEntry(key, int(result.get("layer", 0)), result.get("createdAt", ""), inputs)
