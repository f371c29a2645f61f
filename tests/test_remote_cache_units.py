"""builder.remotecache without a build: the cache config format, export to and import from an
in-memory registry, and what an import downloads (counted from the registry's request log)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass

import pytest

from builder.cache.blobs import MemoryBlobStore
from builder.errors import BuildError
from builder.image.media import Platform
from builder.registry.client import RegistryClient
from builder.remotecache import exporter, importer
from builder.remotecache.format import CacheConfig, InvalidCacheConfig
from builder.remotecache.spec import CacheSpec
from tests.support.memory_registry import MemoryRegistryTransport

REF = "registry.test/team/cache:main"


@dataclass(frozen=True)
class Layer:
    digest: str
    diff_id: str
    size: int
    media_type: str = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass
class FakeStore:
    blobs: MemoryBlobStore


def _layer(blobs: MemoryBlobStore, name: str) -> Layer:
    """A real one-file layer: tar, gzip, stored; its diff ID is the tar's digest."""
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        data = name.encode()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    plain = tar.getvalue()
    packed = gzip.compress(plain, mtime=0)
    return Layer(blobs.put_bytes(packed), "sha256:" + hashlib.sha256(plain).hexdigest(), len(packed))


def _key(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


@pytest.fixture
def machine_a():
    """A store with a base layer and three steps on it, and the StepCaches the solver would give."""
    store = FakeStore(MemoryBlobStore())
    base, one, two, three = (_layer(store.blobs, n) for n in ("base", "one", "two", "three"))
    steps = [exporter.StepCache(_key("one"), (base, one), "2026-01-01T00:00:01Z"),
             exporter.StepCache(_key("two"), (base, one, two), "2026-01-01T00:00:02Z", (_key("one"),)),
             exporter.StepCache(_key("three"), (base, one, two, three), "2026-01-01T00:00:03Z", (_key("two"),))]
    return store, steps, (base, one, two, three)


def _export(registry, store, steps) -> exporter.ExportResult:
    spec = CacheSpec.parse_export(f"type=registry,ref={REF},mode=max")
    return exporter.export_registry(spec, steps, store,
                                    lambda status: RegistryClient(transport=registry, blob_status=status))


def _import(registry, blobs, text: str = REF) -> importer.ImportedCache:
    return importer.load([CacheSpec.parse_import(text)], lambda: RegistryClient(transport=registry), blobs,
                         Platform())


def _blob_gets(registry) -> list[str]:
    return [path.rsplit("/", 1)[1] for method, path in registry.requests if method == "GET" and "/blobs/" in path]


def test_cache_config_is_buildkits_shape_and_reads_back(machine_a):
    store, steps, layers = machine_a
    config, descriptors = exporter.cache_config(steps, store)
    doc = json.loads(config.to_bytes())
    assert [l["parent"] for l in doc["layers"]] == [-1, 0, 1, 2]
    assert [l["blob"] for l in doc["layers"]] == [l.digest for l in layers] == [d.digest for d in descriptors]
    assert [r["layers"][0]["layer"] for r in doc["records"]] == [1, 2, 3]
    assert doc["records"][2]["inputs"] == [[{"selector": "", "link": 1}]]
    assert doc["layers"][3]["annotations"]["diffID"] == layers[3].diff_id
    back = CacheConfig.from_bytes(config.to_bytes())
    assert back == config and [l.digest for l in back.chain(3)] == [l.digest for l in layers]


def test_cache_config_of_buildkits_older_writers_takes_the_manifest_descriptors(machine_a):
    """Layers with no annotations of their own (BuildKit before 0.12): the descriptors fill them in;
    a parent of 0 left out by Go's omitempty is 0."""
    _, _, layers = machine_a
    data = json.dumps({"layers": [{"blob": layers[0].digest, "parent": -1}, {"blob": layers[1].digest}],
                       "records": [{"digest": _key("one"), "layers": [{"layer": 1}]}]}).encode()
    descriptors = {l.digest: {"mediaType": l.media_type, "digest": l.digest, "size": l.size,
                              "annotations": {"containerd.io/uncompressed": l.diff_id}} for l in layers}
    config = CacheConfig.from_bytes(data, descriptors)
    assert [l.parent for l in config.layers] == [-1, 0] and config.layers[1].diff_id == layers[1].diff_id


@pytest.mark.parametrize("data", [b"[]", b"{\"layers\": [{\"blob\": \"md5:1\"}]}",
                                  b"{\"layers\": [], \"records\": [{\"digest\": \"sha256:1\", \"layers\": [{\"layer\": 4}]}]}"])
def test_malformed_cache_config_is_one_error(data):
    with pytest.raises(InvalidCacheConfig):
        CacheConfig.from_bytes(data)


def test_import_reads_metadata_first_and_downloads_only_the_blob_of_a_hit(machine_a):
    store, steps, layers = machine_a
    registry = MemoryRegistryTransport()
    result = _export(registry, store, steps)
    assert (result.records, result.layers, result.blobs_written) == (3, 4, 5)   # 4 layers + the config
    registry.requests.clear()
    machine_b = MemoryBlobStore()
    machine_b.put_bytes(store.blobs.get_bytes(layers[0].digest))   # B pulled the base itself
    imported = _import(registry, machine_b)
    assert len(_blob_gets(registry)) == 1   # the cache config, no layer
    assert imported.has(_key("two")) and not imported.has(_key("other"))
    # Step "two" hits on B (step "one" ran there and made the same layer): one layer blob downloaded.
    machine_b.put_bytes(store.blobs.get_bytes(layers[1].digest))
    found = imported.lookup(_key("two"), layers[:2], machine_b)
    assert found is not None and (found.digest, found.diff_id, found.created) == (
        layers[2].digest, layers[2].diff_id, "2026-01-01T00:00:02Z")
    assert _blob_gets(registry)[1:] == [layers[2].digest]
    assert machine_b.has(layers[2].digest) and not machine_b.has(layers[3].digest)
    [stats] = imported.stats
    assert (stats.records, stats.hits, stats.blobs_downloaded) == (3, 1, 1)


def test_a_record_is_used_only_on_the_parent_chain_it_was_made_on(machine_a):
    store, steps, layers = machine_a
    registry = MemoryRegistryTransport()
    _export(registry, store, steps)
    imported = _import(registry, MemoryBlobStore())
    registry.requests.clear()
    other_parent = (layers[0], layers[3])
    assert imported.lookup(_key("two"), other_parent, MemoryBlobStore()) is None
    assert _blob_gets(registry) == [] and "does not sit on the layers" in imported.warnings[0]


def test_a_registry_serving_other_bytes_for_a_blob_is_rejected(machine_a):
    store, steps, layers = machine_a
    registry = MemoryRegistryTransport()
    _export(registry, store, steps)
    registry.serve_instead[layers[1].digest] = gzip.compress(b"evil", mtime=0)
    machine_b = MemoryBlobStore()
    imported = _import(registry, machine_b)
    assert imported.lookup(_key("one"), layers[:1], machine_b) is None
    assert not machine_b.has(layers[1].digest)
    [warning] = imported.warnings
    assert layers[1].digest in warning and "digest mismatch" in warning and "\n" not in warning


def test_an_image_with_inline_cache_is_a_cache_source(machine_a):
    """A pushed image whose config carries moby.buildkit.cache.v0 over its own layers."""
    store, steps, layers = machine_a
    registry = MemoryRegistryTransport()
    value = exporter.inline_value(steps, store)
    config = json.dumps({"architecture": "amd64", "os": "linux", "moby.buildkit.cache.v0": value,
                         "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in layers]}}).encode()
    registry.blobs.update({l.digest: store.blobs.get_bytes(l.digest) for l in layers})
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    registry.blobs[config_digest] = config
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": config_digest, "size": len(config)},
                           "layers": [{"mediaType": l.media_type, "digest": l.digest, "size": l.size}
                                      for l in layers]}).encode()
    registry.manifests[("team/app", "1")] = ("application/vnd.oci.image.manifest.v1+json", manifest)
    machine_b = MemoryBlobStore()
    imported = _import(registry, machine_b, "registry.test/team/app:1")
    assert imported.warnings == []
    assert imported.lookup(_key("one"), layers[:1], machine_b).digest == layers[1].digest
    assert json.loads(base64.b64decode(value))["records"][0]["digest"] == _key("one")


def test_an_image_without_inline_cache_is_a_warning(machine_a):
    registry = MemoryRegistryTransport()
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    registry.blobs[digest] = config
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": digest, "size": len(config)}, "layers": []}).encode()
    registry.manifests[("team/plain", "latest")] = ("application/vnd.oci.image.manifest.v1+json", manifest)
    imported = _import(registry, MemoryBlobStore(), "registry.test/team/plain")
    assert imported.sources == [] and "has no inline cache" in imported.warnings[0]


@pytest.mark.parametrize("flag, text, message", [
    ("export", "type=registry,ref=r/x,mode=all", "mode must be min or max"),
    ("export", "type=inline,mode=max", "mode=min only"),
    ("export", "type=local,dest=d,oci-mediatypes=false", "oci-mediatypes=false is not supported"),
    ("export", "registry.test/x", "use type="),
    ("import", "type=local,src=d,dest=e", "unknown attribute dest="),
    ("import", "type=azblob", "not supported"),
])
def test_bad_specs_name_the_problem(flag, text, message):
    parse = CacheSpec.parse_export if flag == "export" else CacheSpec.parse_import
    with pytest.raises(BuildError, match=message):
        parse(text)


def test_a_bare_reference_imports_from_the_registry():
    spec = CacheSpec.parse_import("registry.test/team/app:1")
    assert (spec.type, spec.get("ref")) == ("registry", "registry.test/team/app:1")


# -- the steps' facts a cache carries (builder.cache.step_history's JSON, one more blob)

def _facts(text: str = "RUN make") -> bytes:
    from builder.cache.step_history import BuildHistory, StepRecord, encode_exported

    step = StepRecord("stage-0", 2, text, 2, _key("two"), {"env": ["VERSION=1.0"], "args": ["VERSION"]})
    return encode_exported(BuildHistory("", "Dockerfile", None, "unclamped", (step,)))


def _export_with_facts(registry, store, steps, facts: bytes) -> exporter.ExportResult:
    spec = CacheSpec.parse_export(f"type=registry,ref={REF},mode=max")
    return exporter.export_registry(spec, steps, store,
                                    lambda status: RegistryClient(transport=registry, blob_status=status),
                                    facts=facts)


def test_the_steps_facts_travel_as_a_blob_fetched_only_when_asked_for(machine_a):
    from builder.cache.step_history import decode_exported

    store, steps, _ = machine_a
    registry = MemoryRegistryTransport()
    facts = _facts()
    result = _export_with_facts(registry, store, steps, facts)
    assert (result.records, result.layers, result.blobs_written) == (3, 4, 6)   # + the facts
    registry.requests.clear()
    imported = _import(registry, MemoryBlobStore())
    assert len(_blob_gets(registry)) == 1   # the cache config only
    [history] = imported.step_histories(decode_exported, MemoryBlobStore())
    assert history.dockerfile == "Dockerfile" and history.steps[0].facts["env"] == ["VERSION=1.0"]
    fact_digest = "sha256:" + hashlib.sha256(facts).hexdigest()
    assert _blob_gets(registry)[1:] == [fact_digest]
    imported.step_histories(decode_exported, MemoryBlobStore())   # asked again: not fetched again
    assert len(_blob_gets(registry)) == 2 and imported.warnings == []


def test_steps_facts_that_fail_their_digest_are_a_warning(machine_a):
    from builder.cache.step_history import decode_exported

    store, steps, _ = machine_a
    registry = MemoryRegistryTransport()
    facts = _facts()
    _export_with_facts(registry, store, steps, facts)
    registry.serve_instead["sha256:" + hashlib.sha256(facts).hexdigest()] = _facts("RUN evil")
    imported = _import(registry, MemoryBlobStore())
    assert imported.step_histories(decode_exported, MemoryBlobStore()) == []
    [warning] = imported.warnings
    assert "its step facts are not used" in warning and "digest mismatch" in warning and "\n" not in warning
    assert imported.has(_key("two"))   # the records are still used


@pytest.mark.parametrize("data, problem", [
    (b"not json", "not JSON"),
    (b"[]", "not a step history"),
    (b'{"format": 2}', "not a step history"),
    (b'{"format": 1, "dockerfile": "Dockerfile", "target": null, "timestamps": "unclamped"}', "steps"),
    (b'{"format": 1, "dockerfile": "D", "target": null, "timestamps": "u", "steps": [7]}', "step 0: not an object"),
    (b'{"format": 1, "dockerfile": "D", "target": null, "timestamps": "u", "steps": [{"stage": "s", "position": "2",'
     b' "text": "RUN x", "line": 2, "key": "k", "facts": {}}]}', "position"),
    (b'{"format": 1, "dockerfile": "D", "target": null, "timestamps": "u", "steps": [{"stage": "s", "position": 2,'
     b' "text": "RUN x", "line": 2, "key": "k", "facts": {"env": "A=1"}}]}', "env fact"),
    (b'{"format": 1, "dockerfile": "D", "target": null, "timestamps": "u", "steps": [{"stage": "s", "position": 2,'
     b' "text": "COPY", "line": 2, "key": "k", "facts": {"reads": [{"paths": ["a"], "files": {"a": 1}}]}}]}',
     "reads fact"),
])
def test_malformed_steps_facts_are_refused_whole(data, problem):
    from builder.cache.step_history import decode_exported

    with pytest.raises(ValueError, match=problem):
        decode_exported(data)


def test_inline_cache_carries_the_facts_only_while_they_are_small(machine_a):
    from builder.remotecache.format import INLINE_FACTS_KEY, INLINE_FACTS_LIMIT

    store, steps, _ = machine_a
    small = _facts()
    with_facts = json.loads(base64.b64decode(exporter.inline_value(steps, store, small)))
    assert with_facts[INLINE_FACTS_KEY] == json.loads(small)
    assert CacheConfig.from_bytes(json.dumps(with_facts).encode()) == exporter.cache_config(steps, store)[0]
    big = _facts("RUN " + "x" * INLINE_FACTS_LIMIT)
    assert INLINE_FACTS_KEY not in json.loads(base64.b64decode(exporter.inline_value(steps, store, big)))
