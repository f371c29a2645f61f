"""Writing the build cache out: `--cache-to type=registry|local|inline`.

The steps to export come from the solver as `StepCache` (a record key, the chain of layers the step
left, when its layer was made). They become one CacheConfig (format.py) and, for registry and local,
an OCI image manifest whose config is that cache config and whose layers are the blobs it names:

    registry   the manifest pushed as REF (blobs the registry has already are not sent again)
    local      an OCI layout at DIR: oci-layout, blobs/sha256/…, index.json naming the manifest
               (`org.opencontainers.image.ref.name` TAG, default "latest"); blobs already there stay
    inline     the cache config, base64, under "moby.buildkit.cache.v0" in the image config itself;
               its layers are the image's own

Registry and local caches carry one more blob, the exported steps' facts (STEP_FACTS_MEDIA_TYPE,
builder.cache.step_history's JSON), as the manifest's last layer, so that a miss on another machine
is explained against the build that wrote the cache. An inline cache carries them as a field of
its cache config (INLINE_FACTS_KEY), unless they pass INLINE_FACTS_LIMIT bytes (every pull of the
image reads its config).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Callable, Sequence

from builder.errors import BuildError, ExportError
from builder.image.manifest import manifest_bytes
from builder.image.media import OCI_INDEX, OCI_MANIFEST, Descriptor, convert_media_type
from builder.plumbing.canonical import canonical_json
from builder.plumbing.files import write_atomically
from builder.plumbing.records import dataclass

from .format import (CACHE_CONFIG_MEDIA_TYPE, CREATED_ANNOTATION, INLINE_FACTS_KEY, INLINE_FACTS_LIMIT,
                     STEP_FACTS_MEDIA_TYPE, UNCOMPRESSED_ANNOTATION, CacheConfig, CacheLayer, CacheRecordEntry)
from .spec import CacheSpec

REF_NAME = "org.opencontainers.image.ref.name"
OCI_LAYOUT = canonical_json({"imageLayoutVersion": "1.0.0"})


@dataclass(frozen=True)
class StepCache:
    """One step's cache record as the solver has it."""

    key: str                       # the record key (the step's cache key with its timestamp mode)
    layers: tuple                  # LayerRef-likes (digest, diff_id, size, media_type), base first
    created: str | None
    inputs: tuple[str, ...] = ()   # record keys of the steps it read (written as links)


@dataclass(frozen=True)
class ExportResult:
    type: str
    where: str
    mode: str
    records: int
    layers: int
    blobs_written: int = 0         # sent to the registry or copied into the directory
    blobs_reused: int = 0          # the destination had them already (or mounted them)
    manifest: str = ""             # the cache manifest's digest (registry, local)
    error: str = ""                # ignore-error=true: what failed

    def to_json(self) -> dict:
        out = {"type": self.type, "mode": self.mode, "records": self.records, "layers": self.layers,
               "blobs_written": self.blobs_written, "blobs_reused": self.blobs_reused}
        out["ref" if self.type == "registry" else "dest" if self.type == "local" else "where"] = self.where
        if self.manifest:
            out["manifest"] = self.manifest
        if self.error:
            out["error"] = self.error
        return out


def _layer_blob(store, layer) -> Descriptor:
    """The gzip blob a cache export ships for LAYER (a LayerRef): made now from the stored tar (and
    kept, so the image's own push or a second export compresses nothing), or the one stored."""
    from builder.snapshot.compressed import compressed_blob

    stored = Descriptor(convert_media_type(layer.media_type, oci=True), layer.digest, layer.size)
    return compressed_blob(store, stored, layer.diff_id)


def cache_config(steps: Sequence[StepCache], store) -> tuple[CacheConfig, tuple[Descriptor, ...]]:
    """The cache config over STEPS and the descriptors of the blobs it names, in order. The order is
    canonical (shorter chains first, then by key), so an inline cache, which is part of the image
    config, gives the same image ID on every machine."""
    layers: list[CacheLayer] = []
    at: dict[tuple[str, int], int] = {}          # (blob, parent index) -> layer index
    descriptors: dict[str, Descriptor] = {}
    tops: dict[str, int] = {}                    # record key -> its top layer
    ordered = sorted({s.key: s for s in steps if s.layers}.values(), key=lambda s: (len(s.layers), s.key))
    for step in ordered:
        parent = -1
        for position, layer in enumerate(step.layers):
            desc = _layer_blob(store, layer)
            top = position == len(step.layers) - 1
            slot = (desc.digest, parent)
            if slot not in at:
                at[slot] = len(layers)
                layers.append(CacheLayer(desc.digest, desc.media_type, desc.size, layer.diff_id, parent,
                                         (step.created or "") if top else ""))
            if desc.digest not in descriptors:
                annotations = {UNCOMPRESSED_ANNOTATION: layer.diff_id}
                if top and step.created:
                    annotations[CREATED_ANNOTATION] = step.created
                descriptors[desc.digest] = Descriptor(desc.media_type, desc.digest, desc.size,
                                                      tuple(sorted(annotations.items())))
            parent = at[slot]
        tops[step.key] = parent
    index = {step.key: n for n, step in enumerate(ordered)}
    records = tuple(CacheRecordEntry(step.key, tops[step.key], step.created or "",
                                     tuple(index[k] for k in step.inputs if k in index)) for step in ordered)
    return CacheConfig(tuple(layers), records), tuple(descriptors.values())


def inline_value(steps: Sequence[StepCache], store, facts: bytes = b"") -> str:
    """The image config's "moby.buildkit.cache.v0" value: the cache config, base64, with FACTS
    (the steps' facts, canonical JSON) as one more field if they are small enough."""
    config, _ = cache_config(steps, store)
    if not facts or len(facts) > INLINE_FACTS_LIMIT:
        return base64.b64encode(config.to_bytes()).decode()
    doc = config.to_json()
    doc[INLINE_FACTS_KEY] = json.loads(facts)
    return base64.b64encode(canonical_json(doc)).decode()


def cache_manifest(steps: Sequence[StepCache], store,
                   facts: bytes = b"") -> tuple[bytes, CacheConfig, tuple[Descriptor, ...]]:
    """The cache as an OCI image manifest (config: the cache config, in STORE's blobs; layers: its
    blobs, then FACTS, the steps' facts, if any). The descriptors returned are every layer's."""
    config, descriptors = cache_config(steps, store)
    data = config.to_bytes()
    config_desc = Descriptor(CACHE_CONFIG_MEDIA_TYPE, store.blobs.put_bytes(data), len(data))
    if facts:
        descriptors += (Descriptor(STEP_FACTS_MEDIA_TYPE, store.blobs.put_bytes(facts), len(facts)),)
    return manifest_bytes(config_desc, descriptors), config, descriptors


def export_registry(spec: CacheSpec, steps: Sequence[StepCache], store, client_factory: Callable,
                    mount_from: dict[str, str] | None = None, facts: bytes = b"") -> ExportResult:
    """Push the cache manifest as spec's ref=; blobs the registry has are skipped, others mounted
    from MOUNT_FROM's repositories (digest -> repository of the same registry) where it allows."""
    from builder.registry.reference import parse_reference

    manifest, config, descriptors = cache_manifest(steps, store, facts)
    ref = parse_reference(spec.get("ref"))
    statuses: dict[str, str] = {}
    client = client_factory(lambda digest, status: statuses.__setitem__(digest, status))
    try:
        digest = client.push(ref, store.blobs, manifest, OCI_MANIFEST,
                             mount_from={d: r for d, r in (mount_from or {}).items()
                                         if r and r != ref.repository})
    finally:
        client.close()
    written = sum(1 for s in statuses.values() if s == "pushed")
    return ExportResult("registry", str(ref), spec.mode, len(config.records), len(config.layers),
                        written, len(statuses) - written, digest)


def export_local(spec: CacheSpec, steps: Sequence[StepCache], store, facts: bytes = b"") -> ExportResult:
    """Write (or add to) the OCI layout at dest=: the blobs, the manifest, index.json last."""
    dest = spec.get("dest")
    tag = spec.get("tag", "latest")
    manifest, config, descriptors = cache_manifest(steps, store, facts)
    manifest_digest = store.blobs.put_bytes(manifest)
    config_digest = json.loads(manifest)["config"]["digest"]
    blob_dir = os.path.join(dest, "blobs", "sha256")
    try:
        os.makedirs(blob_dir, exist_ok=True)
        written = reused = 0
        for digest in [*(d.digest for d in descriptors), config_digest, manifest_digest]:
            path = os.path.join(blob_dir, digest.partition(":")[2])
            if os.path.exists(path):
                reused += 1
                continue
            with store.blobs.open(digest) as source:
                write_atomically(path, lambda out, source=source: _copy(source, out))
            written += 1
        write_atomically(os.path.join(dest, "oci-layout"), OCI_LAYOUT)
        entries = [e for e in _layout_entries(dest) if (e.get("annotations") or {}).get(REF_NAME) != tag]
        entries.append(Descriptor(OCI_MANIFEST, manifest_digest, len(manifest), ((REF_NAME, tag),)).to_json())
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        write_atomically(os.path.join(dest, "index.json"), canonical_json(index))
    except OSError as error:
        raise ExportError(f"cache export to {dest}: {error.strerror or error}") from None
    return ExportResult("local", dest, spec.mode, len(config.records), len(config.layers), written, reused,
                        manifest_digest)


def _layout_entries(dest: str) -> list[dict]:
    try:
        with open(os.path.join(dest, "index.json"), "rb") as f:
            entries = json.load(f).get("manifests") or []
    except FileNotFoundError:
        return []
    except (ValueError, AttributeError):
        raise BuildError(f"cache export to {dest}: index.json there is not an OCI index") from None
    return [e for e in entries if isinstance(e, dict)]


def _copy(source, out) -> None:
    while chunk := source.read(1 << 20):
        out.write(chunk)
