"""Pulls from a registry that misbehaves on loopback (tests/support/fault_registry.py): a drip, a
hang, a cut connection resumed with Range, 500s then OK, a bad digest and a wrong manifest. Each
ends in the image stored whole and verified, or in one error naming the registry and the blob,
with nothing stored. Windows are configured small, so every case ends within seconds."""

from __future__ import annotations

import os

import pytest

from builder.cache.blobs import BlobStore
from builder.errors import DigestMismatch, RegistryError
from builder.registry.client import RegistryClient
from builder.registry.reference import parse_reference
from builder.registry.transport import Transport
from tests.support.fault_registry import FaultRegistry


def pull(registry: FaultRegistry, blobs: BlobStore, **bounds):
    bounds = {"min_rate": 64 << 10, "rate_window": 0.5, "deadline": 20.0, **bounds}
    transport = Transport(plain_http=lambda host: True, sleep=lambda s: None, **bounds)
    with RegistryClient(transport=transport) as client:
        return client.pull(parse_reference(registry.reference), blobs)


def stored(blobs: BlobStore) -> list[str]:
    return sorted(os.listdir(blobs.blob_dir)) + sorted(os.listdir(blobs.tmp_dir))


def drip(registry, blobs):
    registry.faults[registry.blob_path(registry.layer_digest)] = "drip"
    with pytest.raises(RegistryError) as caught:
        pull(registry, blobs)
    message = str(caught.value)
    assert registry.host in message and registry.layer_digest in message, message
    assert "stalled: under 64 KiB/s for 0.5 s" in message, message
    assert stored(blobs) == []


def hang(registry, blobs):
    registry.faults[registry.manifest_path("latest")] = "hang"
    with pytest.raises(RegistryError, match="did not answer GET .*no answer within 0.5 s"):
        pull(registry, blobs)
    assert [p for p, _ in registry.requests].count(registry.manifest_path("latest")) == 1  # not asked again
    assert stored(blobs) == []


def deadline(registry, blobs):
    registry.faults[registry.blob_path(registry.layer_digest)] = "drip"
    with pytest.raises(RegistryError, match=r"download of blob sha256:\w+ failed .*deadline of 0.6 s"):
        pull(registry, blobs, min_rate=1.0, rate_window=5.0, deadline=0.6)
    assert stored(blobs) == []


def cut_then_resume(registry, blobs, fault="cut"):
    path = registry.blob_path(registry.layer_digest)
    registry.faults[path] = fault
    pulled = pull(registry, blobs)
    assert blobs.get_bytes(registry.layer_digest) == registry.layer
    assert pulled.manifest_digest == registry.manifest_digest
    asked = [rng for p, rng in registry.requests if p == path]
    assert asked == ["", f"bytes={len(registry.layer) // 2}-"]


def cut_without_range(registry, blobs):
    registry.faults[registry.blob_path(registry.layer_digest)] = "cut-no-range"
    pull(registry, blobs)
    assert blobs.verify(registry.layer_digest)
    assert os.listdir(blobs.tmp_dir) == []  # the abandoned partial write is gone


def errors_then_ok(registry, blobs):
    for path in (registry.manifest_path("latest"), registry.blob_path(registry.layer_digest)):
        registry.faults[path] = "500"
    pull(registry, blobs)
    assert blobs.verify(registry.layer_digest) and blobs.verify(registry.manifest_digest)


def errors_throughout(registry, blobs):
    registry.faults[registry.blob_path(registry.layer_digest)] = "500"
    registry.failures = 10
    with pytest.raises(RegistryError) as caught:
        pull(registry, blobs)
    assert registry.host in str(caught.value) and "HTTP 500" in str(caught.value)
    assert stored(blobs) == []


def bad_digest(registry, blobs):
    registry.faults[registry.blob_path(registry.layer_digest)] = "bad-digest"
    with pytest.raises(DigestMismatch, match=registry.layer_digest):
        pull(registry, blobs)
    assert stored(blobs) == []


def wrong_manifest(registry, blobs):
    registry.faults[registry.manifest_path(registry.manifest_digest)] = "wrong-manifest"
    transport = Transport(plain_http=lambda host: True, rate_window=0.5)
    with RegistryClient(transport=transport) as client:
        ref = parse_reference(f"{registry.host}/test/image@{registry.manifest_digest}")
        with pytest.raises(DigestMismatch, match=registry.manifest_digest):
            client.pull(ref, blobs)
    assert stored(blobs) == []


SCENARIOS = {
    "a drip fails under the minimum rate, naming blob and registry": drip,
    "a server that never answers fails after one window": hang,
    "the deadline ends a request that keeps the rate": deadline,
    "a cut download resumes with Range and is verified whole": cut_then_resume,
    "a stalled download resumes with Range": lambda registry, blobs: cut_then_resume(registry, blobs, "stall"),
    "a registry ignoring Range is read again from the start": cut_without_range,
    "500s then OK": errors_then_ok,
    "500s until the attempts run out": errors_throughout,
    "a bad blob digest stores nothing": bad_digest,
    "a wrong manifest for its digest is refused": wrong_manifest,
}


def test_every_registry_fault_ends_cleanly(tmp_path, record_property):
    failures = []
    for i, (name, scenario) in enumerate(SCENARIOS.items()):
        with FaultRegistry() as registry:
            try:
                scenario(registry, BlobStore(str(tmp_path / f"blobs{i}")))
            except Exception as e:  # noqa: BLE001 - every scenario reports, then the test fails
                failures.append(f"{name}: {type(e).__name__}: {e}")
    figure = f"registry faults: {len(SCENARIOS) - len(failures)}/{len(SCENARIOS)} handled"
    record_property("figure", figure)
    print(figure)
    assert not failures, "\n".join(failures)


def test_the_bounds_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("BUILD_IMAGE_REGISTRY_MIN_RATE", "2048")
    monkeypatch.setenv("BUILD_IMAGE_REGISTRY_RATE_WINDOW", "7")
    monkeypatch.setenv("BUILD_IMAGE_REGISTRY_DEADLINE", "90")
    transport = Transport()
    assert (transport.min_rate, transport.rate_window, transport.deadline, transport.read_timeout) == (2048, 7, 90, 7)
    assert Transport(min_rate=1).min_rate == 1
    monkeypatch.setenv("BUILD_IMAGE_REGISTRY_DEADLINE", "soon")
    with pytest.raises(RegistryError, match="BUILD_IMAGE_REGISTRY_DEADLINE='soon': expected a positive number"):
        Transport()
