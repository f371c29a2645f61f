"""Reading a build cache in: `--cache-from type=registry,ref=REF | type=local,src=DIR | IMAGE`.

Metadata first: loading a source reads only its manifest and cache config (each checked against
the digest that names it). A layer blob is fetched when the solver asks for the record of a step
that hit, and only then; it is checked against its digest as it streams into the store, and its
uncompressed content against the diff ID the record claims, before the step uses it.

Nothing in an imported record is trusted beyond matching: the solver looks a record up by the key
it computed itself, and a record's layers are used only if the chain under its top layer is the
very chain the step's parent has here. A source that cannot be read, a blob or a record that fails
a check, is a one-line warning; the step then runs as if there were no cache.

A cache manifest build-image wrote also names the exported steps' facts (STEP_FACTS_MEDIA_TYPE),
which explain a miss against the build that wrote the cache. They too are fetched only when asked
for (`step_histories`: when a step misses and this store has no earlier build of it), checked
against their digest, and parsed by the caller; one that fails is a warning, and misses are then
explained as if it were not there.

A registry ref may name a cache manifest (an OCI manifest whose config is the cache config, as
build-image and BuildKit's image-manifest=true write it), BuildKit's older index form (an index
listing the layers and the config), or an image whose config carries an inline cache (a cache
config, or the bare list of records that BuildKit before v0.10, in Docker 20.10, writes).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from typing import Callable, Sequence

from builder.errors import BuildError, DigestMismatch
from builder.image.media import INDEX_TYPES, Descriptor, Platform
from builder.plumbing.records import dataclass, field

from .format import (CACHE_CONFIG_MEDIA_TYPE, INLINE_CACHE_KEY, INLINE_FACTS_KEY, STEP_FACTS_MEDIA_TYPE, CacheConfig,
                     CacheLayer, InvalidCacheConfig)
from .spec import CacheSpec

_MAX_CONFIG = 32 << 20
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class ImportedLayer:
    """What an imported record gives a step: its layer, verified and now in the local store."""

    digest: str
    diff_id: str
    size: int
    media_type: str
    created: str


@dataclass
class ImportStats:
    spec: CacheSpec
    records: int = 0
    hits: int = 0
    blobs_downloaded: int = 0
    blobs_local: int = 0               # a hit whose blob the store had already
    error: str = ""                    # why the source could not be read at all

    def to_json(self) -> dict:
        out = {"type": self.spec.type, "records": self.records, "hits": self.hits,
               "blobs_downloaded": self.blobs_downloaded, "blobs_reused": self.blobs_local}
        out["src" if self.spec.type == "local" else "ref"] = self.spec.where
        if self.error:
            out["error"] = self.error
        return out


class _Source:
    """One --cache-from: its cache config and how to fetch a blob it names."""

    def __init__(self, spec: CacheSpec, config: CacheConfig, facts: Descriptor | None = None,
                 inline_facts: bytes | None = None):
        self.spec = spec
        self.config = config
        self.facts = facts             # the steps' facts blob its manifest names, if any
        self.inline_facts = inline_facts   # or the facts an inline cache config holds (checked with it)
        self.stats = ImportStats(spec, records=len(config.records))

    def fetch(self, layer: CacheLayer, blobs) -> None:
        raise NotImplementedError

    def small_blob(self, desc: Descriptor, blobs) -> bytes:
        """A metadata blob the manifest names, checked against its digest."""
        raise NotImplementedError

    @property
    def repository(self) -> str:
        return ""

    def close(self) -> None:
        pass


class _RegistrySource(_Source):
    def __init__(self, spec, config, client, ref, facts=None, inline_facts=None):
        super().__init__(spec, config, facts, inline_facts)
        self._client = client
        self._ref = ref

    def fetch(self, layer: CacheLayer, blobs) -> None:
        self._client.fetch_blob(self._ref, Descriptor(layer.media_type, layer.digest, layer.size), blobs)

    def small_blob(self, desc: Descriptor, blobs) -> bytes:
        return self._client.small_blob(self._ref, desc, blobs)

    @property
    def repository(self) -> str:
        return self._ref.repository

    @property
    def registry(self) -> str:
        return self._ref.registry

    def close(self) -> None:
        self._client.close()


class _LocalSource(_Source):
    def __init__(self, spec, config, root, facts=None):
        super().__init__(spec, config, facts)
        self._root = root

    def small_blob(self, desc: Descriptor, blobs) -> bytes:
        return _read_blob(self._root, desc)

    def fetch(self, layer: CacheLayer, blobs) -> None:
        path = _blob_path(self._root, layer.digest)
        try:
            with open(path, "rb") as f:
                blobs.put_stream(f, layer.digest)   # DigestMismatch: nothing is stored
        except FileNotFoundError:
            raise BuildError(f"blob {layer.digest} is missing from {self._root}") from None


@dataclass
class ImportedCache:
    """Every --cache-from source, loaded; `lookup` is what the solver calls on a local miss."""

    sources: list[_Source] = field(default_factory=list)
    stats: list[ImportStats] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    _by_key: dict = field(default_factory=dict)
    _verified: set = field(default_factory=set)          # (blob, diff ID) pairs checked already
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _histories: list | None = None                        # step_histories' answer, once asked
    _histories_lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, source: _Source) -> None:
        self.sources.append(source)
        self.stats.append(source.stats)
        for entry in source.config.records:
            self._by_key.setdefault(entry.key, []).append((source, entry))

    def warn(self, text: str) -> None:
        with self._lock:
            if text not in self.warnings:
                self.warnings.append(text)

    def has(self, key: str) -> bool:
        """Does any source hold a record for KEY (before any check: lookup makes those)?"""
        return key in self._by_key

    def lookup(self, key: str, parent_layers: Sequence, blobs) -> ImportedLayer | None:
        """The layer an imported record gives KEY on top of PARENT_LAYERS, or None."""
        for source, entry in self._by_key.get(key, ()):
            try:
                chain = source.config.chain(entry.layer)
            except InvalidCacheConfig as error:
                self.warn(f"cache from {source.spec.where}: {error}; ignoring the record")
                continue
            top = chain[-1]
            if [l.diff_id for l in chain[:-1]] != [l.diff_id for l in parent_layers]:
                self.warn(f"cache from {source.spec.where}: record {key[:19]}… does not sit on the layers "
                          "its step's parent has here; the step runs")
                continue
            had = blobs.has(top.digest)
            try:
                if not had:
                    source.fetch(top, blobs)
                self._check_diff_id(top, blobs)
            except BuildError as error:
                self.warn(f"cache from {source.spec.where}: layer {top.digest} rejected: {_one_line(error)}; "
                          "the step runs")
                continue
            with self._lock:
                source.stats.hits += 1
                if had:
                    source.stats.blobs_local += 1
                else:
                    source.stats.blobs_downloaded += 1
            # The size is the blob's own (verified by its digest), not what the record says.
            return ImportedLayer(top.digest, top.diff_id, blobs.size(top.digest),
                                 top.media_type or "application/vnd.oci.image.layer.v1.tar+gzip",
                                 entry.created or top.created)
        return None

    def step_histories(self, parse: Callable[[bytes], object], blobs) -> list:
        """What PARSE makes of each source's steps' facts blob, in --cache-from order; fetched and
        checked the first time it is asked for. A blob that cannot be fetched, fails its digest, or
        that PARSE refuses (ValueError) is a warning and is left out."""
        with self._histories_lock:
            if self._histories is None:
                self._histories = []
                for source in self.sources:
                    if source.facts is None and source.inline_facts is None:
                        continue
                    try:
                        if source.facts is None:
                            self._histories.append(parse(source.inline_facts))
                            continue
                        if not _SHA256.fullmatch(str(source.facts.digest)):
                            raise InvalidCacheConfig("its descriptor has no sha256 digest")
                        if source.facts.size > _MAX_CONFIG:
                            raise InvalidCacheConfig(f"it claims {source.facts.size} bytes")
                        self._histories.append(parse(source.small_blob(source.facts, blobs)))
                    except (BuildError, ValueError, OSError) as error:
                        self.warn(f"cache from {source.spec.where}: its step facts are not used: {_one_line(error)}; "
                                  "misses are explained without them")
            return list(self._histories)

    def close(self) -> None:
        for source in self.sources:
            source.close()

    def mount_sources(self) -> dict[str, tuple[str, str]]:
        """Blob digest -> (registry, repository) of the registry sources that named it, for pushes
        that can mount a blob instead of sending it."""
        out: dict[str, tuple[str, str]] = {}
        for source in self.sources:
            if isinstance(source, _RegistrySource):
                for layer in source.config.layers:
                    out.setdefault(layer.digest, (source.registry, source.repository))
        return out

    def _check_diff_id(self, layer: CacheLayer, blobs) -> None:
        """The blob, decompressed, hashes to the diff ID the record claims (so the image config,
        which lists diff IDs, is true)."""
        from builder.plumbing.compression import CorruptStream, decompressed

        if (layer.digest, layer.diff_id) in self._verified:
            return
        digest = hashlib.sha256()
        try:
            with blobs.open(layer.digest) as stream, decompressed(stream) as plain:
                while chunk := plain.read(1 << 20):
                    digest.update(chunk)
        except (OSError, EOFError, CorruptStream) as error:
            raise BuildError(f"it does not decompress: {error}") from None
        actual = "sha256:" + digest.hexdigest()
        if actual != layer.diff_id:
            raise DigestMismatch(layer.diff_id, actual, "uncompressed layer")
        with self._lock:
            self._verified.add((layer.digest, layer.diff_id))


def load(specs: Sequence[CacheSpec], client_factory: Callable, blobs, platform: Platform) -> ImportedCache:
    """Every source's metadata; one that cannot be read is a warning, not a failure (as BuildKit)."""
    imported = ImportedCache()
    for spec in specs:
        client = None if spec.type == "local" else client_factory()
        try:
            try:
                source = _load_local(spec) if client is None else _load_registry(spec, client, blobs, platform)
            except (KeyError, TypeError, ValueError, AttributeError) as error:  # JSON of the wrong shape
                raise InvalidCacheConfig(f"the cache's metadata is malformed ({type(error).__name__}: {error})") from None
        except BuildError as error:
            if client is not None:
                client.close()
            stats = ImportStats(spec, error=_one_line(error))
            imported.stats.append(stats)
            imported.warn(f"cache from {spec.where} not used: {_one_line(error)}")
            continue
        imported.add(source)
    return imported


def _load_registry(spec: CacheSpec, client, blobs, platform: Platform) -> _RegistrySource:
    from builder.registry.reference import parse_reference

    ref = parse_reference(spec.get("ref"))
    digest, data, media_type = client.manifest(ref)
    doc = _json(data, "manifest")
    if media_type in INDEX_TYPES:
        entries = [Descriptor.from_json(m) for m in doc.get("manifests") or ()]
        config = next((e for e in entries if e.media_type == CACHE_CONFIG_MEDIA_TYPE), None)
        if config is not None:   # BuildKit's index form: the layers and the config side by side
            descriptors = {m["digest"]: m for m in doc.get("manifests") or ()}
            return _RegistrySource(spec, _parse(client.small_blob(ref, config, blobs), descriptors), client, ref)
        digest, data, media_type = client.resolve(ref, platform)   # an image index: this platform's image
        doc = _json(data, "manifest")
    config_desc = Descriptor.from_json(doc.get("config") or {"digest": ""})
    if not config_desc.digest.startswith("sha256:"):
        raise InvalidCacheConfig(f"{ref.familiar} is neither a build cache nor an image")
    if config_desc.size > _MAX_CONFIG:
        raise InvalidCacheConfig(f"{ref.familiar}: its config claims {config_desc.size} bytes")
    descriptors = {m["digest"]: m for m in doc.get("layers") or () if isinstance(m, dict) and "digest" in m}
    config_bytes = client.small_blob(ref, config_desc, blobs)
    if config_desc.media_type == CACHE_CONFIG_MEDIA_TYPE:
        return _RegistrySource(spec, _parse(config_bytes, descriptors), client, ref, _facts(doc))
    layers = [m for m in doc.get("layers") or () if isinstance(m, dict)]
    config, facts = _inline(config_bytes, descriptors, layers, ref.familiar)
    return _RegistrySource(spec, config, client, ref, inline_facts=facts)


def _inline(config_bytes: bytes, descriptors: dict, layers: list[dict], name: str) -> tuple[CacheConfig, bytes | None]:
    """The inline cache an image config carries (its layers must be the image's own), and the
    steps' facts in it, if any (parsed only when asked for)."""
    image_config = _json(config_bytes, "image config")
    value = image_config.get(INLINE_CACHE_KEY)
    if not value:
        raise InvalidCacheConfig(f"{name} has no inline cache (build it with --cache-to type=inline)")
    try:
        data = base64.b64decode(value, validate=True)
    except (ValueError, TypeError):
        raise InvalidCacheConfig(f"{name}: its inline cache is not base64") from None
    if data.lstrip().startswith(b"["):
        data = _legacy_inline(data, layers, image_config)
    config = _parse(data, descriptors)
    strangers = {l.digest for l in config.layers} - set(descriptors)
    if strangers:
        raise InvalidCacheConfig(f"{name}: its inline cache names layers the image does not have")
    facts = json.loads(data).get(INLINE_FACTS_KEY)
    return config, None if facts is None else json.dumps(facts).encode()


def _legacy_inline(data: bytes, layers: list[dict], image_config: dict) -> bytes:
    """BuildKit before v0.10 (Docker 20.10) writes only the records, as a list: a record's layer N
    is the image's own layers 0..N. The same as a cache config, its layers the image's chain."""
    diff_ids = (image_config.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(layers):
        raise InvalidCacheConfig("the image's config and manifest disagree on its layers")
    chain = [{"blob": desc["digest"], "parent": index - 1,
              "annotations": {"mediaType": desc.get("mediaType", ""), "size": desc.get("size", 0),
                              "diffID": diff_id}}
             for index, (desc, diff_id) in enumerate(zip(layers, diff_ids))]
    return json.dumps({"layers": chain, "records": json.loads(data)}).encode()


def _load_local(spec: CacheSpec) -> _LocalSource:
    root = spec.get("src")
    tag = spec.get("tag", "latest")
    try:
        with open(os.path.join(root, "index.json"), "rb") as f:
            index = _json(f.read(), "index.json")
    except FileNotFoundError:
        raise BuildError(f"{root} is not an OCI layout (no index.json)") from None
    entries = [m for m in index.get("manifests") or () if isinstance(m, dict)]
    chosen = next((m for m in entries if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag),
                  entries[0] if len(entries) == 1 else None)
    if chosen is None:
        raise BuildError(f"{root}: index.json has no cache tagged {tag!r}")
    manifest_desc = Descriptor.from_json(chosen)
    doc = _json(_read_blob(root, manifest_desc), "manifest")
    if manifest_desc.media_type in INDEX_TYPES or "manifests" in doc:
        entries = [Descriptor.from_json(m) for m in doc.get("manifests") or ()]
        config = next((e for e in entries if e.media_type == CACHE_CONFIG_MEDIA_TYPE), None)
        descriptors = {m["digest"]: m for m in doc.get("manifests") or ()}
    else:
        config = Descriptor.from_json(doc.get("config") or {"digest": ""})
        descriptors = {m["digest"]: m for m in doc.get("layers") or () if isinstance(m, dict) and "digest" in m}
    if config is None or config.media_type != CACHE_CONFIG_MEDIA_TYPE:
        raise InvalidCacheConfig(f"{root}: the {tag!r} manifest is not a build cache")
    return _LocalSource(spec, _parse(_read_blob(root, config), descriptors), root, _facts(doc))


def _facts(manifest: dict) -> Descriptor | None:
    """The steps' facts blob a cache manifest names (its one layer of STEP_FACTS_MEDIA_TYPE), if any."""
    for entry in manifest.get("layers") or ():
        if isinstance(entry, dict) and entry.get("mediaType") == STEP_FACTS_MEDIA_TYPE:
            try:
                return Descriptor.from_json(entry)
            except (KeyError, TypeError, ValueError, AttributeError):
                return Descriptor(STEP_FACTS_MEDIA_TYPE, "", 0)   # refused when asked for, with a warning
    return None


def _read_blob(root: str, desc: Descriptor) -> bytes:
    """A small blob of the layout at ROOT, checked against its digest."""
    if desc.size > _MAX_CONFIG:
        raise InvalidCacheConfig(f"{root}: blob {desc.digest} claims {desc.size} bytes")
    try:
        with open(_blob_path(root, desc.digest), "rb") as f:
            data = f.read(_MAX_CONFIG + 1)
    except FileNotFoundError:
        raise BuildError(f"{root}: blob {desc.digest} is missing") from None
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != desc.digest:
        raise DigestMismatch(desc.digest, actual, f"blob in {root}")
    return data


def _blob_path(root: str, digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    if algorithm != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
        raise InvalidCacheConfig(f"not a sha256 digest: {digest!r}")
    return os.path.join(root, "blobs", "sha256", hexpart)


def _parse(data: bytes, descriptors: dict) -> CacheConfig:
    return CacheConfig.from_bytes(data, descriptors)


def _json(data: bytes, what: str) -> dict:
    from builder.plumbing.canonical import json_object

    try:
        return json_object(data)
    except ValueError as error:
        raise InvalidCacheConfig(f"the cache's {what} is {error}") from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
