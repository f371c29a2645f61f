"""A base image a build pulls is recorded (its manifest stored) only once every layer blob is in."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request

import pytest

from tests.support.baseimage import push_busybox_image
from tests.support.images import build_image, write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry]

OCI_AND_DOCKER = ("application/vnd.oci.image.manifest.v1+json, "
                  "application/vnd.docker.distribution.manifest.v2+json")


def _remove_layer_blobs(registry, repository: str) -> list[str]:
    """Delete the layer data behind REPOSITORY:latest from the registry's storage (a broken mirror)."""
    request = urllib.request.Request(f"{registry.url}/v2/{repository}/manifests/latest", headers={"Accept": OCI_AND_DOCKER})
    manifest = json.load(urllib.request.urlopen(request))
    layers = [layer["digest"] for layer in manifest["layers"]]
    storage = os.path.join(registry._dir, "storage", "docker", "registry", "v2", "blobs", "sha256")
    for digest in layers:
        hex_ = digest.partition(":")[2]
        shutil.rmtree(os.path.join(storage, hex_[:2], hex_))
    return layers


def test_a_failed_layer_download_leaves_no_half_stored_image(store_root, registry, tmp_path):
    push_busybox_image(registry.host, "broken")
    _remove_layer_blobs(registry, "broken")
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {registry.host}/broken:latest\nRUN true\n"})
    failed = build_image("--root", store_root, context, check=False)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    listed = build_image("images", "--root", store_root, "-a", "-q")
    assert listed.stdout.strip() == ""
    checked = build_image("fsck", "--root", store_root, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "missing" not in checked.stdout + checked.stderr
