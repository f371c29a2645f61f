"""RegistryClient over an injected Transport: the in-memory registry of tests/support, the memory
blob store, no socket. The client's own checks (digests, sizes) are what is under test."""

from __future__ import annotations

import pytest

from builder.cache.blobs import MemoryBlobStore
from builder.errors import DigestMismatch, NotFoundError
from builder.image.config import ImageConfig
from builder.image.manifest import write_image
from builder.image.media import OCI_MANIFEST, Descriptor, Platform
from builder.registry import RegistryClient, parse_reference
from tests.support.memory_registry import MemoryRegistryTransport

REF = parse_reference("registry.example/team/app:1.0")


@pytest.fixture
def local():
    """A memory blob store holding one image of one (not really tar) layer."""
    blobs = MemoryBlobStore()
    layer = blobs.put_bytes(b"pretend this is a layer")
    image = write_image(blobs, ImageConfig(diff_ids=(layer,)),
                        [Descriptor("application/vnd.oci.image.layer.v1.tar", layer, 23)])
    return blobs, image


def test_an_image_pushed_then_pulled_arrives_whole(local):
    blobs, image = local
    registry = MemoryRegistryTransport()
    with RegistryClient(transport=registry) as client:
        manifest = blobs.get_bytes(image.manifest.digest)
        assert client.push(REF, blobs, manifest, OCI_MANIFEST) == image.manifest.digest
        fresh = MemoryBlobStore()
        pulled = client.pull(REF, fresh, Platform("linux", "amd64"))
    assert pulled.manifest_digest == image.manifest.digest
    assert sorted(fresh.digests()) == sorted(blobs.digests())
    assert ("PUT", "/v2/team/app/manifests/1.0") in registry.requests


def test_a_blob_served_with_other_bytes_is_refused_and_not_stored(local):
    blobs, image = local
    registry = MemoryRegistryTransport()
    with RegistryClient(transport=registry) as client:
        client.push(REF, blobs, blobs.get_bytes(image.manifest.digest), OCI_MANIFEST)
        layer = image.layers[0]
        registry.serve_instead[layer.digest] = b"pretend this is a lie!!"   # same size, other bytes
        fresh = MemoryBlobStore()
        with pytest.raises(DigestMismatch):
            client.fetch_blob(REF, layer, fresh)
    assert not fresh.has(layer.digest)


def test_an_unknown_tag_is_not_found():
    with RegistryClient(transport=MemoryRegistryTransport()) as client:
        with pytest.raises(NotFoundError, match="manifest 1.0 not found"):
            client.resolve(REF)
